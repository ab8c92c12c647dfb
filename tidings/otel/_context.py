"""W3C trace context in an event: read from its ``traceparent`` (and ``tracestate``
extension), written from a span, without the propagator API (a dict carrier and a regex
per event; these are a few string operations)."""

from __future__ import annotations

import re

from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags, TraceState

from tidings.envelope import Event

__all__ = [
    "UNSAMPLED",
    "context_of",
    "format_traceparent",
    "from_json",
    "remote_context",
    "sampled",
    "span_of",
]

# What ``traceparent[54:]`` is for a well-formed traceparent (55 characters) whose
# "sampled" flag, the lowest bit of its last hex digit, is clear. Anything else there
# reads as sampled: a set flag, or "" or two characters (a traceparent of the wrong
# length: unreadable, the span is then a root and the sampler decides). One slice and one
# set lookup, asked for every event a tracing worker handles.
UNSAMPLED = frozenset("02468ace")

# A structured (JSON) event as the codec writes it (orjson: no spaces), for the relay:
# the creation context of an outbox row without decoding the row.
_TRACEPARENT_IN_JSON = re.compile(rb'"traceparent":"(00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})"')
_TRACESTATE_IN_JSON = re.compile(rb'"tracestate":"([^"\\]{1,512})"')


def sampled(traceparent: str) -> bool:
    """Whether a traceparent's sampled flag is set (a malformed one counts as set: the
    span is then a root, and the sampler decides)."""
    return traceparent[54:] not in UNSAMPLED


def remote_context(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The span context a traceparent names (remote), or None if it is absent or malformed."""
    if traceparent is None or len(traceparent) != 55:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4:
        return None
    version, trace_id, span_id, flags = parts
    try:
        tid, sid, bits = int(trace_id, 16), int(span_id, 16), int(flags, 16)
    except ValueError:
        return None
    if version != "00" or not tid or not sid:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(tid, sid, is_remote=True, trace_flags=TraceFlags(bits), trace_state=state)


def context_of(event: Event) -> SpanContext | None:
    """An event's creation context, if it carries one."""
    return remote_context(event.traceparent, event.extensions.get("tracestate"))


def span_of(event: Event) -> Span | None:
    """A non-recording span for an event's creation context (a parent to start from)."""
    context = context_of(event)
    return None if context is None else NonRecordingSpan(context)


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def from_json(value: bytes) -> SpanContext | None:
    """The creation context written in a structured event's bytes, if any."""
    found = _TRACEPARENT_IN_JSON.search(value)
    if found is None:
        return None
    state = _TRACESTATE_IN_JSON.search(value)
    return remote_context(found[1].decode(), state[1].decode() if state else None)
