"""Fixtures of the projection tests: the projection's database (a SQLite file or a
PostgreSQL database), an app on a SQLite log with a counting projection, and an
engine on that database for the assertions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import database_url
from tests.projections.helpers import PARTITIONS, TOPIC, Board, board_app
from tidings import Tidings


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The projection's database."""
    return database_url(request, tmp_path, name="board.db")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on the projection's database, for the assertions."""
    eng = sa.create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
async def board(sqlite_url: str, db_url: str) -> AsyncIterator[Board]:
    """An app on a SQLite log with the projection ``board`` counting task.created per
    assignee, started."""
    made = board_app(f"{sqlite_url}?partitions={PARTITIONS}", db_url)
    made.app.topic(TOPIC, partitions=PARTITIONS)
    async with made.app:
        yield made
    made.projection.close()


@pytest.fixture
def app(board: Board) -> Tidings:
    return board.app
