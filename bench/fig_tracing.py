"""Issue 19: what OpenTelemetry tracing costs end to end (tidings.otel, decision 0027).

One group, one async handler, events pre-published then drained, as ``e2e_one_group``;
per round, in this order: tracing off; on, 1% of traces sampled; on, every trace
sampled; metrics (scraped every second) and tracing (1%) on together. Tracing: an SDK
``TracerProvider`` with a ``BatchSpanProcessor`` whose exporter drops what it gets (the
spans are made, ended, queued and handed over; nothing is sent). Each event is built in
a root span of its own (a request's), so that the sampler decides per event.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bench._common import Figure, log, median
from bench._setup import Config, Workdir
from bench.fig_e2e import tidings_end_to_end


def _tracing(ratio: float) -> tuple[Any, Any, list[int]]:
    """(Tracing, its provider, [process spans exported]) with ``ratio`` of traces sampled."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    from tidings.otel import Tracing

    exported = [0]

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            exported[0] += sum(1 for s in spans if s.name.startswith("process"))
            return SpanExportResult.SUCCESS

    sampler = ParentBased(ALWAYS_ON if ratio >= 1 else TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=65536))
    return Tracing(provider), provider, exported


_VARIANTS = (  # name, the ratio of traces sampled (None: tracing off), metrics
    ("metrics", None, "scraped"),
    ("sampled_0.1pct", 0.001, None),
    ("sampled_1pct", 0.01, None),
    ("sampled_all", 1.0, None),
    ("metrics_sampled_0.1pct", 0.001, "scraped"),
    ("metrics_sampled_1pct", 0.01, "scraped"),
)
_ABOUT = {
    "metrics": "tidings.metrics on, scraped every second; tracing off",
    "sampled_0.1pct": "tracing on, ParentBased(TraceIdRatioBased(0.001))",
    "sampled_1pct": "tracing on, ParentBased(TraceIdRatioBased(0.01))",
    "sampled_all": "tracing on, every trace sampled (ALWAYS_ON)",
    "metrics_sampled_0.1pct": "tracing on (0.1%) and tidings.metrics on, scraped every second",
    "metrics_sampled_1pct": "tracing on (1%) and tidings.metrics on, scraped every second",
}


async def fig_tracing(cfg: Config, work: Workdir) -> list[Figure]:
    """Each variant against tracing and metrics off, in the same rounds: the rate, and
    the process's CPU time per event (all threads: the span processor's too), which a
    busy machine disturbs less than the rate."""
    n = cfg.e2e_events
    off: list[float] = []
    off_cpu: list[float] = []
    runs: dict[str, list[float]] = {name: [] for name, _, _ in _VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in _VARIANTS}
    spans: dict[str, list[int]] = {name: [] for name, _, _ in _VARIANTS}
    for r in range(cfg.e2e_rounds):
        with work.folder("tracing-off") as d:
            res = await tidings_end_to_end(os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous)
            off.append(res.rates(n)["g1"])
            off_cpu.append(res.cpu_seconds / n * 1e6)
        for name, ratio, metrics in _VARIANTS:
            tracing, provider, exported = _tracing(ratio) if ratio else (None, None, [0])
            with work.folder(f"tracing-{name}") as d:
                res = await tidings_end_to_end(
                    os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous,
                    tracing=tracing, metrics=metrics,
                )  # fmt: skip
            if provider is not None:
                provider.shutdown()  # flushes: every span made is counted
            runs[name].append(res.rates(n)["g1"])
            cpu[name].append(res.cpu_seconds / n * 1e6)
            spans[name].append(exported[0])
        log(
            f"  round {r + 1}: off {off[-1]:,.0f}/s, {off_cpu[-1]:.2f} us CPU/event; "
            + "; ".join(
                f"{k} {v[-1]:,.0f}/s ({v[-1] / off[-1]:.3f}), {cpu[k][-1]:.2f} us "
                f"({off_cpu[-1] / cpu[k][-1]:.3f}), {spans[k][-1]} process spans"
                for k, v in runs.items()
            )
        )
    figures = []
    for name, on in runs.items():
        detail = {
            "events": n, "what": _ABOUT[name],
            "rounds_on": [round(x) for x in on], "rounds_off": [round(x) for x in off],
            "ratios": [round(a / b, 3) for a, b in zip(on, off, strict=True)],
            "cpu_us_per_event_on": [round(x, 2) for x in cpu[name]],
            "cpu_us_per_event_off": [round(x, 2) for x in off_cpu],
            "cpu_ratios": [round(b / a, 3) for a, b in zip(cpu[name], off_cpu, strict=True)],
            "process_spans_recorded": spans[name],
        }  # fmt: skip
        target = None if name == "sampled_all" else ("ratio", ">=", 0.85)
        figures.append(
            Figure(
                f"e2e_one_group_{name}",
                median(on),
                "events/s",
                median(off),
                "e2e_one_group, tracing and metrics off, same rounds",
                target,
                detail,
            )
        )
    return figures
