"""The ``process`` span of each handler call of a traced event, with the retries and
the dead-lettering as its events."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tidings.envelope import Event
from tidings.middleware.base import Delivery, Middleware, Next
from tidings.otel._context import UNSAMPLED, context_of
from tidings.subscriber import Subscriber

if TYPE_CHECKING:
    from tidings.otel._tracing import Tracing

__all__ = ["TracingMiddleware"]


class TracingMiddleware(Middleware):
    """Outermost: a ``process {topic}`` span (kind CONSUMER) around each handler call
    of an event whose creation context is sampled, or that has none (the sampler then
    decides), parented by and linked to that context; what the handler publishes is
    its child. Retries and dead-lettering are the span's events (``retry``,
    ``dead_letter``), with ``error.type``.

    An event whose context is not sampled gets no span: its calls stay in the worker's
    runs (a span would cost more than the rest of the call), and what its handler
    publishes carries its trace context on, unsampled.
    """

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def only_on_error(self, subscriber: Subscriber) -> bool:
        return True  # around the calls of the events wants_chain names, else nothing

    def wants_chain(self, event: Event) -> bool:
        traceparent = event.traceparent  # sampled(), inline: asked for every event
        return traceparent is None or traceparent[54:] not in UNSAMPLED

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        event, record = delivery.event, delivery.record
        if not self.wants_chain(event):  # its creation context not sampled: no span
            await call_next(delivery)
            return
        creation = context_of(event)
        if creation is None:
            parent, links = otel_context.Context(), None  # a root: the sampler decides
        else:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(creation))
            links = [Link(creation)]
        span = self.tracing.tracer.start_span(
            f"process {record.topic}", parent, SpanKind.CONSUMER,
            self._attributes(delivery), links, record_exception=False,
        )  # fmt: skip
        token = otel_context.attach(trace.set_span_in_context(span))
        if span.is_recording():
            delivery.note = _Notes(span)
        try:
            await call_next(delivery)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def _attributes(self, delivery: Delivery) -> dict[str, Any]:
        event, record = delivery.event, delivery.record
        return {
            "messaging.system": self.tracing.system,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.consumer.group.name": delivery.group,
            "messaging.message.id": event.id,
            "messaging.message.conversation_id": event.correlationid or event.id,
            "tidings.handler": delivery.subscriber.name,
            "tidings.offset": record.offset,
        }


class _Notes:
    """What Retry and DeadLetters report (``delivery.note``), as the span's events."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def __call__(self, name: str, attributes: dict[str, Any]) -> None:
        self.span.add_event(name, attributes)
        if name == "dead_letter":
            self.span.set_attribute("error.type", attributes["error.type"])
            self.span.set_status(Status(StatusCode.ERROR, "dead-lettered"))
