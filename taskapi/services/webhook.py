"""Posting an effect to an HTTP endpoint (the Slack webhook, the push gateway).

Each request carries the event's correlation id and, as ``Idempotency-Key``, the
event's id: a receiver that honours it drops the one repeat that at-least-once
delivery allows (a crash between the POST and the inbox mark).

The client is aiohttp: on this path it costs 0.18 ms of CPU per POST against 1.2 ms
for httpx's AsyncClient (docs/decisions/0006-taskapi-http-client.md), and every
service shares the machine with the others.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import orjson

from taskapi.settings import Settings
from tidings import Context

__all__ = ["WebhookFailed", "WebhookRejected", "client", "post_json"]


class WebhookFailed(Exception):
    """The endpoint could not be reached or answered 5xx, 408 or 429: worth retrying."""


class WebhookRejected(Exception):
    """The endpoint refused the request (another 4xx): retrying the same body cannot
    help, so the event goes to the dead letters at once."""


def client(settings: Settings, stack: contextlib.AsyncExitStack) -> aiohttp.ClientSession:
    """An HTTP client for the service's lifetime, closed by ``stack``."""
    timeout = aiohttp.ClientTimeout(total=settings.http_timeout)
    http = aiohttp.ClientSession(timeout=timeout, json_serialize=_json)
    stack.push_async_callback(http.close)
    return http


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def post_json(http: aiohttp.ClientSession, url: str, body: Any, ctx: Context) -> None:
    """POST ``body`` as JSON to ``url``; raise unless the answer is 2xx."""
    headers = {"X-Correlation-ID": ctx.correlationid, "Idempotency-Key": ctx.id}
    try:
        async with http.post(url, json=body, headers=headers) as response:
            if 200 <= response.status < 300:
                await response.read()
                return
            status = response.status
            text = (await response.text(errors="replace"))[:200]
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WebhookFailed(f"POST {url} failed: {type(exc).__name__}: {exc}") from exc
    message = f"POST {url} answered {status}: {text}"
    if status >= 500 or status in (408, 429):
        raise WebhookFailed(message)
    raise WebhookRejected(message)
