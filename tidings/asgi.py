"""The HTTP edge: one correlation id per request, for FastAPI or any ASGI app.

``app.add_middleware(CorrelationMiddleware)`` takes the id from the request's
``X-Correlation-ID`` header (or makes a new one), publishes everything the request
causes under it, and echoes it in the response's ``X-Correlation-ID`` header.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tidings.context import correlation_scope

__all__ = ["HEADER", "CorrelationMiddleware"]

HEADER = "X-Correlation-ID"
"""The request and response header that carries the correlation id."""
_HEADER_KEY = HEADER.lower().encode("latin-1")
# Ids end up in logs and headers: accept printable, short, header-safe values only.
_VALID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CorrelationMiddleware:
    """Pure ASGI middleware (no dependency on Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == _HEADER_KEY and _VALID.fullmatch(value):
                given = value.decode("latin-1")
                break
        with correlation_scope(given) as current:
            echo = (_HEADER_KEY, current.correlationid.encode("latin-1"))

            async def send_with_header(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = [h for h in message.get("headers", ()) if h[0] != _HEADER_KEY]
                    message["headers"] = [*headers, echo]
                await send(message)

            await self.app(scope, receive, send_with_header)
