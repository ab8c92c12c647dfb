"""Helpers of the Task API tests: settings under a temporary folder, the API running
in a TestClient (lifespan included), and readers of the outbox table and of the log."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from taskapi.api import create_app
from taskapi.events import TOPIC
from taskapi.settings import Settings
from tidings import Event, Tidings, decode

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 under its TestClient; httpx, a dev dependency, works.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

__all__ = [
    "TestClient",
    "error_of",
    "log_events",
    "outbox_events",
    "running",
    "settings_for",
    "task_count",
]


def settings_for(data: Path, db_url: str | None = None) -> Settings:
    """Settings under ``data``; the log is always the SQLite file ``data/events.db``."""
    return Settings.from_env(data, env={"TASKAPI_DB": db_url} if db_url else {}).ensure()


@contextmanager
def running(settings: Settings, **options: Any) -> Iterator[tuple[TestClient, FastAPI]]:
    """The API with its lifespan running (tables, log, relay) and a client for it."""
    errors = options.pop("raise_errors", True)
    app = create_app(settings, **options)
    with TestClient(app, raise_server_exceptions=errors) as client:
        yield client, app


def outbox_events(app: FastAPI) -> list[Event]:
    """The events waiting in the outbox table, in relay order."""
    outbox = app.state.outbox
    with outbox.engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.table.c.payload).order_by(outbox.table.c.seq))
        return [decode(raw) for raw in rows.scalars()]


def task_count(app: FastAPI) -> int:
    with app.state.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar_one())


async def _read_log(url: str) -> list[Event]:
    reader = Tidings(url, service="test-reader")
    async with reader:
        events: list[Event] = []
        for info in await reader.transport.topics():
            for p in info.partitions if info.name == TOPIC else ():
                records = await reader.transport.read(TOPIC, p.partition, 0, 100_000)
                events.extend(decode(r.value) for r in records)
        return events


def log_events(settings: Settings, at_least: int, timeout: float = 15.0) -> list[Event]:
    """The task topic's events (each partition in offset order) once there are
    ``at_least`` of them, or when ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        events = asyncio.run(_read_log(settings.tidings_url))
        if len(events) >= at_least or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def error_of(response: httpx.Response, field: str) -> str:
    """The message of the 422 about body field ``field``."""
    assert response.status_code == 422, response.text
    found = [e["msg"] for e in response.json()["detail"] if e["loc"][-1] == field]
    assert found, response.json()
    return str(found[0])
