"""The overview page: groups (lag, lag seconds, status, health, a sparkline, dead
letters), topics (partitions, size, rate), backlogs, and the recent actions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings import admin
from tidings.dashboard.looks import groups_look, topics_look
from tidings.dashboard.state import Dashboard
from tidings.dashboard.svg import sparkline
from tidings.dashboard.web import dashboard_of, int_param, render
from tidings.errors import ConfigError
from tidings.outbox import OutboxError, OutboxStatus

__all__ = ["backlogs", "routes"]


async def overview(request: Request) -> Response:
    dashboard = dashboard_of(request)
    internal = int_param(request, "all", 0, high=1) == 1
    look = await groups_look(dashboard)
    topics = await topics_look(dashboard, internal=internal)
    actions = await admin.recent_actions(await dashboard.transport(), limit=10)
    return render(request, "overview.html", look=look, topics=topics, internal=internal,
                  backlogs=await backlogs(dashboard), actions=actions,
                  sparkline=sparkline)  # fmt: skip


async def actions_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    limit = int_param(request, "limit", 100, low=1, high=1000)
    actions = await admin.recent_actions(await dashboard.transport(), limit=limit)
    return render(request, "actions.html", actions=actions)


async def backlogs(dashboard: Dashboard) -> list[tuple[str, OutboxStatus | None]]:
    """The scheduler's backlog where the log keeps its table, and the outbox's given
    with ``outbox_db`` (``tidings outbox status`` of each): None where the table is
    not there (yet)."""
    found: list[tuple[str, OutboxStatus | None]] = []
    for name, outbox in await dashboard.outboxes():
        try:
            found.append((name, await outbox.status()))
        except (OutboxError, ConfigError):
            found.append((name, None))
    return found


routes = [
    Route("/", overview, name="overview"),
    Route("/actions", actions_page, name="actions"),
]
