"""The dashboard as an ASGI application: its routes, its guard, its error pages."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, request_response
from starlette.staticfiles import StaticFiles

from tidings.dashboard import (
    catalog,
    dead,
    events,
    groups,
    live,
    overview,
    tracing,
    workflows,
)
from tidings.dashboard.background import PagesFirst
from tidings.dashboard.config import Config
from tidings.dashboard.guard import TOKEN_COOKIE, Guard, token_cookie_value
from tidings.dashboard.state import Dashboard, static_folder
from tidings.dashboard.web import BadInput, Forbidden, dashboard_of, link, render
from tidings.errors import ConfigError, GroupBusy, GroupNotFound, TidingsError, TopicNotFound

__all__ = ["build"]


def build(config: Config) -> Starlette:
    """The dashboard of ``config`` as a Starlette application."""
    dashboard = Dashboard(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        dashboard.start_counting()
        yield
        await dashboard.close()

    routes: list[BaseRoute] = [
        *overview.routes,
        *groups.routes,
        *dead.routes,
        *events.routes,
        *tracing.routes,
        *catalog.routes,
        *workflows.routes,
        *live.routes,
        Route("/login", login_form, methods=["GET"], name="login"),
        Route("/login", login, methods=["POST"]),
        Mount("/static", StaticFiles(directory=static_folder()), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={TidingsError: error_page, HTTPException: http_error_page},
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    app.add_middleware(Guard, token=config.token, refuse=request_response(login_needed))
    app.add_middleware(PagesFirst, gate=dashboard.gate)
    return app


# -- errors -----------------------------------------------------------------------

_ERRORS: list[tuple[type[TidingsError], int, str, str]] = [
    (Forbidden, 403, "Refused", "Nothing was changed."),
    (BadInput, 400, "Bad input", "Nothing was changed; correct it and try again."),
    (GroupNotFound, 404, "No such group", "See the overview for the groups there are."),
    (TopicNotFound, 404, "Not found", "See the overview for the topics there are."),
    (GroupBusy, 409, "Busy", "Nothing was changed."),
    (ConfigError, 400, "Bad input", "Nothing was changed; correct it and try again."),
]


async def error_page(request: Request, exc: Exception) -> Response:
    """A 4xx page saying what was wrong and what to do (5xx for a failing log)."""
    status, heading, hint = next(
        ((s, h, t) for kind, s, h, t in _ERRORS if isinstance(exc, kind)),
        (502, "The log failed", "Try again; see the dashboard's log."),
    )
    return render(request, "error.html", status, status=status, heading=heading,
                  message=str(exc), hint=hint)  # fmt: skip


async def http_error_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    heading = "Not found" if exc.status_code == 404 else "Not allowed"
    hint = "See the overview for what there is." if exc.status_code == 404 else ""
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return render(request, "error.html", exc.status_code, status=exc.status_code,
                  heading=heading, message=message, hint=hint)  # fmt: skip


# -- the token ----------------------------------------------------------------------


async def login_needed(request: Request) -> Response:
    """Any request without the token: 401, and the form to give it."""
    return render(request, "login.html", 401, next=request.url.path, wrong=False)


async def login_form(request: Request) -> Response:
    return render(request, "login.html", next=request.query_params.get("next", ""), wrong=False)


async def login(request: Request) -> Response:
    """Check the token given in the form; a cookie of its digest if it is right."""
    token = dashboard_of(request).config.token
    form = await _plain_form(request)
    given = form.get("token", "")
    back = form.get("next", "")
    if not back.startswith("/") or back.startswith("//"):
        back = link(request, "overview")  # never a redirect to another site
    if token is None:
        return RedirectResponse(back, status_code=303)
    if not hmac.compare_digest(given.encode(), token.encode()):
        return render(request, "login.html", 401, next=back, wrong=True)
    response = RedirectResponse(back, status_code=303)
    root = request.scope.get("root_path", "") or "/"
    response.set_cookie(TOKEN_COOKIE, token_cookie_value(token), path=root, httponly=True,
                        samesite="strict")  # fmt: skip
    return response


async def _plain_form(request: Request) -> dict[str, Any]:
    from urllib.parse import parse_qs

    body = await request.body()
    if len(body) > 4096:
        raise BadInput("the login form is too large")
    fields = parse_qs(body.decode("utf-8", "replace"))
    return {k: v[0] for k, v in fields.items() if v}
