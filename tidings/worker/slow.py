"""What a worker sets up for slow consumers (docs/agents.md): its middleware must hold
what its subscribers ask for (``timeout=``: :class:`~tidings.middleware.Deadline`;
``cancellable``: :class:`~tidings.middleware.Cancellation`, bound here to what the
worker learns of cancelled chains); a group with a rate limit has a
:class:`~tidings.middleware.RateLimit` of its own in its chains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tidings.errors import ConfigError
from tidings.middleware import Cancellation, Deadline, Middleware, RateLimit, Retry
from tidings.middleware.cancellation import Cancellations

if TYPE_CHECKING:
    from tidings.app import Tidings

__all__ = ["rate_limits", "slow_consumers", "with_rate_limit"]


def slow_consumers(
    app: Tidings, groups: Sequence[str], middleware: Sequence[Middleware]
) -> Cancellations | None:
    """Check that ``middleware`` serves the subscribers of ``groups`` that have a
    timeout or are cancellable; for the latter, bind its Cancellation to a new
    :class:`Cancellations` (returned: the worker reads it on start and follows it)."""
    subscribers = [s for s in app.subscribers if s.group in groups]
    timed = [s.name for s in subscribers if s.timeout is not None]
    if timed and not any(isinstance(m, Deadline) for m in middleware):
        raise ConfigError(
            f"{', '.join(timed)} have a timeout, but the worker's middleware has no "
            "tidings.middleware.Deadline(): add it last (innermost)"
        )
    opted = {g for g in groups if app.group_settings(g).cancellable}
    if not opted and not any(s.cancellable for s in subscribers):
        return None
    layers = [m for m in middleware if isinstance(m, Cancellation)]
    if not layers:
        raise ConfigError(
            "some subscribers are cancellable, but the worker's middleware has no "
            "tidings.middleware.Cancellation(): add it inside Retry, outside the inbox"
        )
    known = Cancellations(app.transport)
    for layer in layers:
        layer.bind(known, opted)
    return known


def rate_limits(app: Tidings, groups: Sequence[str]) -> dict[str, RateLimit]:
    """A :class:`RateLimit` for each of ``groups`` that has ``rate`` or ``max_calls``."""
    settings = {g: app.group_settings(g) for g in groups}
    return {g: RateLimit(g, s) for g, s in settings.items() if s.limited}


def with_rate_limit(middleware: Sequence[Middleware], limit: RateLimit | None) -> list[Middleware]:
    """``middleware`` with ``limit`` just inside its Retry (each attempt takes a token;
    a 429 is paused for before Retry sees it), or outermost without one."""
    chain = list(middleware)
    if limit is not None:
        retries = [i for i, m in enumerate(chain) if isinstance(m, Retry)]
        chain.insert(retries[-1] + 1 if retries else 0, limit)
    return chain
