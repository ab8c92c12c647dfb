"""The catalog: every event type (:func:`tidings.catalog.build_catalog`, as ``tidings
catalog`` builds it), each type's page the target of every type link of the dashboard."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.catalog import DEFAULT_SCAN, Catalog, build_catalog
from tidings.catalog.text import consumer_text, producer_text, reads_text, sla_text, span
from tidings.catalog.text import version_text as version_line
from tidings.dashboard.state import Dashboard
from tidings.dashboard.web import BadInput, dashboard_of, reading, render
from tidings.envelope import validate_type
from tidings.errors import EventError

__all__ = ["routes"]


SCANNING = "the newest events of each topic, which the dashboard reads since it started."


async def _catalog(dashboard: Dashboard) -> Catalog | None:
    """The catalog as ``tidings catalog`` builds it, read on from the last build; None
    while the dashboard's reading at start has not read its scan yet (the pages say
    "reading..." and reload when it is done)."""
    if dashboard.unread("catalog"):
        return None
    async with dashboard.catalog_lock:
        return await build_catalog(
            await dashboard.transport(), scan_limit=DEFAULT_SCAN, kept=dashboard.catalog_scan
        )


async def catalog_page(request: Request) -> Response:
    catalog = await _catalog(dashboard_of(request))
    if catalog is None:
        return reading(request, "catalog", "catalog", "Event catalog", SCANNING)
    return render(request, "catalog.html", catalog=catalog, span=span)


async def event_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    wanted = str(request.path_params["type"])
    try:
        validate_type(wanted)
    except EventError as exc:
        raise BadInput(str(exc)) from None
    catalog = await _catalog(dashboard)
    if catalog is None:
        return reading(request, "catalog", "catalog-event", wanted, SCANNING)
    event = catalog.event(wanted)
    if event is None:
        raise BadInput(
            f"no event type {wanted!r} in the catalog of this log (its schema registry and "
            "the newest events of each topic); see the catalog's list"
        )
    today = catalog.generated_at.date()
    versions = [
        (v, version_line(v, today), _pretty(v.schema), _pretty(v.example))
        for v in reversed(event.versions)
    ]
    return render(request, "catalog_event.html", catalog=catalog, event=event,
                  versions=versions, producer_text=producer_text, consumer_text=consumer_text,
                  reads_text=reads_text, sla_text=sla_text, span=span)  # fmt: skip


def _pretty(value: object) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


routes = [
    Route("/catalog", catalog_page, name="catalog"),
    Route("/catalog/{type}", event_page, name="catalog_event"),
]
