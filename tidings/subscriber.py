"""What an app declares for its worker: subscribers, group settings, components.

Plain records, below the middleware and the worker that read them, and above nothing
but the transport protocol's names.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.errors import ConfigError
from tidings.transport import StartFrom, check_topic_name

__all__ = [
    "Component",
    "GroupSettings",
    "RetryPolicy",
    "Subscriber",
    "check_seconds",
    "handler_shape",
    "slow_settings",
]


class RetryPolicy(Protocol):
    """What a subscriber's own retry policy gives the Retry middleware
    (:class:`tidings.Retry` is one)."""

    @property
    def max_attempts(self) -> int | None: ...

    @property
    def on_exhausted(self) -> Callable[..., Any] | None: ...

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt``."""
        ...

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt."""
        ...


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A handler bound to a topic, a group and a set of event types."""

    topic: str
    group: str
    handler: Callable[..., Any]
    types: frozenset[str] | None  # None: every type
    start_from: StartFrom
    is_async: bool
    takes_context: bool
    retry: RetryPolicy | None = None  # None: the worker's Retry middleware's own policy
    inbox: Any = None  # a tidings.inbox.Inbox: handled event ids, kept per group
    # Slow consumers (docs/agents.md): seconds a call may take (None: no limit); whether
    # a cancellation of its chain cancels and skips its calls (also set per group);
    # the least seconds between two progress events of one call, and their topic (None:
    # the handled event's).
    timeout: float | None = None
    cancellable: bool = False
    progress_every: float = 1.0
    progress_topic: str | None = None
    # Whether the handler gets personal fields in clear (opened with the app's key
    # store), not masked (decision 0036).
    personal: bool = False

    @property
    def name(self) -> str:
        return getattr(self.handler, "__qualname__", repr(self.handler))

    def wants(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types


def check_seconds(name: str, value: object, *, none: bool = False) -> None:
    """Refuse a setting in seconds that is not a positive number (or None, if allowed)."""
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")


def slow_settings(
    timeout: object, cancellable: object, progress_every: object, progress_topic: object
) -> dict[str, Any]:
    """The slow-consumer fields of a :class:`Subscriber`, checked (docs/agents.md)."""
    check_seconds("subscriber(timeout=...)", timeout, none=True)
    check_seconds("subscriber(progress_every=...)", progress_every)
    if progress_topic is not None:
        check_topic_name(str(progress_topic))
    return {
        "timeout": None if timeout is None else float(timeout),  # type: ignore[arg-type]
        "cancellable": bool(cancellable),
        "progress_every": float(progress_every),  # type: ignore[arg-type]
        "progress_topic": progress_topic,
    }


def handler_shape(handler: Callable[..., Any]) -> tuple[bool, bool]:
    """Whether ``handler`` takes a context besides the payload, and whether calling it
    gives a coroutine (a function, or an object whose ``__call__`` is async)."""
    params = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not 1 <= len(params) <= 2:
        raise ConfigError(
            f"handler {handler.__qualname__} must take (payload) or (payload, ctx), "
            f"it takes {len(params)} positional parameters"
        )
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - the method, not callable()
    is_async = inspect.iscoroutinefunction(handler) or (
        call is not None and inspect.iscoroutinefunction(call)
    )
    return len(params) == 2, is_async


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """How a group treats its dead letters, and what it promises (see
    :meth:`tidings.Tidings.group`).

    ``sequenced``: while an event is dead-lettered, later events with the same
    partition key are parked behind it, in order, instead of being handled (per-key
    order then survives the failure and its replay). Default: move on.
    ``sla``: the lag, in seconds, the group must stay under (recorded in the schema
    registry, shown by ``tidings catalog``); None: no promise.
    ``cancellable``: every subscriber of the group is ``cancellable`` (a cancelled
    chain's calls under way are cancelled, its later events skipped: docs/agents.md).
    ``rate``: handler calls per second, and ``max_calls``: handler calls at once, over
    all the group's workers (None: no limit; :class:`~tidings.middleware.RateLimit`).
    ``concurrency``: how many events of distinct keys of one partition are handled at
    once (per-key order kept, offsets committed below the lowest unfinished one:
    docs/decisions/0033-key-concurrency-within-a-partition.md). Default 1: one at a time.
    """

    sequenced: bool = False
    sla: float | None = None
    cancellable: bool = False
    rate: float | None = None
    max_calls: int | None = None
    concurrency: int = 1

    def __post_init__(self) -> None:
        check_seconds("group sla", self.sla, none=True)
        rate = self.rate
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1e6
        ):
            raise ConfigError(f"group rate must be calls per second > 0, got {rate!r}")
        calls = self.max_calls
        if calls is not None and (
            isinstance(calls, bool) or not isinstance(calls, int) or calls < 1
        ):
            raise ConfigError(f"group max_calls must be an int >= 1, got {calls!r}")
        k = self.concurrency
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10_000:
            raise ConfigError(f"group concurrency must be an int from 1 to 10000, got {k!r}")

    @property
    def limited(self) -> bool:
        """Whether the group's calls are limited (``rate`` or ``max_calls``)."""
        return self.rate is not None or self.max_calls is not None


class Component(Protocol):
    """Something that runs beside the worker in ``tidings run`` (an outbox relay, the
    delayed-event scheduler): it works until ``stop`` is set."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...
