"""The HTTP edge: correlation ids from X-Correlation-ID, echoed and inherited."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tidings import Tidings
from tidings.asgi import CorrelationMiddleware
from tidings.codec import decode


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, Tidings]]:
    events = Tidings(f"memory://asgi-{uuid.uuid4().hex}", service="api")
    api = FastAPI()
    api.add_middleware(CorrelationMiddleware)

    @api.post("/things")
    async def create() -> dict[str, str]:
        event = await events.publish("things", {"n": 1}, type="thing.created")
        return {"id": event.id}

    async with events:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c, events


async def _published(events: Tidings) -> list[str | None]:
    out = []
    for info in await events.transport.topics():
        for p in info.partitions:
            for r in await events.transport.read(info.name, p.partition, 0, 100):
                out.append(decode(r.value).correlationid)
    return out


async def test_the_request_header_becomes_the_events_correlation_id(
    client: tuple[httpx.AsyncClient, Tidings],
) -> None:
    c, events = client
    response = await c.post("/things", headers={"X-Correlation-ID": "req-42"})
    assert response.status_code == 200
    assert response.headers["x-correlation-id"] == "req-42"
    assert await _published(events) == ["req-42"]


async def test_a_request_without_the_header_gets_a_new_id_echoed(
    client: tuple[httpx.AsyncClient, Tidings],
) -> None:
    c, events = client
    response = await c.post("/things")
    given = response.headers["x-correlation-id"]
    assert uuid.UUID(given).version == 7
    assert await _published(events) == [given]
    assert given != response.json()["id"]


async def test_an_unsafe_header_value_is_replaced(
    client: tuple[httpx.AsyncClient, Tidings],
) -> None:
    c, events = client
    response = await c.post("/things", headers={"X-Correlation-ID": "a b<script>"})
    assert response.headers["x-correlation-id"] != "a b<script>"
    assert await _published(events) == [response.headers["x-correlation-id"]]
