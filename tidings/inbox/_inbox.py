"""The inbox's public face, :class:`Inbox` (what it guarantees is in
:mod:`tidings.inbox`). No SQLAlchemy is imported here: the parts that need it are
loaded when an Inbox is made, so that ``import tidings`` stays light."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tidings.errors import ConfigError
from tidings.inbox._retention import Retention
from tidings.inbox._store import InboxStore, Mark, NoSession, Plan

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
    from sqlalchemy.orm import sessionmaker

    from tidings.inbox._batch import Batch
    from tidings.inbox._sides import Side
    from tidings.subscriber import Subscriber

__all__ = ["DEFAULT_BATCH", "DEFAULT_RETENTION", "DEFAULT_TABLE", "Inbox"]

log = logging.getLogger("tidings.inbox")

DEFAULT_TABLE = "tidings_inbox"
"""The marks table's name unless ``Inbox(table=...)`` names another."""
DEFAULT_RETENTION = timedelta(days=7)
"""How long marks are kept unless ``Inbox(retention=...)`` says otherwise."""
DEFAULT_BATCH = 500
"""Events of one lane per transaction unless ``Inbox(batch=...)`` says otherwise: enough
that the commit's fsync is a small part of each event's cost (docs/benchmarks.md), few
enough that a batch handled again after a crash is short."""


def _handler_name(handler: Callable[..., Any]) -> str:
    target: Any = handler
    if not hasattr(handler, "__qualname__"):  # a callable object: name its class
        target = type(handler)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{target.__qualname__}"


class Inbox:
    """The handled event ids of the groups that use it, in a SQL table (see the module
    documentation of :mod:`tidings.inbox` for what it guarantees).

    ``db``: a SQLAlchemy URL (``"sqlite:///./app.db"``, ``"postgresql+psycopg://..."``),
    an ``Engine``, an ``AsyncEngine``, a ``sessionmaker`` or an ``async_sessionmaker``
    (SQLite or PostgreSQL). Engines and session makers you pass stay yours: size their
    pools for the partitions handled at once (on PostgreSQL each holds a connection
    while its handler runs). ``table``, ``schema`` and ``metadata``: where the marks
    live. ``retention``: how long marks are kept (a timedelta, or None). ``batch``: at
    most this many events of one partition whose handlers have a session commit their
    effects and marks in one transaction (1: each event in its own).
    """

    def __init__(
        self,
        db: str | URL | Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any],
        *,
        table: str = DEFAULT_TABLE,
        retention: timedelta | None = DEFAULT_RETENTION,
        schema: str | None = None,
        metadata: sa.MetaData | None = None,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        import sqlalchemy as sa

        from tidings.inbox._postgresql import PostgreSQLStore
        from tidings.inbox._schema import define
        from tidings.inbox._sides import Sides, open_db
        from tidings.inbox._sqlite import SQLiteStore

        if not isinstance(table, str) or not table:
            raise ConfigError(f"Inbox(table=...) must be a table name, got {table!r}")
        if retention is not None and (
            not isinstance(retention, timedelta) or retention <= timedelta(0)
        ):
            raise ConfigError(
                f"Inbox(retention=...) must be a positive timedelta (or None to keep every "
                f"mark), e.g. timedelta(days=7); got {retention!r}"
            )
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(
                f"Inbox(batch=...) must be an int >= 1 (1: a transaction per event), got {batch!r}"
            )
        self.retention = retention
        self.batch = batch
        url, engine, maker, dialect = open_db(db)
        if dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"Inbox supports SQLite and PostgreSQL, not {dialect!r}")
        self.dialect = dialect
        self.metadata = sa.MetaData() if metadata is None else metadata
        self.table = define(self.metadata, table, schema)
        self._sides = Sides(self.table, url, engine, maker)
        # PostgreSQL: claim first (row lock: concurrent duplicates wait); SQLite: check
        # first, mark last (the file's one write lock is not held by the handler).
        store = PostgreSQLStore if dialect == "postgresql" else SQLiteStore
        self._store: InboxStore = store(self._sides)
        self._retention = Retention(self.table, retention)
        self.ready = False  # the table is known to exist
        self._preparing: asyncio.Future[None] | None = None
        self._plans: dict[tuple[str, Callable[..., Any]], Plan] = {}
        self._owners: dict[str, Callable[..., Any]] = {}
        self._busy: dict[tuple[str, str], asyncio.Event] = {}
        self._unused: set[str] = set()  # consumers whose handler left its session unused

    # -- the table -------------------------------------------------------------------

    def create_table(self) -> None:
        """Create the marks table (and its index) if missing, with a sync engine."""
        from tidings.inbox._schema import create

        side = self._sides.sync()
        if side is None:
            raise ConfigError(
                "this Inbox has only an async engine: use 'await inbox.create_table_async()'"
            )
        create(side, self.table)
        self.ready = True

    async def create_table_async(self) -> None:
        """:meth:`create_table`, awaited (with either kind of engine)."""
        await self._prepare(self._sides.marks())

    async def prepare(self) -> None:
        """Create the table if missing, once (before the first delivery)."""
        if not self.ready:
            await self._prepare(self._sides.marks())

    async def _prepare(self, side: Side) -> None:
        from tidings.inbox._schema import create_async

        # Deliveries arriving together before the table is known wait for one creator.
        task = self._preparing
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(create_async(self._sides, side, self.table))
            self._preparing = task
        await asyncio.shield(task)
        self.ready = True

    # -- keys --------------------------------------------------------------------------

    def key(self, subscriber: Subscriber) -> str:
        """The ``consumer`` of ``subscriber``'s marks: ``"<group>:<module>.<qualname>"``."""
        return f"{subscriber.group}:{_handler_name(subscriber.handler)}"

    def claim(self, subscriber: Subscriber) -> str:
        """Reserve ``subscriber``'s key (``@app.subscriber`` calls this, so that two
        handlers sharing one are refused at start-up, not at their first event)."""
        consumer = self.key(subscriber)
        owner = self._owners.setdefault(consumer, subscriber.handler)
        if owner is not subscriber.handler:
            raise ConfigError(
                f"two handlers of group {subscriber.group!r} share the inbox key "
                f"{consumer!r} ({owner!r} and {subscriber.handler!r}): they would skip each "
                "other's events; give them different names"
            )
        return consumer

    # -- for the middleware (tidings.middleware.InboxMiddleware) -------------------------

    def plan(self, subscriber: Subscriber) -> Plan:
        """How ``subscriber``'s deliveries go through this inbox (worked out once)."""
        plan = self._plans.get((subscriber.group, subscriber.handler))
        return plan if plan is not None else self._plan(subscriber)

    def _plan(self, subscriber: Subscriber) -> Plan:
        consumer = self.claim(subscriber)
        session: Side | None = None
        placeholder: NoSession | None = None
        if subscriber.takes_context:  # without a context, a handler has no session
            session = self._sides.async_() if subscriber.is_async else self._sides.sync()
            if session is None:
                kind = "an async def" if subscriber.is_async else "a plain def"
                has = "a sync Engine" if subscriber.is_async else "an AsyncEngine"
                placeholder = NoSession(
                    f"ctx.session: {subscriber.name} is {kind} handler and its Inbox has "
                    f"only {has}; make the Inbox from a URL (it then has both kinds), or "
                    "from an engine of the handler's kind"
                )
                log.warning(
                    "inbox: %s gets no ctx.session (%s handler, inbox with %s); its events "
                    "are still deduplicated",
                    subscriber.name, kind, has,
                )  # fmt: skip
        plan = Plan(consumer, session, self._sides.marks(), placeholder)
        self._plans[(subscriber.group, subscriber.handler)] = plan
        return plan

    async def wait_turn(self, plan: Plan, event_id: str) -> asyncio.Event:
        """Wait while this process handles ``event_id`` for ``plan`` elsewhere (two
        deliveries of one event never run at once here: the second then finds the
        mark); then hold the turn until :meth:`end_turn`."""
        gate = self.take_turn(plan, event_id)
        while gate is None:
            await self._busy[(plan.consumer, event_id)].wait()
            gate = self.take_turn(plan, event_id)
        return gate

    def take_turn(self, plan: Plan, event_id: str) -> asyncio.Event | None:
        """:meth:`wait_turn` without waiting: None if the turn is taken."""
        slot = (plan.consumer, event_id)
        if slot in self._busy:
            return None
        gate = self._busy[slot] = asyncio.Event()
        return gate

    def end_turn(self, plan: Plan, event_id: str, gate: asyncio.Event) -> None:
        del self._busy[(plan.consumer, event_id)]
        gate.set()

    async def begin(self, plan: Plan, event_id: str) -> Mark | None:
        """The mark of ``event_id`` for ``plan``'s handler, begun (its ``session`` is
        ``ctx.session``; ``commit()`` it with the handler's effect, or ``discard()``
        it); None if the event was handled already."""
        return await self._store.begin(plan, event_id)

    def batches(self, plan: Plan) -> bool:
        """Whether ``plan``'s deliveries in a worker's lane go into the lane's batch
        (:mod:`tidings.inbox._batch`): those of handlers with a session that they
        used last time, unless ``batch=1``. (A handler that leaves its session unused
        has its effect outside the database: it is marked event by event, its marks
        committed together with those of other lanes.)"""
        return plan.session is not None and self.batch > 1 and plan.consumer not in self._unused

    def noted(self, plan: Plan, used: bool) -> None:
        """Whether ``plan``'s handler used its session in a delivery just committed."""
        if used:
            self._unused.discard(plan.consumer)
        else:
            self._unused.add(plan.consumer)

    def joins(self, held: object, plan: Plan) -> bool:
        """Whether ``held``, what a lane holds open, is this inbox's batch for ``plan``."""
        from tidings.inbox._batch import Batch

        return isinstance(held, Batch) and held.sides is self._sides and held.takes(plan)

    async def open_batch(self, plan: Plan) -> Batch:
        """A new batch for ``plan``'s deliveries in one lane, begun. On SQLite, one for
        async handlers is on the inline side when there is one."""
        from tidings.inbox._batch import Batch

        side = plan.session
        assert side is not None
        turn = self._store.turn()
        if turn is not None and side.is_async:
            side = self._sides.inline() or side
        batch = Batch(self._sides, side, self.batch, turn)
        await batch.open()
        return batch

    def delivered(self) -> None:
        """After a delivery: delete old marks in the background, if that is due."""
        if self._retention.due():
            self._retention.start(self.sweep)

    # -- retention and closing ---------------------------------------------------------

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete the marks older than the retention window now (or at ``now``); return
        how many. The middleware calls this in the background; call it to purge ahead."""
        if self.retention is None:
            return 0
        cutoff = (now or datetime.now(UTC)) - self.retention
        side = self._sides.marks()
        if not self.ready:
            await self._prepare(side)
        return await self._retention.delete(self._sides, side, cutoff)

    async def close(self) -> None:
        """Wait for a running sweep, and for closes that cancelled deliveries left under
        way (in its threads or on the loop), then dispose of the engines this inbox made
        (from a URL); engines and session makers you passed are left alone (close the inbox
        before you dispose of them). It can be used again afterwards (new engines are
        made on demand)."""
        await self._retention.close()
        await self._store.close()
        await self._sides.close()
        self._plans.clear()

    async def __aenter__(self) -> Inbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        where = self._sides.describe()
        return f"Inbox({where}, table={self.table.fullname!r}, retention={self.retention})"
