"""Test helpers for the reference system: reading what reached the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from taskapi.events import TOPIC, register
from tidings import Context, Event, Tidings, Worker


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
