"""OpenTelemetry tracing of publishes and handler calls: ``Tidings(..., tracing=True)``.

Needs the ``otel`` extra (``pip install 'tidings[otel]'``: opentelemetry-api); the SDK
and an exporter are yours to choose and configure (``TracerProvider``). Without the
extra, importing this module raises ImportError saying so, and nothing of it is loaded
anywhere else; an app without ``tracing=True`` never imports it.

Spans follow the messaging semantic conventions (v1.44):

- ``send {topic}`` (PRODUCER) per publish (one for a ``publish_many``), current while
  its events are built: its context is each event's ``traceparent`` (and
  ``tracestate`` extension), their creation context;
- ``create {topic}`` (PRODUCER) per event added to an outbox: its creation context,
  so that the trace runs on from the caller's span through the database; the relay's
  ``send {topic}`` is parented by it (one row) or linked to them (several);
- ``process {topic}`` (CONSUMER) per handler call of a sampled event, parented by and
  linked to its creation context, with ``retry`` and ``dead_letter`` events
  (:class:`TracingMiddleware`, which the worker puts outermost).

``messaging.system`` is ``kafka`` on Kafka; ``nats``, ``tidings.sqlite`` and
``tidings.memory`` elsewhere (:data:`SYSTEMS`; the conventions register no name for
them). See docs/guide.md ("Tracing with OpenTelemetry").
"""

from __future__ import annotations

try:
    import opentelemetry.trace  # noqa: F401  (the extra's one dependency)
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    raise ImportError("tidings.otel needs opentelemetry-api: pip install 'tidings[otel]'") from exc

from tidings.otel._middleware import TracingMiddleware
from tidings.otel._tracing import SYSTEMS, Tracing, messaging_system

__all__ = ["SYSTEMS", "Tracing", "TracingMiddleware", "messaging_system"]
