"""The spans over OTLP/HTTP, as a collector receives them: a local receiver on
127.0.0.1 decodes each ``POST /v1/traces`` (protobuf) with opentelemetry-proto."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tidings import Context, Tidings
from tidings.otel import Tracing
from tidings.testing import eventually, running


class _Receiver(BaseHTTPRequestHandler):
    requests: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.requests.append(request)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """(endpoint URL, the requests it decoded) of an OTLP/HTTP receiver on 127.0.0.1."""
    received: list[ExportTraceServiceRequest] = []
    handler = type("Receiver", (_Receiver,), {"requests": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


async def test_the_spans_reach_an_otlp_http_receiver_with_their_attributes(
    sqlite_url: str, receiver: tuple[str, list[ExportTraceServiceRequest]]
) -> None:
    endpoint, received = receiver
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=10))
    )
    app = Tidings(sqlite_url, service="shop", tracing=Tracing(provider))
    done: list[str] = []

    @app.subscriber("orders", group="billing")
    async def bill(data: Any, ctx: Context) -> None:
        done.append(ctx.event.id)

    def spans() -> list[Any]:
        return [
            span
            for request in received
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    async with app, running(app):
        sent = await app.publish("orders", {"id": 1}, type="order.placed")
        await eventually(lambda: len(spans()) == 2, timeout=30)
    provider.shutdown()
    by_name = {s.name: s for s in spans()}
    assert set(by_name) == {"send orders", "process orders"}
    send, process = by_name["send orders"], by_name["process orders"]
    assert process.trace_id == send.trace_id
    assert process.parent_span_id == send.span_id
    assert send.kind == send.SPAN_KIND_PRODUCER
    assert process.kind == process.SPAN_KIND_CONSUMER
    assert sent.traceparent is not None
    assert sent.traceparent[:-3] == f"00-{send.trace_id.hex()}-{send.span_id.hex()}"
    assert int(sent.traceparent[-2:], 16) & 1  # sampled
    attributes = _attributes(process)
    assert attributes["messaging.system"] == "tidings.sqlite"
    assert attributes["messaging.destination.name"] == "orders"
    assert attributes["messaging.consumer.group.name"] == "billing"
    assert attributes["messaging.message.id"] == sent.id
    assert attributes["messaging.message.conversation_id"] == sent.id
    assert [link.span_id for link in process.links] == [send.span_id]
    scopes = {
        scope.scope.name for r in received for res in r.resource_spans for scope in res.scope_spans
    }
    assert scopes == {"tidings"}
