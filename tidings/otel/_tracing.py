"""The spans of an app's publishes: ``send`` (a publish), ``create`` (an outbox row), the
relay's ``send``; and the creation context written into each event it builds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode

from tidings.context import Scope, causal_scope
from tidings.envelope import Event
from tidings.otel._context import context_of, format_traceparent, from_json, span_of

__all__ = ["SYSTEMS", "Tracing", "messaging_system"]

SYSTEMS = {"kafka": "kafka", "nats": "nats", "sqlite": "tidings.sqlite", "memory": "tidings.memory"}
"""``messaging.system`` per transport (URL scheme). The conventions register ``kafka``;
NATS and tidings' own logs are not registered: ``nats``, ``tidings.sqlite`` and
``tidings.memory`` are this library's names for them."""

_NAME = "tidings"


def messaging_system(url: str) -> str:
    """The ``messaging.system`` of the log at ``url``."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    return SYSTEMS.get(scheme, f"tidings.{scheme}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tidings")
    except PackageNotFoundError:  # pragma: no cover - a checkout without install
        return "0"


class Tracing:
    """OpenTelemetry spans of one app, through the global tracer provider (or
    ``tracer_provider``), following the messaging semantic conventions (v1.44).

    Made by ``Tidings(..., tracing=True)`` (as ``app.tracing``), or given as
    ``Tidings(..., tracing=Tracing(provider))``; the app's workers then put a
    :class:`~tidings.otel.TracingMiddleware` outermost, for the ``process`` spans.
    ``system`` is ``messaging.system``, by default the log's (:func:`messaging_system`).
    """

    def __init__(self, tracer_provider: Any = None, *, system: str | None = None) -> None:
        self.system = system or ""
        self.tracer = trace.get_tracer(_NAME, _version(), tracer_provider=tracer_provider)
        # The creation context last written into an event, and its traceparent: the
        # events of one publish share one, formatted once.
        self._last: tuple[SpanContext | None, str | None, str | None] = (None, None, None)

    def for_log(self, url: str) -> Tracing:
        """This, with the ``messaging.system`` of the log at ``url`` unless one was given."""
        self.system = self.system or messaging_system(url)
        return self

    # -- the creation context ---------------------------------------------------------

    def inject(self, extensions: dict[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
        """The traceparent of an event built now, and its extensions with the
        ``tracestate`` (if any): the current span's context; with no span current, in a
        handler called without one (its event not sampled), the handled event's."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            handled = causal_scope.get()
            if handled is not None and not isinstance(handled, Scope):
                event = handled[3]
                return event.traceparent, _with_state(extensions, event.tracestate)
            return None, extensions
        last, traceparent, state = self._last
        if context is not last:
            traceparent = format_traceparent(context)
            state = context.trace_state.to_header() or None
            self._last = (context, traceparent, state)
        return traceparent, _with_state(extensions, state)

    def _parent(self) -> otel_context.Context | None:
        """The parent of a span started now: the current span; with none, the handled
        event's creation context (a handler run without a span: not sampled)."""
        if trace.get_current_span().get_span_context().is_valid:
            return None
        handled = causal_scope.get()
        if handled is not None and not isinstance(handled, Scope):
            span = span_of(handled[3])
            if span is not None:
                return trace.set_span_in_context(span)
        return None

    # -- producer spans ---------------------------------------------------------------

    @contextmanager
    def send(self, topic: str, events: Sequence[Any] = ()) -> Iterator[Span]:
        """A ``send {topic}`` span, current while the events are built and appended;
        linked to the creation contexts of ``events`` already built (those of the others
        are this span's own)."""
        built = (context_of(e) for e in events if isinstance(e, Event))
        links = [Link(c) for c in built if c is not None]
        span = self.tracer.start_span(
            f"send {topic}", self._parent(), SpanKind.PRODUCER,
            self._attributes("send", topic), links or None,
        )  # fmt: skip
        with trace.use_span(span, end_on_exit=True, record_exception=False):
            try:
                yield span
            except BaseException as exc:
                _failed(span, exc)
                raise

    @contextmanager
    def create(self, topic: str) -> Iterator[Span]:
        """A ``create {topic}`` span: an event built now for an outbox, its creation
        context (sent later by the relay)."""
        span = self.tracer.start_span(
            f"create {topic}", self._parent(), SpanKind.PRODUCER, self._attributes("create", topic)
        )
        with trace.use_span(span, end_on_exit=True, record_exception=False):
            yield span

    @contextmanager
    def relay(self, topic: str, values: Sequence[bytes]) -> Iterator[Span]:
        """The outbox relay's ``send {topic}`` of encoded events: parented by the
        creation context of one, linked to those of several."""
        contexts = [c for c in map(from_json, values) if c is not None]
        parent = None
        links = None
        if len(values) == 1 and contexts:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
        elif contexts:
            links = [Link(c) for c in contexts]
        attributes = self._attributes("send", topic)
        if len(values) > 1:
            attributes["messaging.batch.message_count"] = len(values)
        span = self.tracer.start_span(f"send {topic}", parent, SpanKind.PRODUCER, attributes, links)
        with trace.use_span(span, end_on_exit=True, record_exception=False):
            try:
                yield span
            except BaseException as exc:
                _failed(span, exc)
                raise

    def describe(self, span: Span, events: Sequence[Event]) -> None:
        """Attributes of the events a producer span sent or created."""
        if not span.is_recording():
            return
        if len(events) == 1:
            event = events[0]
            span.set_attribute("messaging.message.id", event.id)
            span.set_attribute("messaging.message.conversation_id", event.correlationid or event.id)
        else:
            span.set_attribute("messaging.batch.message_count", len(events))

    def _attributes(self, operation: str, topic: str) -> dict[str, Any]:
        return {
            "messaging.system": self.system,
            "messaging.operation.name": operation,
            "messaging.operation.type": operation,
            "messaging.destination.name": topic,
        }


def _with_state(extensions: dict[str, Any] | None, state: str | None) -> dict[str, Any] | None:
    """``extensions`` with the ``tracestate`` (unless it has one, or there is none)."""
    if state is None or (extensions is not None and "tracestate" in extensions):
        return extensions
    return {**(extensions or {}), "tracestate": state}


def _failed(span: Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
