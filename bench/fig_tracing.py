"""Issue 19: what OpenTelemetry tracing costs end to end (tidings.otel, decision 0027).

One group, one async handler, events pre-published then drained, as ``e2e_one_group``.
Each variant (metrics; tracing at 0.1%, 1%, every trace; metrics and tracing at 0.1%,
1%) is drained in pairs with tracing and metrics off, back to back, several rounds
(:data:`ROUNDS`); the figure is the median of the pairs' CPU ratios (decision 0043).
Tracing: an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` whose exporter drops
what it gets (the spans are made, ended, queued and handed over; nothing is sent). Each
event is built in a root span of its own (a request's), so that the sampler decides per
event"""

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


# Rounds of on/off pairs per variant (quick: 3). Why seven: a drain's rate moves by
# 2-3x on a machine shared with other work, and its CPU time per event by some 5-15%;
# the median of seven pairs, each pair's two drains run back to back (the order
# alternating from round to round, so that neither side always runs second), keeps the
# ratio within a few per cent from run to run on a quiet machine (docs/benchmarks.md,
# "Tracing and metrics: the carry cost"), where one triple of rounds moved it by 0.15.
ROUNDS = 7


async def _drain(work: Workdir, label: str, cfg: Config, n: int, ratio: float | None,
                 metrics: str | None) -> tuple[float, float, int]:  # fmt: skip
    """One drain: (events/s, CPU us per event, process spans exported)."""
    tracing, provider, exported = _tracing(ratio) if ratio else (None, None, [0])
    with work.folder(f"tracing-{label}") as d:
        res = await tidings_end_to_end(
            os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous,
            tracing=tracing, metrics=metrics,
        )  # fmt: skip
    if provider is not None:
        provider.shutdown()  # flushes: every span made is counted
    return res.rates(n)["g1"], res.cpu_seconds / n * 1e6, exported[0]


async def fig_tracing(cfg: Config, work: Workdir) -> list[Figure]:
    """Each variant against tracing and metrics off, in pairs run back to back (off
    first in even rounds, the variant first in odd ones), :data:`ROUNDS` rounds. Per
    pair: the rate ratio (on/off) and the CPU ratio (off's CPU time per event over the
    variant's: the process's, every thread's, the span processor's too). The figure is
    the median of the pairs' CPU ratios, which a busy machine disturbs far less than
    the rates (the rates' ratios are in the detail)."""
    n = cfg.e2e_events
    rounds = 3 if cfg.quick else ROUNDS
    rate: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in _VARIANTS}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in _VARIANTS}
    spans: dict[str, list[int]] = {name: [] for name, _, _ in _VARIANTS}
    for r in range(rounds):
        for name, ratio, metrics in _VARIANTS:
            pair = {}
            for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
                if side == "off":
                    pair[side] = await _drain(work, "off", cfg, n, None, None)
                else:
                    pair[side] = await _drain(work, name, cfg, n, ratio, metrics)
            rate[name].append((pair["on"][0], pair["off"][0]))
            cpu[name].append((pair["on"][1], pair["off"][1]))
            spans[name].append(pair["on"][2])
        log(
            f"  round {r + 1}: "
            + "; ".join(
                f"{k} {rate[k][-1][0]:,.0f}/s ({rate[k][-1][0] / rate[k][-1][1]:.3f}), "
                f"{cpu[k][-1][0]:.2f} us ({cpu[k][-1][1] / cpu[k][-1][0]:.3f}), "
                f"{spans[k][-1]} process spans"
                for k in rate
            )
        )
    figures = []
    for name, _, _ in _VARIANTS:
        cpu_ratios = [off / on for on, off in cpu[name]]
        rate_ratios = [on / off for on, off in rate[name]]
        detail = {
            "events": n, "rounds": rounds, "what": _ABOUT[name],
            "figure": "median of the pairs' CPU ratios (off's CPU per event / this one's)",
            "cpu_ratios": [round(x, 3) for x in cpu_ratios],
            "rate_ratios": [round(x, 3) for x in rate_ratios],
            "rate_ratio_median": round(median(rate_ratios), 3),
            "cpu_us_per_event_on": [round(on, 2) for on, _ in cpu[name]],
            "cpu_us_per_event_off": [round(off, 2) for _, off in cpu[name]],
            "rounds_on": [round(on) for on, _ in rate[name]],
            "rounds_off": [round(off) for _, off in rate[name]],
            "process_spans_recorded": spans[name],
        }  # fmt: skip
        target = None if name == "sampled_all" else ("value", ">=", 0.85)
        figures.append(
            Figure(
                f"e2e_one_group_{name}",
                median(cpu_ratios),
                "x off (CPU per event)",
                None,
                "e2e_one_group, tracing and metrics off, paired drains",
                target,
                detail,
            )
        )
    return figures
