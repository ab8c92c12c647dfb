"""Trace: the causal tree and a timeline of a correlation id or an event id, from
:mod:`tidings.trace` as ``tidings trace`` reads it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings import trace as tracing
from tidings.dashboard.web import dashboard_of, int_param, reading, render, text_param

__all__ = ["routes"]

MAX_SCAN = 100_000


async def trace_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    wanted = text_param(request, "id")
    scan = int_param(request, "scan", tracing.DEFAULT_SCAN, low=1, high=MAX_SCAN)
    if wanted is None:
        return render(request, "trace.html", wanted="", scan=scan, found=None, nodes=[], first=None)
    if dashboard.unread("dead-letter lists"):  # the trace shows each group's dead letters
        what = "Every group's dead letters, which the dashboard reads since it started."
        return reading(request, "dead-letter lists", "trace", f"Trace of {wanted}", what)
    found = await dashboard.trace(wanted, scan)
    nodes = sorted(found.nodes(), key=lambda n: (n.event.time, n.record.timestamp))
    first = nodes[0].event.time if nodes else None
    return render(request, "trace.html", wanted=wanted, scan=scan, found=found, nodes=nodes,
                  first=first)  # fmt: skip


routes = [Route("/trace", trace_page, name="trace")]
