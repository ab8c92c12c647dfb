"""What a :class:`~tidings.testing.FaultyTransport` injects (:class:`FaultPlan`), what it
recorded injecting (:class:`Fault`), and the errors it raises (:class:`InjectedFault`,
:class:`Killed`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

from tidings.errors import ConfigError, TransportError

__all__ = ["Fault", "FaultPlan", "InjectedFault", "Killed"]


class Killed(BaseException):
    """The member was killed by :class:`FaultyTransport` (a simulated SIGKILL).

    A BaseException, so that the ``except Exception`` of retries and loops does not
    catch it: it ends the worker as a kill ends a process, without a final commit.
    """


class InjectedFault(TransportError):
    """An error :class:`FaultyTransport` injected (a TransportError, as a real one)."""


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What :class:`FaultyTransport` injects, per call of each operation.

    ``*_error``: the probability that a call fails with :class:`InjectedFault`. An
    append or commit that fails does so before or after reaching the log (drawn too):
    after is a lost reply, so an append retried by its publisher may be stored twice.
    A fetch, read or description fails before reaching it. ``heartbeat_error`` and
    ``lease_error`` apply at the transport's fault points of those names (a lease
    renewal; a claim or release), on transports that call them (``fault_hook``).

    ``delay``: the probability that a call first waits up to ``delay_max`` seconds (a
    fetch waits within its timeout). ``duplicate``: the probability that a fetch first
    hands a partition out again as after a reassignment to the same member: the
    member's revocation callback runs for it, then its records come again from the last
    offset committed through this wrapper. ``error_limit``: at most that many errors
    per operation (None: no limit). ``kill_within_calls``: the transport's members are
    killed (:class:`Killed`) at a consumer call drawn from the seed among their first
    ``kill_within_calls`` fetches and commits (None: never).

    The defaults are a moderate mix; :meth:`none` injects nothing.
    """

    append_error: float = 0.05
    fetch_error: float = 0.05
    commit_error: float = 0.05
    read_error: float = 0.0
    topics_error: float = 0.0
    groups_error: float = 0.0
    heartbeat_error: float = 0.0
    lease_error: float = 0.0
    delay: float = 0.1
    delay_max: float = 0.01
    duplicate: float = 0.01
    error_limit: int | None = None
    kill_within_calls: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("error_limit", "kill_within_calls"):
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1
                ):
                    raise ConfigError(
                        f"FaultPlan.{f.name} must be None or an integer >= 1, got {value!r}"
                    )
            elif f.name == "delay_max":
                if not _is_number(value) or not 0 <= value <= 60:
                    raise ConfigError(
                        f"FaultPlan.delay_max must be seconds from 0 to 60, got {value!r}"
                    )
            elif not _is_number(value) or not 0 <= value <= 1:
                raise ConfigError(
                    f"FaultPlan.{f.name} must be a probability from 0 to 1, got {value!r}"
                )

    @classmethod
    def none(cls) -> FaultPlan:
        """A plan that injects nothing (the wrapper only delegates)."""
        return cls(append_error=0.0, fetch_error=0.0, commit_error=0.0, delay=0.0, duplicate=0.0)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


class Fault(NamedTuple):
    """One injected fault: the operation, which of its calls (from 1), what happened."""

    op: str
    call: int
    kind: str
