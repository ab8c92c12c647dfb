"""Pages first: what the dashboard reads in the background (at start: the lag's append
times, the dead letters, the catalog's scan, the dead-letter lists) waits while a page
is being answered, so that a page asked meanwhile takes its own time only, not the
background's too (they share one event loop and one GIL; decision 0046)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any, cast

from tidings.transport import Transport

__all__ = ["Gate", "PagesFirst", "in_background", "polite"]

_BACKGROUND: ContextVar[bool] = ContextVar("tidings_dashboard_background", default=False)


def in_background() -> bool:
    """Whether the running task is the dashboard's background reading."""
    return _BACKGROUND.get()


def mark_background() -> None:
    """Mark the running task (and what it starts) as background reading."""
    _BACKGROUND.set(True)


class Gate:
    """Open while no page is being answered, or while a page waits for something the
    background holds (:meth:`wanting`: a log's lock it is reading under)."""

    def __init__(self) -> None:
        self.asking = 0  # pages being answered (until their response starts)
        self.wanted = 0  # of those, waiting for the background's work
        self._open = asyncio.Event()
        self._open.set()

    def _update(self) -> None:
        if self.asking == 0 or self.wanted > 0:
            self._open.set()
        else:
            self._open.clear()

    def begin(self) -> None:
        self.asking += 1
        self._update()

    def end(self) -> None:
        self.asking -= 1
        self._update()

    @contextlib.asynccontextmanager
    async def wanting(self) -> AsyncIterator[None]:
        """A page waits for the background's work: let it go on meanwhile."""
        self.wanted += 1
        self._update()
        try:
            yield
        finally:
            self.wanted -= 1
            self._update()

    async def turn(self) -> None:
        """In the background: wait until no page is being answered; elsewhere: nothing."""
        if _BACKGROUND.get():
            await self._open.wait()


class _Polite:
    """A transport whose reads, in the background, first wait for the gate."""

    def __init__(self, inner: Transport, gate: Gate) -> None:
        self._inner = inner
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        await self._gate.turn()
        return await self._inner.read(*args, **kwargs)

    async def topics(self) -> Any:
        await self._gate.turn()
        return await self._inner.topics()


def polite(transport: Transport, gate: Gate) -> Transport:
    """``transport``, its reads waiting for ``gate`` when made in the background."""
    return cast(Transport, _Polite(transport, gate))


Send = Callable[[dict[str, Any]], Any]


class PagesFirst:
    """ASGI middleware: counts the requests being answered (from their arrival to their
    response's start, so a stream of live updates counts only until it starts) on the
    dashboard's :class:`Gate`."""

    def __init__(self, app: Any, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.gate.begin()
        started = False

        async def sending(message: dict[str, Any]) -> None:
            nonlocal started
            if not started and message["type"] == "http.response.start":
                started = True
                self.gate.end()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not started:
                self.gate.end()
