"""What every page shares: rendering, reading query parameters and forms, and the
checks an action passes (token, CSRF, read-only, confirmation)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse

from tidings.errors import ConfigError, TidingsError

if TYPE_CHECKING:
    from tidings.dashboard.state import Dashboard

__all__ = [
    "CSRF_COOKIE",
    "MAX_FORM_BYTES",
    "BadInput",
    "Forbidden",
    "Form",
    "dashboard_of",
    "int_param",
    "link",
    "read_form",
    "render",
    "text_param",
]

CSRF_COOKIE = "tidings_csrf"
MAX_FORM_BYTES = 256 * 1024  # a form with a selection of a few thousand entry ids
MAX_PAGE = 1_000_000
MAX_TEXT = 500  # characters of a search box or a filter


class BadInput(ConfigError):
    """A query parameter or form field that cannot be used: a 400 page saying which
    and what it takes; nothing is changed."""


class Forbidden(TidingsError):
    """An action refused: no token, a bad CSRF token, or a read-only dashboard (403)."""


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def link(request: Request, name: str, query: Mapping[str, Any] | None = None, **params: Any) -> str:
    """The path of the route ``name`` (under wherever the dashboard is mounted), with
    ``query`` (None values left out)."""
    path = request.url_for(name, **params).path
    kept = {k: v for k, v in (query or {}).items() if v is not None and v != ""}
    return path + ("?" + urlencode(kept, doseq=True) if kept else "")


def render(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    """``template`` with ``context`` and what every page uses: the request, the CSRF
    token for forms, whether actions are allowed, and :func:`link`."""
    dashboard = dashboard_of(request)
    page = dashboard.templates.get_template(template)
    html = page.render(
        request=request,
        csrf=request.scope.get("state", {}).get("csrf", ""),
        read_only=dashboard.config.read_only,
        can_reveal=dashboard.config.shredder is not None,
        url=dashboard.config.url,
        link=lambda name, query=None, **params: link(request, name, query, **params),
        **context,
    )
    return HTMLResponse(html, status_code=code)


def reading(request: Request, key: str, page: str, title: str, what: str) -> HTMLResponse:
    """The page ``page`` while the dashboard's reading at start has still to read
    ``key`` (:meth:`~tidings.dashboard.state.Dashboard.unread`): it says so, and its
    script reloads it when the live updates no longer name ``key``."""
    return render(request, "reading.html", key=key, page=page, title=title, what=what)


def text_param(request: Request, name: str) -> str | None:
    """A query parameter as text, stripped; None when absent or empty; BadInput when
    too long to be a name, an id or a time."""
    value = request.query_params.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > MAX_TEXT:
        raise BadInput(f"{name} is {len(value)} characters long; at most {MAX_TEXT} are taken")
    return value.strip()


def int_param(
    request: Request, name: str, default: int, *, low: int = 0, high: int = MAX_PAGE
) -> int:
    """A whole-number query parameter between ``low`` and ``high``; BadInput otherwise."""
    text = text_param(request, name)
    if text is None:
        return default
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise BadInput(f"{name}={text} is not a whole number; give one from {low} to {high}")
    value = int(text) if len(digits) <= 18 else high + 1
    if not low <= value <= high:
        raise BadInput(f"{name}={text} is out of range; give a whole number from {low} to {high}")
    return value


class Form:
    """A submitted form: its fields, each a list of values."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        if not values or not values[0].strip():
            return None
        value = values[0].strip()
        if len(value) > MAX_TEXT:
            raise BadInput(f"{name} is {len(value)} characters long; at most {MAX_TEXT} are taken")
        return value

    def all(self, name: str) -> list[str]:
        return [v.strip() for v in self.fields.get(name, ()) if v.strip()]


async def read_form(request: Request) -> Form:
    """The request's urlencoded form, after the checks every action passes: actions
    allowed (not read-only), the CSRF field matching its cookie, and a same-origin
    ``Origin`` where the browser sends one. Forbidden otherwise."""
    dashboard = dashboard_of(request)
    if dashboard.config.read_only:
        raise Forbidden(
            "this dashboard is read-only: it changes nothing (started with --read-only)"
        )
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise BadInput(f"expected a form (application/x-www-form-urlencoded), got {kind!r}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadInput(f"the form is larger than {MAX_FORM_BYTES} bytes; choose fewer entries")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10_000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"the form cannot be read: {exc}") from None
    _check_origin(request)
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = (fields.get("csrf") or [""])[0]
    if not cookie or not hmac.compare_digest(cookie.encode(), given.encode()):
        raise Forbidden(
            "the form's CSRF token does not match this browser's session; reload the page "
            "and submit the form again"
        )
    return Form(fields)


def _check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin.split("://", 1)[-1] != host:
        raise Forbidden(f"a form from another site ({origin}) cannot act on this dashboard")
