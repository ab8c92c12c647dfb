"""Fixtures of the inbox tests: the database of the effects and marks (SQLite or
PostgreSQL), an engine on it for the assertions, an app on a SQLite log (or Kafka and
NATS where marked), and what to close at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import database_url, log_url
from tests.inbox.helpers import PARTITIONS, TOPIC, effects_md
from tidings import Event, Tidings
from tidings.inbox import Inbox
from tidings.middleware import Stats
from tidings.middleware.base import RunCalls
from tidings.middleware.inbox import InboxMiddleware
from tidings.subscriber import Subscriber


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


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The event ids offered to each run of a plain def handler's calls that the inbox
    took part in (decision 0041): a run that stops early, at its time or its batch's
    end, leaves the rest to the next one."""
    seen: list[list[str]] = []
    open_run = InboxMiddleware.open_run

    async def spied(
        self: InboxMiddleware, subscriber: Subscriber, events: Sequence[Event], stats: Stats
    ) -> RunCalls | None:
        calls = await open_run(self, subscriber, events, stats)
        if calls is not None:
            seen.append([e.id for e in events[: calls.count]])
        return calls

    monkeypatch.setattr(InboxMiddleware, "open_run", spied)
    return seen
