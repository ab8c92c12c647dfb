"""Live updates over server-sent events: every few seconds, the groups' lag, status,
health and dead letters (and a job's progress), as ``tidings groups --json`` gives
them; the page's script writes them into the cells marked with ``data-field``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tidings.dashboard.groups import check_group
from tidings.dashboard.looks import groups_look
from tidings.dashboard.state import Dashboard
from tidings.dashboard.web import dashboard_of, int_param, text_param
from tidings.errors import TidingsError

__all__ = ["INTERVAL", "MAX_FRAMES", "frame", "routes"]

INTERVAL = 2.0  # seconds between two frames
MAX_FRAMES = 300  # then the stream ends (ten minutes); the browser opens a new one


async def frame(dashboard: Dashboard, group: str | None, job: str | None) -> dict[str, object]:
    """One update: a ``groups`` list (``tidings groups --json``'s objects, with
    ``lag_seconds``), ``depth`` (dead letters waiting, per group), ``reading`` (what
    the dashboard's reading at start has still to read) and, with ``job``, that job's
    progress."""
    look = await groups_look(dashboard, group, internal=group is not None)
    depth: dict[str, int] = {}  # (not the groups still counting: not known yet)
    for (g, _, _), n in look.dlq.items():
        depth[g] = depth.get(g, 0) + n
    doc: dict[str, object] = {
        "groups": [look.line_json(line) for line in look.lines],
        "depth": depth,
        "reading": dashboard.still_reading(row.group for row in look.rows),
    }
    if job is not None and job in dashboard.jobs:
        doc["job"] = dashboard.jobs[job].as_json()
    return doc


async def live(request: Request) -> Response:
    dashboard = dashboard_of(request)
    group = text_param(request, "group")
    if group is not None:
        check_group(group)
    job = text_param(request, "job")
    frames = int_param(request, "frames", MAX_FRAMES, low=1, high=MAX_FRAMES)

    async def stream() -> AsyncIterator[bytes]:
        for i in range(frames):
            if i:
                await asyncio.sleep(INTERVAL)
            if await request.is_disconnected():
                return
            try:
                doc = await frame(dashboard, group, job)
            except TidingsError as exc:
                doc = {"error": str(exc)}
            yield b"data: " + orjson.dumps(doc) + b"\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"x-accel-buffering": "no"})  # fmt: skip


routes = [Route("/live", live, name="live")]
