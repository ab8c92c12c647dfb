"""Fixtures of the outbox tests: the outbox's database on SQLite and on a real
PostgreSQL, the tidings log (a SQLite file), and helpers that read the log back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.conftest import LOGS, log_url
from tidings import Event, Tidings
from tidings.codec import decode
from tidings.outbox import Outbox

TOPIC = "task-events"


class TaskCreated(BaseModel):
    task_id: str
    n: int = 0


class Unregistered(BaseModel):
    x: int = 1


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The outbox's database (the service's own), as a sync SQLAlchemy URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("pg_url"))


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
