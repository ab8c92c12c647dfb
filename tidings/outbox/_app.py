"""What an outbox needs of the app whose log it feeds: a narrow interface, so that the
outbox depends on it and not on :class:`tidings.Tidings` (which satisfies it as it is,
structurally)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tidings.envelope import Event
from tidings.transport import Clock

__all__ = ["OutboxApp", "RecordLog"]


class RecordLog(Protocol):
    """Where the relay appends events encoded when they were added (a transport)."""

    @property
    def clock(self) -> Clock:
        """Whose ``monotonic()`` times a relay's lease unless it is given a clock."""
        ...

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> Sequence[tuple[int, int]]:
        """Append ``(key, encoded event)`` records durably, in order per key."""
        ...


class OutboxApp(Protocol):
    """The app an outbox publishes through: it builds events from payloads
    (:meth:`Outbox.add`), bounds their size, and holds the log the relay appends to.
    :class:`tidings.Tidings` is one."""

    @property
    def transport(self) -> RecordLog: ...

    @property
    def max_event_bytes(self) -> int:
        """The largest encoded event the log takes."""
        ...

    @property
    def build(self) -> Callable[..., Event]:
        """``build(payload, *, key=..., **options)``: the event a payload becomes
        (:meth:`tidings.Tidings.build`)."""
        ...

    async def start(self) -> Any:
        """Open the log (counted: every start is matched by a :meth:`close`)."""
        ...

    async def close(self) -> Any: ...
