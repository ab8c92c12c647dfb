"""Rebuilding a projection while it serves (``tidings projections rebuild NAME``).

The rebuild runs the projection's own handlers again, from the start of its topics,
into a shadow: on SQLite a file beside the live one (``<file>.rebuild``), on
PostgreSQL a schema of its own (``tidings_rebuild_<name>``) that its connections
have as their only ``search_path``. The handlers' statements name the tables as they
always do; the shadow's connections resolve those names in the shadow, so handlers
need no change (raw ``text()`` SQL included) and nothing they write reaches a live
table. Once the shadow has read as far as the live projection has applied, in every
partition, one transaction on the live database takes the projection's lock,
checks that again, swaps the tables (SQLite: drops each live table and fills it from
the attached shadow file; PostgreSQL: drops it and moves the shadow's in with ``ALTER
TABLE ... SET SCHEMA``) and replaces the projection's positions with the shadow's.
Readers see the old tables or the new ones, never a partial one; the live handlers
wait for the swap and then pass the events the shadow had applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tidings._sql import make_engine
from tidings.codec import decode
from tidings.context import Context
from tidings.errors import ConfigError, EventError, TidingsError
from tidings.projections._db import ProjectionDb, sqlite_engine
from tidings.shredding.fields import EXTENSION, shown
from tidings.transport import Record, TopicPartition

if TYPE_CHECKING:
    from tidings.envelope import Event
    from tidings.projections._base import Projected

__all__ = ["MAX_ROUNDS", "RebuildReport", "Shadow", "rebuild"]

log = logging.getLogger("tidings.projections")

MAX_ROUNDS = 50  # catch-up rounds before a rebuild gives up on a projection that outruns it
HEARTBEAT = 5.0  # seconds between a rebuild's signs of life in the live database
_ATTACHED = "tidings_rebuild"


@dataclass
class RebuildReport:
    """What a rebuild did: events applied, events its handlers failed on (rolled back
    and passed, as the live projection dead-letters them), undecodable records, the
    catch-up rounds and the positions swapped in."""

    name: str
    applied: int = 0
    failed: int = 0
    undecodable: int = 0
    rounds: int = 0
    seconds: float = 0.0
    positions: dict[TopicPartition, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "applied": self.applied,
            "failed": self.failed,
            "undecodable": self.undecodable,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 3),
            "positions": [
                {"topic": t, "partition": p, "position": o}
                for (t, p), o in sorted(self.positions.items())
            ],
        }


class _NoPublish:
    """``ctx.publish`` of a handler in a rebuild: a replay must not publish again."""

    async def publish(self, topic: str, payload: Any, **options: Any) -> Event:
        raise ConfigError("a projection's handlers must not publish: a rebuild runs them again")


class Shadow:
    """Where a rebuild of ``live`` builds: a SQLite file beside the live one, or a
    PostgreSQL schema; :attr:`db` is a :class:`ProjectionDb` on it."""

    def __init__(self, live: ProjectionDb) -> None:
        self.live = live
        url = live.url
        if live.is_sqlite:
            assert url.database
            self.path = f"{url.database}.rebuild"
            self.schema = ""
            self._reset_files()
            # A crash loses the shadow anyway (the rebuild starts again): no fsyncs.
            engine = sqlite_engine(url.set(database=self.path), synchronous="OFF")
        else:
            self.path = ""
            self.schema = "tidings_rebuild_" + re.sub(r"[^a-z0-9_]", "_", live.name.lower())
            self.schema = self.schema[:63]
            with live.write(locked=False) as conn:
                q = conn.dialect.identifier_preparer.quote
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {q(self.schema)} CASCADE")
                conn.exec_driver_sql(f"CREATE SCHEMA {q(self.schema)}")
            # Every name the handlers use resolves in the shadow schema, and only there.
            engine = make_engine(url, connect_args={"options": f"-csearch_path={self.schema}"})
        self.db = ProjectionDb(live.name, url, live.tables, engine=engine)
        self.db.create()

    def _reset_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path + suffix)

    def drop(self) -> None:
        """Remove the shadow (after its swap, or when the rebuild failed)."""
        self.db.close()
        if self.path:
            self._reset_files()
            return
        with self.live.write(locked=False) as conn:
            q = conn.dialect.identifier_preparer.quote
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {q(self.schema)} CASCADE")

    def swap(self, read_to: Mapping[TopicPartition, int]) -> bool:
        """In one transaction on the live database: if the live projection has applied
        nothing past ``read_to`` (what the shadow has read), replace its tables and
        positions with the shadow's and end the rebuild; else change nothing and
        return False (the shadow reads on and tries again)."""
        with self.db.read() as conn:
            positions = self.db.all_positions(conn)
        if self.path:
            return self._swap_sqlite(read_to, positions)
        return self._swap_postgresql(read_to, positions)

    def _swap_sqlite(
        self, read_to: Mapping[TopicPartition, int], positions: dict[TopicPartition, int]
    ) -> bool:
        live = self.live
        with live.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.execute(f"ATTACH DATABASE ? AS {_ATTACHED}", (self.path,))  # outside a transaction
            try:
                with conn.begin():  # BEGIN IMMEDIATE: the live file's write lock
                    if _ahead(live.all_positions(conn), read_to):
                        return False
                    live.check_owner(conn)
                    q = conn.dialect.identifier_preparer.quote
                    for table in reversed(sa.schema.sort_tables(live.tables)):
                        conn.execute(sa.schema.DropTable(table, if_exists=True))
                    for table in sa.schema.sort_tables(live.tables):
                        conn.execute(sa.schema.CreateTable(table))
                        for index in table.indexes:
                            conn.execute(sa.schema.CreateIndex(index))
                        cols = ", ".join(q(c.name) for c in table.columns)
                        conn.exec_driver_sql(
                            f"INSERT INTO main.{q(table.name)} ({cols}) "
                            f"SELECT {cols} FROM {_ATTACHED}.{q(table.name)}"
                        )
                    _move_positions(live, conn, positions)
            finally:
                raw.execute(f"DETACH DATABASE {_ATTACHED}")
        return True

    def _swap_postgresql(
        self, read_to: Mapping[TopicPartition, int], positions: dict[TopicPartition, int]
    ) -> bool:
        live = self.live
        with live.write(locked=False) as conn:
            live.lock_exclusive(conn)  # waits for the deliveries in flight
            if _ahead(live.all_positions(conn), read_to):
                return False
            live.check_owner(conn)
            q = conn.dialect.identifier_preparer.quote
            here = str(conn.execute(sa.text("SELECT current_schema()")).scalar())
            for table in reversed(sa.schema.sort_tables(live.tables)):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(here)}.{q(table.name)}")
            for table in sa.schema.sort_tables(live.tables):
                conn.exec_driver_sql(
                    f"ALTER TABLE {q(self.schema)}.{q(table.name)} SET SCHEMA {q(here)}"
                )
            _move_positions(live, conn, positions)
        return True


def _ahead(live: Mapping[TopicPartition, int], read_to: Mapping[TopicPartition, int]) -> bool:
    """Whether the live projection has applied an event the shadow has not read."""
    return any(offset > read_to.get(tp, -1) for tp, offset in live.items())


def _move_positions(
    live: ProjectionDb, conn: Connection, positions: dict[TopicPartition, int]
) -> None:
    conn.execute(sa.delete(live.positions).where(live.positions.c.projection == live.name))
    live.store(conn, positions)


async def rebuild(
    projection: Projected, *, batch: int = 500, progress: Callable[[int], None] | None = None
) -> RebuildReport:
    """:meth:`Projection.rebuild`."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"rebuild(batch=...) must be an int >= 1, got {batch!r}")
    started = time.monotonic()
    live = projection.db
    await asyncio.to_thread(projection.prepare)
    await asyncio.to_thread(live.claim_rebuild)
    report = RebuildReport(projection.name)
    shadow: Shadow | None = None
    swapped = False
    try:
        shadow = await asyncio.to_thread(Shadow, live)
        replay = _Replay(projection, shadow.db, report, batch, progress)
        while not swapped:
            if report.rounds >= MAX_ROUNDS:
                raise TidingsError(
                    f"projection {projection.name!r}: the rebuild did not catch up with the "
                    f"live projection in {MAX_ROUNDS} rounds; try again when traffic is lower"
                )
            report.rounds += 1
            await replay.to_end()
            swapped = await asyncio.to_thread(shadow.swap, replay.read_to)
        report.positions = await asyncio.to_thread(projection.positions)
    finally:
        # The rebuild ends once its shadow is gone: a next one may then make its own.
        try:
            if shadow is not None:
                await asyncio.to_thread(shadow.drop)
        finally:
            await asyncio.to_thread(live.release_rebuild)
    report.seconds = time.monotonic() - started
    log.info(
        "projection %s rebuilt: %d events applied in %d round(s), %.1f s",
        projection.name, report.applied, report.rounds, report.seconds,
    )  # fmt: skip
    return report


class _Replay:
    """The shadow's reading of the log: how far it has read in each partition."""

    def __init__(
        self,
        projection: Projected,
        shadow: ProjectionDb,
        report: RebuildReport,
        batch: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.projection = projection
        self.shadow = shadow
        self.report = report
        self.batch = batch
        self.progress = progress
        self.read_to: dict[TopicPartition, int] = {}
        self.loop = asyncio.get_running_loop()
        self.beat = time.monotonic()

    async def to_end(self) -> None:
        """Apply every event up to the log's end as it is now."""
        transport = self.projection.app.transport
        topics = {t.name: t for t in await transport.topics()}
        for name in self.projection.topics:
            info = topics.get(name)
            for part in info.partitions if info is not None else ():
                await self._partition(name, part.partition, part.end)

    async def _partition(self, topic: str, partition: int, end: int) -> None:
        transport = self.projection.app.transport
        offset = self.read_to.get((topic, partition), -1) + 1
        while offset < end:
            records = await transport.read(topic, partition, offset, self.batch)
            if not records:
                return
            await asyncio.to_thread(self._apply, records)
            offset = records[-1].offset + 1
            self.read_to[(topic, partition)] = records[-1].offset
            if self.progress is not None:
                self.progress(self.report.applied)
            if time.monotonic() - self.beat > HEARTBEAT:
                self.beat = time.monotonic()
                await asyncio.to_thread(self.projection.db.heartbeat)

    def _apply(self, records: list[Record]) -> None:
        """Apply ``records`` (one partition's) to the shadow in one transaction, each
        event in a savepoint (a handler that fails loses its event's writes only), with
        the position: the last record's offset."""
        from sqlalchemy.orm import Session

        projection, report = self.projection, self.report
        registry = projection.app.registry
        with self.shadow.write(locked=False) as conn, Session(bind=conn) as session:
            for record in records:
                try:
                    event = decode(record.value, projection.app.max_event_bytes)
                except EventError:
                    report.undecodable += 1
                    continue
                handlers = projection.handlers.get(event.type)
                if not handlers:
                    continue
                try:
                    with session.begin_nested():  # one SAVEPOINT, ORM state kept in step
                        data = event.data  # personal fields masked, as live (decision 0036)
                        if EXTENSION in event.extensions:
                            data = shown(event.id, data, None)
                        payload = registry.decode_payload(
                            event.type, event.dataversion, data, shared=False
                        )
                        ctx = Context(
                            _NoPublish(), event, topic=record.topic, partition=record.partition,
                            offset=record.offset, group=projection.group, loop=self.loop,
                            read_version=registry.read_version(event.type, event.dataversion),
                        )  # fmt: skip
                        projection.call(session, handlers, payload, ctx)
                except Exception:
                    report.failed += 1
                    log.warning(
                        "projection %s rebuild: %s %s at %s[%d]@%d failed; passed",
                        projection.name, event.type, event.id, record.topic, record.partition,
                        record.offset, exc_info=True,
                    )  # fmt: skip
                    continue
                report.applied += 1
            # Every record read counts, whatever became of it (applied, not this
            # projection's type, failed): the position says how far the model reflects.
            last = records[-1]
            self.shadow.store(conn, {(last.topic, last.partition): last.offset})
