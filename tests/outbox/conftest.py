"""Fixtures of the outbox tests: the outbox's database on SQLite and on a real
PostgreSQL, the tidings log (a SQLite file), helpers that read the log back, and
clocks that tests step without waiting."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.conftest import LOGS, database_url, log_url
from tidings import Event, Tidings
from tidings.codec import decode
from tidings.outbox import Outbox
from tidings.transport import Clock

TOPIC = "task-events"


class TaskCreated(BaseModel):
    task_id: str
    n: int = 0


class Unregistered(BaseModel):
    x: int = 1


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The outbox's database (the service's own), as a sync SQLAlchemy URL."""
    return database_url(request, tmp_path, name="app.db")


def async_url(url: str) -> str:
    """The same database through an asyncio driver (psycopg is both)."""
    url = url.replace("sqlite:///", "sqlite+aiosqlite:///", 1)
    return url.replace("postgresql+psycopg://", "postgresql+psycopg_async://", 1)


# The relay works the same on every log: tests marked with this run on Kafka (Tansu) too.
ON_EVERY_LOG = pytest.mark.parametrize("app", LOGS, indirect=True)


@pytest.fixture
def app(request: pytest.FixtureRequest) -> Tidings:
    """The app whose log the relay appends to: a SQLite file, or Kafka where marked."""
    app = Tidings(log_url(request, 4, getattr(request, "param", "sqlite")), service="task-api")
    app.event("task.created", subject="task_id")(TaskCreated)
    return app


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """The service's engine: its sessions add to the outbox."""
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
async def aengine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url(db_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def outbox(app: Tidings, db_url: str) -> AsyncIterator[Outbox]:
    outbox = Outbox(app, db_url, topic=TOPIC)
    outbox.create_table()
    yield outbox
    await outbox.dispose()


async def log_events(app: Tidings, topic: str = TOPIC) -> list[Event]:
    """Every event of ``topic``, partition after partition, each in log order."""
    out: list[Event] = []
    for info in await app.transport.topics():
        if info.name != topic:
            continue
        for p in info.partitions:
            for record in await app.transport.read(topic, p.partition, 0, 100_000):
                out.append(decode(record.value))
    return out


def by_key(events: list[Event]) -> dict[str | None, list[Any]]:
    """The payloads of each partition key, in log order."""
    out: dict[str | None, list[Any]] = {}
    for e in events:
        out.setdefault(e.key, []).append(e.data)
    return out


# -- clocks -----------------------------------------------------------------------------


class StepClock(Clock):
    """A relay's clock in a test: wall time is this process's (which :class:`WallClock`
    steps); monotonic time stands still until the test advances it, so a relay sees
    exactly the lease time the test says, however slow the machine is."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "monotonic time does not go back"
        self.now += seconds


class WallClock:
    """Steps the wall clock, as an NTP step or an operator would, for every reader the
    outbox could have: ``time.time()`` and ``time.time_ns()`` in this process (so the
    system clock of the app's transport and of a :class:`StepClock` too), and the
    PostgreSQL server's ``clock_timestamp()`` on connections of :attr:`engine` (a
    function of that name in ``public``, which their search path puts before
    ``pg_catalog``, reading the step from a table). Monotonic time does not move."""

    def __init__(self, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        self.postgresql = db_url.startswith("postgresql")
        real, real_ns = time.time, time.time_ns
        monkeypatch.setattr(time, "time", lambda: real() + self.offset)
        monkeypatch.setattr(time, "time_ns", lambda: real_ns() + round(self.offset * 1e9))
        if not self.postgresql:
            self.engine = sa.create_engine(db_url)
            return
        setup = sa.create_engine(db_url)
        with setup.begin() as conn:
            conn.execute(sa.text("CREATE TABLE wall_step (seconds double precision NOT NULL)"))
            conn.execute(sa.text("INSERT INTO wall_step VALUES (0)"))
            conn.execute(
                sa.text(
                    "CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz "
                    "LANGUAGE sql VOLATILE AS $$ SELECT pg_catalog.clock_timestamp() "
                    "+ make_interval(secs => (SELECT seconds FROM public.wall_step)) $$"
                )
            )
        setup.dispose()
        self.engine = sa.create_engine(
            db_url, connect_args={"options": "-c search_path=public,pg_catalog"}
        )

    def step(self, seconds: float) -> None:
        self.offset += seconds
        if self.postgresql:
            with self.engine.begin() as conn:
                conn.execute(sa.text("UPDATE wall_step SET seconds = :s"), {"s": self.offset})


@pytest.fixture
def wall(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[WallClock]:
    """The wall clock of the outbox's database and of this process, to step."""
    wall = WallClock(db_url, monkeypatch)
    yield wall
    wall.engine.dispose()
