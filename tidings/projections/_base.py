"""What the parts of a projection know of each other, as protocols: the app a
projection is declared on (:class:`Host`) and what its status and rebuild read of it
(:class:`Projected`; :class:`~tidings.projections.Projection` is one), so that those
modules need not import the projection's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from tidings.subscriber import Subscriber
from tidings.transport import TopicPartition, Transport

if TYPE_CHECKING:
    from tidings.context import Context
    from tidings.contracts import Registry
    from tidings.projections._db import ProjectionDb

__all__ = ["Host", "Projected"]


class Host(Protocol):
    """What a projection needs of its app (a :class:`tidings.Tidings`)."""

    transport: Transport
    registry: Registry
    subscribers: list[Subscriber]
    max_event_bytes: int

    def subscriber(self, topic: str, *, group: str, types: Iterable[str] | None = ...) -> Any: ...


class Projected(Protocol):
    """What status and rebuild read of a projection."""

    app: Host
    name: str
    topics: tuple[str, ...]
    db: ProjectionDb
    handlers: dict[str, list[Callable[..., Any]]]

    @property
    def group(self) -> str: ...

    def prepare(self) -> None: ...

    def positions(self) -> dict[TopicPartition, int]: ...

    def call(
        self, session: Any, handlers: Sequence[Callable[..., Any]], payload: Any, ctx: Context
    ) -> None: ...
