"""Progress events: what ``await ctx.progress(0.4, "read 12 of 30 passages")`` publishes.

A handler reports how far it got with the event it handles. Each report is an event of
type ``<handled type>.progressed`` (``research.requested.progressed``: a past tense, as
event names are; :func:`progress_type`), published on the handled event's topic (or
the subscriber's ``progress_topic=``) with the handled event's subject (so its
partition: reports arrive in order, after the handled event), correlation id and, as
causation, the handled event's id. Its data: ``fraction`` (0 to 1), ``note``, ``of``
(the handled event's id), ``group`` and ``handler``.

Reports are throttled per handler call: at most one per ``progress_every`` seconds
(the subscriber's, default 1), the first and the final one (fraction 1) always sent;
:meth:`Throttle.due` says which.
"""

from __future__ import annotations

from typing import Any

from tidings.envelope import validate_type
from tidings.errors import ConfigError

__all__ = ["PROGRESSED", "Throttle", "check_fraction", "progress_data", "progress_type"]

PROGRESSED = "progressed"
"""The last part of a progress event's type."""


def progress_type(event_type: str) -> str:
    """The type of the progress events of a handled event of ``event_type``."""
    return validate_type(f"{event_type}.{PROGRESSED}")


def is_progress(event_type: str) -> bool:
    """Whether ``event_type`` is a progress event's (no progress is reported of those)."""
    return event_type.endswith("." + PROGRESSED)


def check_fraction(fraction: object) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ConfigError(f"progress(fraction=...) takes a number from 0 to 1, got {fraction!r}")
    if not 0 <= fraction <= 1:
        raise ConfigError(f"progress(fraction=...) must be from 0 to 1, got {fraction!r}")
    return float(fraction)


def progress_data(fraction: float, note: str, of: str, group: str, handler: str) -> dict[str, Any]:
    return {"fraction": fraction, "note": note, "of": of, "group": group, "handler": handler}


class Throttle:
    """When one handler call's next progress report may go: the first and a final
    one (fraction 1) always, the others ``every`` seconds after the last sent, by the
    monotonic clock given."""

    __slots__ = ("every", "last")

    def __init__(self, every: float) -> None:
        self.every = every
        self.last: float | None = None

    def due(self, fraction: float, now: float) -> bool:
        """Whether a report of ``fraction`` at ``now`` goes (then it counts as sent)."""
        if fraction < 1 and self.last is not None and now - self.last < self.every:
            return False
        self.last = now
        return True
