"""What every action does around its work: the confirmation step, who asked, and the
record on the admin topic (:func:`tidings.admin.record_action`)."""

from __future__ import annotations

from starlette.requests import Request

from tidings import admin
from tidings.dashboard.web import Form, dashboard_of

__all__ = ["confirmed", "record", "who"]


def who(request: Request, form: Form) -> str:
    """Who acts: the name given in the form's ``operator`` field, if any, and where
    the request came from."""
    client = request.client.host if request.client else "unknown"
    name = form.get("operator")
    return f"{name} ({client})" if name else client


def confirmed(form: Form) -> bool:
    """Whether the form is the confirmation step (``confirm=yes``), not the first one."""
    return form.get("confirm") == "yes"


async def record(
    request: Request, form: Form, action: str, group: str, count: int, detail: str = ""
) -> admin.Action:
    """Record the action on the admin topic."""
    dashboard = dashboard_of(request)
    app = await dashboard.app()
    return await admin.record_action(app, who(request, form), action, group, count, detail)
