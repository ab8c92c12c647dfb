"""Shared fixtures: real SQLite files in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def sqlite_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture(autouse=True)
def _no_ambient_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's TIDINGS_URL must not leak into tests.
    monkeypatch.delenv("TIDINGS_URL", raising=False)


IN_CI = os.environ.get("CI") == "true"
