"""Fixtures of the saga tests: the saga's database (SQLite, or PostgreSQL where a test
asks for both), an app on a SQLite log, and an engine with the sink's effects table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import database_url, log_url
from tests.sagas.helpers import PARTITIONS, TOPIC, effects_md
from tidings import Tidings


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request, tmp_path, name="app.db")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(db_url)
    effects_md.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Tidings]:
    kind = getattr(request, "param", "sqlite")
    tidings = Tidings(log_url(request, PARTITIONS, kind), service="test")
    tidings.topic(TOPIC, partitions=PARTITIONS)
    async with tidings:
        yield tidings
