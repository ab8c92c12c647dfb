"""The span tree of publishes and handler calls (in-memory exporter): one trace from a
publish through every handler and what each publishes; on every log."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode, TraceState

from tests.conftest import LOGS, log_url
from tests.otel.conftest import named, traceparent_of, tree
from tidings import Context, Event, Retry, Tidings
from tidings.middleware import default_middleware
from tidings.otel import Tracing
from tidings.testing import eventually, running

SYSTEM = {"sqlite": "tidings.sqlite", "kafka": "kafka", "nats": "nats"}


@pytest.fixture(params=LOGS)
def log(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(kind, URL) of a fresh log with two partitions per topic."""
    return request.param, log_url(request, 2)


async def test_a_publish_and_what_its_handlers_publish_form_one_trace(
    log: tuple[str, str], tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    kind, url = log
    app = Tidings(url, service="shop", tracing=tracing)
    delivered: dict[str, Event] = {}

    @app.subscriber("orders", group="billing")
    async def bill(data: Any, ctx: Context) -> None:
        delivered["orders"] = ctx.event
        await ctx.publish("invoices", {"order": data["order"]}, type="invoice.issued")

    @app.subscriber("invoices", group="mail")
    def mail(data: Any, ctx: Context) -> None:  # a plain def: a thread, publish_sync
        delivered["invoices"] = ctx.event
        ctx.publish_sync("mails", {"order": data["order"]}, type="mail.sent")

    @app.subscriber("mails", group="audit")
    async def audit(data: Any, ctx: Context) -> None:
        delivered["mails"] = ctx.event

    async with app, running(app):
        sent = await app.publish("orders", {"order": "o1"}, type="order.placed", subject="o1")
        await eventually(lambda: len(exporter.get_finished_spans()) == 6, timeout=30)
    spans = exporter.get_finished_spans()
    assert tree(spans) == [
        (0, "send orders"),
        (1, "process orders"),
        (2, "send invoices"),
        (3, "process invoices"),
        (4, "send mails"),
        (5, "process mails"),
    ]
    send = named(spans, "send orders")
    process = named(spans, "process orders")
    assert send.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    # The send span's context is the event's creation context, written into it.
    assert sent.traceparent == delivered["orders"].traceparent == traceparent_of(send)
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert dict(send.attributes or {}) == {
        "messaging.system": SYSTEM[kind],
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "orders",
        "messaging.message.id": sent.id,
        "messaging.message.conversation_id": sent.id,
    }
    attributes = dict(process.attributes or {})
    record_partition = attributes.pop("messaging.destination.partition.id")
    assert record_partition in ("0", "1")
    assert isinstance(attributes.pop("tidings.offset"), int)
    assert attributes == {
        "messaging.system": SYSTEM[kind],
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "orders",
        "messaging.consumer.group.name": "billing",
        "messaging.message.id": sent.id,
        "messaging.message.conversation_id": sent.id,
        "tidings.handler": bill.__qualname__,
    }
    # The correlation id runs through: the conversation of every message is the first's.
    last = named(spans, "process mails")
    assert (last.attributes or {})["messaging.message.conversation_id"] == sent.id
    assert (last.attributes or {})["messaging.consumer.group.name"] == "audit"
    assert delivered["mails"].traceparent == traceparent_of(named(spans, "send mails"))


async def test_publish_many_is_one_send_span_the_creation_context_of_each_event(
    sqlite_url: str, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    app = Tidings(sqlite_url, service="shop", tracing=tracing)
    built = app.build({"n": 0}, type="order.placed")  # outside any span: no context
    async with app:
        events = await app.publish_many("orders", [{"n": 1}, {"n": 2}, built], type="order.placed")
    (send,) = exporter.get_finished_spans()
    assert send.name == "send orders"
    assert (send.attributes or {})["messaging.batch.message_count"] == 3
    assert [e.traceparent for e in events] == [traceparent_of(send)] * 2 + [None]
    assert send.links == ()  # the built event had no creation context to link to


async def test_a_retry_and_a_dead_letter_are_events_of_the_process_span(
    sqlite_url: str, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    app = Tidings(sqlite_url, service="shop", tracing=tracing)
    calls: dict[str, int] = {}

    @app.subscriber("orders", group="flaky", retry=Retry(max_attempts=3, base_delay=0.01, jitter=0))
    async def flaky(data: Any) -> None:
        calls[data["id"]] = calls.get(data["id"], 0) + 1
        if data["id"] == "never" or calls[data["id"]] == 1:
            raise ConnectionError("down")

    async with app, running(app):
        await app.publish("orders", {"id": "once"}, type="order.placed", subject="a")
        await app.publish("orders", {"id": "never"}, type="order.placed", subject="a")
        await eventually(lambda: len(exporter.get_finished_spans()) == 4, timeout=30)
    spans = exporter.get_finished_spans()
    ok, dead = [s for s in spans if s.name == "process orders"]
    assert [(e.name, dict(e.attributes or {})) for e in ok.events] == [
        (
            "retry",
            {
                "tidings.attempt": 1,
                "error.type": "ConnectionError",
                "tidings.retry.delay_seconds": 0.01,
            },
        )
    ]
    assert ok.status.status_code == StatusCode.UNSET
    assert "error.type" not in (ok.attributes or {})
    assert [e.name for e in dead.events] == ["retry", "retry", "dead_letter"]
    assert dict(dead.events[-1].attributes or {}) == {
        "error.type": "ConnectionError",
        "tidings.dead_letter.reason": "failed",
        "tidings.attempts": 3,
    }
    assert (dead.attributes or {})["error.type"] == "ConnectionError"
    assert dead.status.status_code == StatusCode.ERROR


async def test_an_unsampled_trace_has_no_spans_and_its_context_carries_on(
    sqlite_url: str, exporter: InMemorySpanExporter
) -> None:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Tidings(sqlite_url, service="shop", tracing=Tracing(provider))
    replies: list[Event] = []

    @app.subscriber("orders", group="billing")
    def bill(data: Any, ctx: Context) -> None:  # handled in a run: no span at all
        ctx.publish_sync("invoices", {}, type="invoice.issued")

    @app.subscriber("invoices", group="mail")
    async def mail(data: Any, ctx: Context) -> None:
        replies.append(ctx.event)

    async with app, running(app):
        sent = await app.publish("orders", {}, type="order.placed")
        await eventually(lambda: replies, timeout=30)
    assert exporter.get_finished_spans() == ()
    assert sent.traceparent is not None
    assert not _sampled(sent.traceparent)
    assert replies[0].traceparent is not None
    assert replies[0].traceparent.split("-")[1] == sent.traceparent.split("-")[1]  # one trace
    assert not _sampled(replies[0].traceparent)


def _sampled(traceparent: str) -> bool:
    return bool(int(traceparent[-2:], 16) & 1)


async def test_the_tracestate_is_carried_with_the_traceparent(
    sqlite_url: str, tracing: Tracing, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    from opentelemetry import trace

    app = Tidings(sqlite_url, service="shop", tracing=tracing)
    got: list[Event] = []

    @app.subscriber("orders", group="billing")
    async def bill(data: Any, ctx: Context) -> None:
        got.append(await ctx.publish("invoices", {}, type="invoice.issued"))

    parent = trace.SpanContext(
        0x1234, 0x5678, is_remote=True, trace_flags=trace.TraceFlags(1),
        trace_state=TraceState([("vendor", "v1")]),
    )  # fmt: skip
    async with app, running(app):
        with trace.use_span(trace.NonRecordingSpan(parent)):
            sent = await app.publish("orders", {}, type="order.placed")
        await eventually(lambda: got, timeout=30)
    assert sent.tracestate == "vendor=v1"
    assert got[0].tracestate == "vendor=v1"
    assert sent.traceparent is not None
    assert sent.traceparent.split("-")[1] == f"{0x1234:032x}"


def test_an_app_without_tracing_imports_nothing_of_opentelemetry() -> None:
    code = (
        "import sys, asyncio\n"
        "from tidings import Tidings, Worker\n"
        "from tidings.testing import running, eventually\n"
        "app = Tidings('memory://', service='s')\n"
        "seen = []\n"
        "app.subscriber('t', group='g')(lambda data: seen.append(data))\n"
        "async def main():\n"
        "    async with app, running(app):\n"
        "        await app.publish('t', {}, type='thing.happened')\n"
        "        await eventually(lambda: seen)\n"
        "asyncio.run(main())\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "assert 'tidings.otel' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tracing_without_the_extra_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"  # as if not installed
        "from tidings import Tidings\n"
        "from tidings.errors import ConfigError\n"
        "try:\n"
        "    Tidings('memory://', service='s', tracing=True)\n"
        "except ConfigError as exc:\n"
        "    assert \"pip install 'tidings[otel]'\" in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_worker_puts_the_tracing_middleware_outermost_once(tracing: Tracing) -> None:
    from tidings import Worker
    from tidings.otel import TracingMiddleware

    app = Tidings("memory://", service="s", tracing=tracing)
    app.subscriber("t", group="g")(lambda data: None)
    middleware = Worker(app).middleware
    assert isinstance(middleware[0], TracingMiddleware)
    assert [type(m) for m in middleware[1:]] == [type(m) for m in default_middleware()]
    own = [TracingMiddleware(tracing), *default_middleware()]
    assert Worker(app, middleware=own).middleware == own


@pytest.mark.parametrize(
    ("traceparent", "through_the_chain"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),  # sampled
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03", True),  # + random id
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", False),  # not sampled
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02", False),
        (None, True),  # no creation context: a root, the sampler decides
        ("garbage", True),  # unreadable: the same
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0", True),  # too short
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-000", True),  # too long
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", True),  # short, odd
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1000", True),  # long, even
        ("", True),  # empty
    ],
)
def test_only_events_of_sampled_traces_leave_the_worker_s_runs(
    tracing: Tracing, traceparent: str | None, through_the_chain: bool
) -> None:
    from tidings.otel import TracingMiddleware
    from tidings.otel._context import sampled

    event = Event(type="order.placed", source="s", traceparent=traceparent)
    assert TracingMiddleware(tracing).wants_chain(event) is through_the_chain
    if traceparent is not None:
        assert sampled(traceparent) is through_the_chain
