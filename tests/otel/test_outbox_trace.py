"""One trace from an HTTP request through the outbox: the request's span, the event's
``create`` span (its creation context, kept in the outbox row), the relay's ``send``,
the handler's ``process`` and what it publishes, on to the next handler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI, Request, Response
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.orm import Session

from tests.otel.conftest import named, traceparent_of, tree
from tidings import Context, Event, Tidings
from tidings.otel import Tracing
from tidings.outbox import Outbox
from tidings.testing import eventually, running


async def test_one_trace_runs_from_the_http_request_through_the_outbox_to_the_next_handler(
    sqlite_url: str,
    tmp_path: Path,
    tracing: Tracing,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    app = Tidings(sqlite_url, service="task-api", tracing=tracing)
    outbox = Outbox(app, engine, topic="task-events")
    outbox.create_table()
    app.add_component(outbox.relay(poll_interval=0.01))
    handled: dict[str, Event] = {}

    @app.subscriber("task-events", group="email")
    async def email(data: Any, ctx: Context) -> None:
        handled["task-events"] = ctx.event
        await ctx.publish("mails", {"to": data["task_id"]}, type="mail.sent")

    @app.subscriber("mails", group="audit")
    async def audit(data: Any, ctx: Context) -> None:
        handled["mails"] = ctx.event

    # The HTTP edge: a server span around each request, as an instrumented FastAPI has.
    api = FastAPI()
    http = provider.get_tracer("http")

    @api.middleware("http")
    async def server_span(request: Request, call_next: Any) -> Response:
        with http.start_as_current_span("POST /tasks", kind=trace.SpanKind.SERVER):
            response: Response = await call_next(request)
            return response

    added: list[Event] = []

    @api.post("/tasks")
    def create_task() -> dict[str, str]:  # a plain def: FastAPI's thread, the span copied
        with Session(engine) as session, session.begin():
            added.append(outbox.add(session, {"task_id": "t1"}, type="task.created", subject="t1"))
        return {"id": "t1"}

    async with app, running(app):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            assert (await client.post("/tasks")).status_code == 200
        await eventually(lambda: len(exporter.get_finished_spans()) == 6, timeout=30)
    engine.dispose()
    spans = exporter.get_finished_spans()
    assert tree(spans) == [
        (0, "POST /tasks"),
        (1, "create task-events"),
        (2, "send task-events"),  # the relay's append
        (2, "process task-events"),
        (3, "send mails"),
        (4, "process mails"),
    ]
    create = named(spans, "create task-events")
    assert create.kind == trace.SpanKind.PRODUCER
    assert (create.attributes or {})["messaging.operation.type"] == "create"
    assert (create.attributes or {})["messaging.message.id"] == added[0].id
    # The creation context went through the database in the row, unchanged.
    assert added[0].traceparent == handled["task-events"].traceparent == traceparent_of(create)
    relay = named(spans, "send task-events")
    assert (relay.attributes or {})["messaging.operation.type"] == "send"
    process = named(spans, "process task-events")
    assert (process.attributes or {})["messaging.consumer.group.name"] == "email"
    assert handled["mails"].traceparent == traceparent_of(named(spans, "send mails"))


async def test_the_relay_links_one_send_span_to_the_creation_context_of_each_row(
    sqlite_url: str,
    tmp_path: Path,
    tracing: Tracing,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    app = Tidings(sqlite_url, service="task-api", tracing=tracing)
    outbox = Outbox(app, engine, topic="task-events")
    outbox.create_table()
    requests = provider.get_tracer("http")
    for n in range(2):  # two requests, two traces
        with requests.start_as_current_span(f"request {n}"), Session(engine) as s, s.begin():
            outbox.add(s, {"n": n}, type="task.created")
    async with app:
        relay = outbox.relay()
        assert await relay.relay_once() == 2
        await relay.close()
    engine.dispose()
    spans = exporter.get_finished_spans()
    creates = [s for s in spans if s.name == "create task-events"]
    send = named(spans, "send task-events")
    assert send.parent is None  # a batch of two traces: linked to both, child of neither
    assert [link.context.span_id for link in send.links] == [c.context.span_id for c in creates]
    assert (send.attributes or {})["messaging.batch.message_count"] == 2
