"""Posting an effect to an HTTP endpoint (the Slack webhook, the push gateway).

Each request carries the event's correlation id and, as ``Idempotency-Key``, the
event's id: a receiver that honours it drops the one repeat that at-least-once
delivery allows (a crash between the POST and the inbox mark).
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from taskapi.settings import Settings
from tidings import Context

__all__ = ["WebhookFailed", "WebhookRejected", "client", "post_json"]


class WebhookFailed(Exception):
    """The endpoint could not be reached or answered 5xx, 408 or 429: worth retrying."""


class WebhookRejected(Exception):
    """The endpoint refused the request (another 4xx): retrying the same body cannot
    help, so the event goes to the dead letters at once."""


def client(settings: Settings, stack: contextlib.AsyncExitStack) -> httpx.AsyncClient:
    """An HTTP client for the service's lifetime, closed by ``stack``."""
    http = httpx.AsyncClient(timeout=settings.http_timeout)
    stack.push_async_callback(http.aclose)
    return http


async def post_json(http: httpx.AsyncClient, url: str, body: Any, ctx: Context) -> None:
    """POST ``body`` as JSON to ``url``; raise unless the answer is 2xx."""
    headers = {"X-Correlation-ID": ctx.correlationid, "Idempotency-Key": ctx.id}
    try:
        response = await http.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise WebhookFailed(f"POST {url} failed: {type(exc).__name__}: {exc}") from exc
    if response.is_success:
        return
    text = response.text[:200]
    message = f"POST {url} answered {response.status_code}: {text}"
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise WebhookFailed(message)
    raise WebhookRejected(message)
