"""Fixtures of the inbox tests: the database of the effects and marks (SQLite or
PostgreSQL), an engine on it for the assertions, an app on a SQLite log (or Kafka and
NATS where marked), and what to close at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import database_url, log_url
from tests.inbox.helpers import PARTITIONS, TOPIC, effects_md
from tidings import Tidings
from tidings.inbox import Inbox


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database of the handlers' effects and the inbox's marks."""
    return database_url(request, tmp_path, name="app.db")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """A sync engine on the database, with the effects table, for the assertions."""
    eng = sa.create_engine(db_url)
    effects_md.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Inboxes and engines (sync or async) to close at the end of the test, last first:
    an engine left open keeps its pooled connections until the garbage collector finds
    them, and psycopg's ResourceWarning then fails whichever test runs at that moment."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, Inbox):
            await thing.close()
        elif isinstance(thing, sa.Engine):
            thing.dispose()
        else:
            await thing.dispose()


@pytest.fixture
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Tidings]:
    """An app on a SQLite log; on Kafka too for tests marked with ``ON_EVERY_LOG``."""
    kind = getattr(request, "param", "sqlite")
    tidings = Tidings(log_url(request, PARTITIONS, kind), service="test")
    tidings.topic(TOPIC, partitions=PARTITIONS)
    async with tidings:
        yield tidings
