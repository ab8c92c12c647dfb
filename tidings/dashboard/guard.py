"""The dashboard's guard, around every request: the token (when one is set), the
CSRF cookie of the browser's session, and the security headers."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import SimpleCookie
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.dashboard.web import CSRF_COOKIE

__all__ = ["SECURITY_HEADERS", "TOKEN_COOKIE", "Guard", "token_cookie_value"]

TOKEN_COOKIE = "tidings_token"
SECURITY_HEADERS = {
    # Scripts only from the dashboard itself: no inline script, no CDN; no framing.
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not "no-referrer": with it Chromium sends "Origin: null" on the page's own form
    # POSTs, which the origin check must refuse; "same-origin" still tells no other site.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
OPEN_PATHS = ("/login", "/static/")  # reachable without the token


def token_cookie_value(token: str) -> str:
    """What the token cookie holds: a digest of the token, never the token itself."""
    return hmac.new(token.encode(), b"tidings-dashboard-session", hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: refuses a request without the token (401, the login form for a
    browser), gives each browser a CSRF cookie, and sets the security headers."""

    def __init__(self, app: ASGIApp, *, token: str | None, refuse: ASGIApp) -> None:
        self.app = app
        self.token = token
        self.refuse = refuse  # answers a request without the token: 401 and the form

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        csrf = cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf"] = csrf
        authorized = self._authorized(scope, cookies)
        root = scope.get("root_path", "")
        new_cookie = CSRF_COOKIE not in cookies

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                for name, value in SECURITY_HEADERS.items():
                    headers.append((name.encode(), value.encode()))
                if new_cookie:
                    cookie = f"{CSRF_COOKIE}={csrf}; Path={root or '/'}; HttpOnly; SameSite=Strict"
                    headers.append((b"set-cookie", cookie.encode()))
                message["headers"] = headers
            await send(message)

        await (self.app if authorized else self.refuse)(scope, receive, send_with_headers)

    def _authorized(self, scope: Scope, cookies: dict[str, str]) -> bool:
        if self.token is None:
            return True
        path = scope.get("path", "")[len(scope.get("root_path", "")) :] or "/"
        if path.startswith(OPEN_PATHS):
            return True
        expected = token_cookie_value(self.token)
        if hmac.compare_digest(cookies.get(TOKEN_COOKIE, "").encode(), expected.encode()):
            return True
        bearer = _header(scope, b"authorization")
        return hmac.compare_digest(bearer.encode(), f"Bearer {self.token}".encode())


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _cookies(scope: Scope) -> dict[str, str]:
    parsed: SimpleCookie = SimpleCookie()
    try:
        parsed.load(_header(scope, b"cookie"))
    except Exception:
        return {}
    found: dict[str, Any] = {k: v.value for k, v in parsed.items()}
    return found
