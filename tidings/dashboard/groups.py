"""A group's page: its partitions (committed, end, lag, owner, health, dead letters),
its members, its lag over the last hour, and resetting its offsets (with a preview of
what would be replayed or skipped, through :func:`tidings.admin.reset_offsets`)."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings import admin
from tidings.dashboard.actions import confirmed, record
from tidings.dashboard.looks import groups_look
from tidings.dashboard.svg import chart
from tidings.dashboard.web import BadInput, dashboard_of, read_form, render
from tidings.errors import ConfigError
from tidings.transport import check_group_name

__all__ = ["check_group", "group_of", "routes"]


def group_of(request: Request) -> str:
    """The group named in the path: BadInput for a name no group can have."""
    return check_group(str(request.path_params["group"]))


def check_group(group: str) -> str:
    """``group``, or BadInput for a name no group can have."""
    try:
        return check_group_name(group)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


async def group_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    group = group_of(request)
    transport = await dashboard.transport()
    info = await admin.describe_group(transport, group)  # GroupNotFound: a 404 page
    look = await groups_look(dashboard, group, internal=True)
    actions = await admin.recent_actions(transport, limit=10, target=group)
    charts = {line.topic: chart(look.points(group, line.topic), look.now_ms) for line in look.lines}
    return render(request, "group.html", group=group, info=info, look=look, charts=charts,
                  actions=actions, preview=None, done=False, to="", topic=None,
                  force=False)  # fmt: skip


async def reset(request: Request) -> Response:
    """First step: the preview (a dry run); second (``confirm=yes``): the reset,
    recorded. Refused as ``tidings offsets reset`` refuses (live members without
    ``force``, an unknown topic, a position it cannot read)."""
    dashboard = dashboard_of(request)
    group = group_of(request)
    form = await read_form(request)
    to = form.get("to")
    if to is None:
        raise BadInput("say where to reset to: earliest, latest, a time or an offset")
    position = admin.parse_position(to, datetime.now(UTC), offsets=True, name="to")
    if isinstance(position, int) and position < 0:
        raise BadInput(f"to={to}: an offset is a whole number >= 0")
    topic = form.get("topic")
    force = form.get("force") == "yes"
    transport = await dashboard.transport()
    if topic is not None:
        await admin.topic_info(transport, topic)  # TopicNotFound: a 404 page
    changes = await admin.reset_offsets(
        transport, group, position, topic=topic, force=force, dry_run=not confirmed(form)
    )
    if confirmed(form):
        moved = sum(1 for c in changes if c.old != c.new)
        where = f"to {to}" + (f" on {topic}" if topic else "")
        await record(request, form, "reset", group, moved, where)
    look = await groups_look(dashboard, group, internal=True)
    info = await admin.describe_group(transport, group)
    return render(request, "group.html", group=group, info=info, look=look, charts={},
                  actions=await admin.recent_actions(transport, limit=10, target=group),
                  preview=changes, done=confirmed(form), to=to, topic=topic,
                  force=force)  # fmt: skip


routes = [
    Route("/groups/{group}", group_page, name="group"),
    Route("/groups/{group}/reset", reset, methods=["POST"], name="reset"),
]
