"""What a worker sets up for slow consumers (docs/agents.md): its middleware must hold
what its subscribers ask for (``timeout=``: :class:`~tidings.middleware.Deadline`;
``cancellable``: :class:`~tidings.middleware.Cancellation`, bound here to what the
worker learns of cancelled chains)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tidings.errors import ConfigError
from tidings.middleware import Cancellation, Deadline, Middleware
from tidings.middleware.cancellation import Cancellations

if TYPE_CHECKING:
    from tidings.app import Tidings

__all__ = ["slow_consumers"]


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
