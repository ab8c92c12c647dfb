"""Fixtures of the tracing tests: an SDK tracer provider whose spans are kept in memory,
and helpers that read the span tree back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tidings.otel import Tracing


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def tracing(provider: TracerProvider) -> Tracing:
    """What ``Tidings(tracing=...)`` takes: spans into ``provider`` (not the global one)."""
    return Tracing(provider)


def tree(spans: Sequence[ReadableSpan]) -> list[tuple[int, str]]:
    """The spans as (depth, name), depth-first, children in start order; every span
    must belong to one trace under one root."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        by_parent.setdefault(parent, []).append(span)
    known = {s.context.span_id for s in spans}
    roots = [s for s in spans if s.parent is None or s.parent.span_id not in known]
    assert len(roots) == 1, [s.name for s in roots]
    assert len({s.context.trace_id for s in spans}) == 1, "one trace"
    out: list[tuple[int, str]] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        out.append((depth, span.name))
        for child in sorted(by_parent.get(span.context.span_id, []), key=_start):
            walk(child, depth + 1)

    walk(roots[0], 0)
    assert len(out) == len(spans)
    return out


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def named(spans: Sequence[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    """The one span called ``name`` with these attributes."""
    found = [
        s
        for s in spans
        if s.name == name and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


def traceparent_of(span: ReadableSpan) -> str:
    c = span.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"
