"""Serving a worker's metrics: :class:`WorkerMetrics` (the registry, and the cached
reading of the log), an HTTP endpoint on the worker's own loop (``tidings run
--metrics-port``) and an ASGI app to mount."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest

from tidings.admin import LagWindows
from tidings.metrics.collector import WorkerCollector
from tidings.metrics.snapshot import Snapshot, read_snapshot

if TYPE_CHECKING:
    from tidings.worker import Worker

__all__ = ["WorkerMetrics", "asgi_app", "serve_metrics"]

log = logging.getLogger("tidings.metrics")

# The classic text format, which generate_latest writes (names are plain ASCII) and
# every Prometheus reads; newer prometheus-client calls it version 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A request line and headers: what a scraper sends is far smaller.
_MAX_REQUEST = 16 * 1024
_REQUEST_TIMEOUT = 10.0


class WorkerMetrics:
    """The metrics of ``worker``: make it before the worker runs (it asks the worker to
    time its handlers, :meth:`~tidings.worker.Worker.time_handlers`).

    :meth:`exposition` reads the log and the databases (lag, dead letters, backlogs)
    at most once per ``cache_seconds``, by ``clock`` (the lag's ages by ``wall``, the
    clock events are stamped with); scrapes that arrive meanwhile,
    or while a reading is under way, get that reading: a scrape storm costs the log
    nothing more. Until the app is started, the reading is empty.
    """

    def __init__(
        self,
        worker: Worker,
        *,
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        worker.time_handlers()
        self.worker = worker
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.wall = wall
        self.snapshot = Snapshot()
        # Lag samples of a log that keeps none, one per reading: the groups' status.
        self.windows = LagWindows()
        self.readings = 0  # readings of the log made so far
        self._read_at: float | None = None
        self._reading: asyncio.Future[None] | None = None
        self.registry = CollectorRegistry()
        self.registry.register(WorkerCollector(worker, lambda: self.snapshot))

    async def refresh(self) -> Snapshot:
        """The snapshot, read again unless the last is younger than ``cache_seconds``."""
        fresh = self._read_at is not None and self.clock() - self._read_at < self.cache_seconds
        if not fresh and self.worker.app.started:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.ensure_future(self._read())
            await asyncio.shield(self._reading)
        return self.snapshot

    async def _read(self) -> None:
        self.snapshot = await read_snapshot(self.worker, self.wall, self.windows)
        self.readings += 1
        self._read_at = self.clock()

    async def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        await self.refresh()
        return generate_latest(self.registry)


async def serve_metrics(
    metrics: WorkerMetrics, host: str = "127.0.0.1", port: int = 9464
) -> asyncio.Server:
    """Serve ``GET /metrics`` on ``host:port`` (port 0: any free one, see the server's
    ``sockets``), on the running loop, the worker's: close the returned server to stop.
    Anything else gets 404 (405 for another method)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            method, target = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""][:2]
            status, body = b"404 Not Found", b"not found: try /metrics\n"
            ctype = b"text/plain; charset=utf-8"
            if target.split(b"?", 1)[0] == b"/metrics":
                status, body = b"405 Method Not Allowed", b"GET only\n"
                if method in (b"GET", b"HEAD"):
                    status, body = b"200 OK", await metrics.exposition()
                    ctype = CONTENT_TYPE.encode()
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + (b"" if method == b"HEAD" else body)
            )  # fmt: skip
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # a client that went away, or sent no request we read
        except Exception:
            log.exception("metrics: a scrape failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port, limit=_MAX_REQUEST)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def asgi_app(metrics: WorkerMetrics) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app that answers every HTTP request with ``metrics`` (mount it at
    ``/metrics``: ``api.mount("/metrics", asgi_app(metrics))``)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # run on its own: nothing to start
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = await metrics.exposition()
        headers = [(b"content-type", CONTENT_TYPE.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
