"""Test helpers for the reference system: reading what reached the log, running the
audit service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from taskapi.events import TOPIC, register
from taskapi.services import serve
from taskapi.settings import Settings
from tidings import Context, Event, Tidings, Worker


async def run_until(settings: Settings, done: Callable[[], Awaitable[bool]]) -> None:
    """Run the audit service until ``await done()`` is true (20 s at most)."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve("audit", settings, stop))
    try:
        for _ in range(200):
            if task.done() or await done():
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)  # raises what the service raised


def audited(settings: Settings) -> list[dict[str, Any]]:
    """Every line of the audit files, parsed, in file order."""
    return [
        orjson.loads(line)
        for path in sorted(settings.audit_dir.glob("audit-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


class LogProbe:
    """A consumer group of its own that collects every event of ``task-events``."""

    def __init__(self, url: str, group: str = "probe") -> None:
        self.app = register(Tidings(url, service="test-probe"))
        self.events: list[Event] = []

        @self.app.subscriber(TOPIC, group=group)
        async def collect(payload: Any, ctx: Context) -> None:
            self.events.append(ctx.event)

        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LogProbe:
        await self.app.__aenter__()
        self._task = asyncio.create_task(Worker(self.app, components=False).run(self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.app.__aexit__(None, None, None)

    def of(self, type_: str) -> list[Event]:
        return [e for e in self.events if e.type == type_]

    async def wait_for(
        self, check: Callable[[], bool], timeout: float = 20.0, what: str = "events"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                types = [e.type for e in self.events]
                raise AssertionError(f"no {what} after {timeout}s; the log had {types}")
            await asyncio.sleep(0.05)
