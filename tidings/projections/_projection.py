""":class:`Projection`: a read model kept by handlers of a group whose writes and
position commit in one transaction (what it guarantees is in :mod:`tidings.projections`)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tidings.envelope import validate_type
from tidings.errors import ConfigError
from tidings.projections._base import Host
from tidings.subscriber import Subscriber, handler_shape
from tidings.transport import TopicPartition, check_group_name, check_topic_name

if TYPE_CHECKING:
    import sqlalchemy as sa

    from tidings.context import Context
    from tidings.projections._db import ProjectionDb
    from tidings.projections._rebuild import RebuildReport
    from tidings.projections._status import ProjectionStatus

__all__ = ["Projection"]

H = TypeVar("H", bound=Callable[..., Any])


class Projection:
    """A read model in tables of ``db``, kept by the handlers registered with
    :meth:`on` for events of ``topics``; made by :meth:`tidings.Tidings.projection`.

    Its group is its ``name``: ``tidings groups`` shows it, and a worker runs it like
    any group. Each event is applied in one transaction on ``db``: the handlers' writes
    through ``ctx.session`` and the projection's position in the event's partition
    commit together (or, if a handler raises, neither). An event at or below the stored
    position is passed without calling a handler, so a redelivery has no second effect.
    """

    def __init__(
        self, app: Host, name: str, *, topics: Sequence[str], db: Any, tables: Iterable[Any]
    ) -> None:
        from tidings.projections._db import ProjectionDb, open_url

        check_group_name(name)
        if not topics:
            raise ConfigError(f"projection {name!r} needs topic='...' (or a list of topics)")
        self.app = app
        self.name = name
        self.topics = tuple(check_topic_name(t) for t in topics)
        self.tables = _tables(name, tables)
        self.db: ProjectionDb = ProjectionDb(
            name, open_url(db, f"projection {name!r}"), self.tables
        )
        self.handlers: dict[str, list[Callable[..., Any]]] = {}
        self._subscribers: dict[str, Subscriber] = {}
        self._ready = threading.Lock()

    @property
    def group(self) -> str:
        """The group whose worker keeps the projection: its name."""
        return self.name

    def on(self, *types: str) -> Callable[[H], H]:
        """Decorator: apply events of ``types`` with this handler, a plain ``def`` that
        takes ``(payload, ctx)`` and writes through ``ctx.session`` (a SQLAlchemy
        Session on the projection's database; tidings commits it). Handlers must not
        commit, publish or have effects outside that database: a rebuild runs them again."""
        if not types:
            raise ConfigError(
                f"projection {self.name!r}: on() needs event types, e.g. on('task.created')"
            )

        for t in types:
            validate_type(t)  # a misspelt type would otherwise quietly match nothing

        def wrap(handler: H) -> H:
            takes_context, is_async = handler_shape(handler)
            if is_async or not takes_context:
                raise ConfigError(
                    f"projection {self.name!r}: {getattr(handler, '__qualname__', handler)} "
                    "must be a plain def taking (payload, ctx): it writes through "
                    "ctx.session, a sync Session, in a worker thread"
                )
            for t in types:
                self.handlers.setdefault(t, []).append(handler)
            self._subscribe(types)
            return handler

        return wrap

    def _subscribe(self, types: Iterable[str]) -> None:
        """Register (or widen) this projection's subscriber on each of its topics: one
        per topic, so that one transaction holds every handler of an event."""
        for other in self.app.subscribers:
            if other.group == self.name and other not in self._subscribers.values():
                raise ConfigError(
                    f"group {self.name!r} is projection {self.name!r}'s; subscribe other "
                    "handlers under another group"
                )
        for topic in self.topics:
            old = self._subscribers.get(topic)
            if old is None:
                self.app.subscriber(topic, group=self.name, types=types)(self._apply)
                self._subscribers[topic] = self.app.subscribers[-1]
                continue
            wider = dataclasses.replace(old, types=frozenset(self.handlers))
            subs = self.app.subscribers
            subs[next(i for i, s in enumerate(subs) if s is old)] = wider
            self._subscribers[topic] = wider

    # -- applying events -------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the projection's tables and positions table if missing (once)."""
        if not self.db.ready:
            with self._ready:
                if not self.db.ready:
                    self.db.create()

    def _apply(self, payload: Any, ctx: Context) -> None:
        """The worker's handler: one event, in one transaction with its position."""
        from sqlalchemy.orm import Session

        handlers = self.handlers.get(ctx.type)
        if not handlers:
            return
        if not self.db.ready:
            self.prepare()
        with self.db.write() as conn:
            done = self.db.position(conn, ctx.topic, ctx.partition)
            if done is not None and ctx.offset <= done:
                return  # applied before: a redelivery
            # The Session joins conn's transaction, which the position's write ends.
            with Session(bind=conn) as session:
                self.call(session, handlers, payload, ctx)
            self.db.store(conn, {(ctx.topic, ctx.partition): ctx.offset})

    def call(
        self, session: Any, handlers: Sequence[Callable[..., Any]], payload: Any, ctx: Context
    ) -> None:
        """Call ``handlers`` with ``session`` as ``ctx.session``, and flush it."""
        ctx.session = session
        try:
            for handler in handlers:
                handler(payload, ctx)
            session.flush()
        finally:
            ctx.session = None

    # -- operating ----------------------------------------------------------------------------

    async def status(self) -> ProjectionStatus:
        """Where the projection stands: its position per partition, the log's end, the
        lag and whether a rebuild runs."""
        from tidings.projections._status import status

        return await status(self)

    async def rebuild(
        self, *, batch: int = 500, progress: Callable[[int], None] | None = None
    ) -> RebuildReport:
        """Replay the topics from their start into shadow tables with the same handlers
        while the live projection goes on serving, then swap them in at once when they
        have caught up (see :mod:`tidings.projections`). ``progress``: called with the
        events applied so far. RebuildRunning if another rebuild of it runs."""
        from tidings.projections._rebuild import rebuild

        return await rebuild(self, batch=batch, progress=progress)

    def positions(self) -> dict[TopicPartition, int]:
        """The stored positions: per (topic, partition), the last offset applied."""
        self.prepare()
        with self.db.read() as conn:
            return self.db.all_positions(conn)

    def close(self) -> None:
        """Dispose of the projection's engine (made again on demand)."""
        self.db.close()

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, topics={list(self.topics)}, db={self.db.describe()!r})"


def _tables(name: str, tables: Iterable[Any]) -> list[sa.Table]:
    """The projection's tables: SQLAlchemy Tables (or ORM classes, their __table__),
    each in the database's default schema (a rebuild swaps them by name)."""
    import sqlalchemy as sa

    found = []
    for t in tables:
        table = getattr(t, "__table__", t)
        if not isinstance(table, sa.Table):
            raise ConfigError(
                f"projection {name!r}: tables=[...] takes SQLAlchemy Tables or mapped "
                f"classes, got {t!r}"
            )
        if table.schema is not None:
            raise ConfigError(
                f"projection {name!r}: table {table.fullname!r} names a schema; a rebuild "
                "builds the tables in a schema of its own, so leave schema=None"
            )
        found.append(table)
    if not found:
        raise ConfigError(f"projection {name!r} needs tables=[...]: the tables its handlers write")
    return found
