"""Issue 19: what tracing and metrics add per event to a worker's handling, steadily.

    .venv/bin/python -m bench.fig_tracing_cost [--rounds 7] [--events 20000]
    .venv/bin/python -m bench.fig_tracing_cost --callgrind [--variants off,tracing_none]

The part of a worker that tracing and metrics touch, without the log: a group's
:class:`~tidings.dead_letters.Intake` (as the Worker makes it: the default middleware,
with the tracing middleware outermost when the app traces) takes runs of records held in
memory, one partition, one ``async def`` handler that counts, on a ``memory://`` app; no
fetch, no commit, no other process. What a variant adds here is what it adds end to end
(fetch and commits do not change with it), with the noise of I/O and of the machine's
other work left out.

Variants (:data:`VARIANTS`): the events' creation context (none; one in every 1,000 or
100 sampled, the rest not; all sampled), whether the app traces (an SDK
``TracerProvider``, ``ParentBased(ALWAYS_ON)``: the events' flags decide, as a
``ParentBased`` sampler does for a remote parent; a ``BatchSpanProcessor`` whose exporter
drops what it gets) and whether the handlers are timed (``Worker.time_handlers()``, what
tidings.metrics turns on).

Default mode: CPU time per event (``time.process_time``: every thread, the span
processor's too), the variants taking turns in one process, several rounds; the median
and the ratio of ``off`` to each. ``--callgrind``: machine instructions per event of each
variant's drain (warmed up before), counted by ``valgrind --tool=callgrind`` in one child
process that runs the variants in turn and has valgrind dump its counts between them (the
load of the machine does not change them); ``RUN_SECONDS`` is raised there, so that
valgrind's slowness does not cut the runs short. Use ``--events 5000 --rounds 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench._common import EVENT_TYPE, TOPIC, log, payload
from tidings import Tidings, Worker
from tidings.codec import encode
from tidings.dead_letters import Intake
from tidings.envelope import Event
from tidings.transport import Record

GROUP = "g1"


@dataclass(frozen=True)
class Variant:
    sampled_every: int | None  # one event in this many has a sampled context; None: no context
    tracing: bool
    timed: bool
    about: str
    tracestate: str | None = None  # beside each event's traceparent (an extension)


VARIANTS = {
    "off": Variant(None, False, False, "tracing and metrics off, events without a context"),
    "context_only": Variant(0, False, False, "tracing off, events with an unsampled context"),
    "context_state": Variant(
        0, False, False, "tracing off, unsampled context and a tracestate", "rojo=00f067aa0ba902b7"
    ),
    "tracing_none": Variant(0, True, False, "tracing on, no event sampled"),
    "tracing_0.1pct": Variant(1000, True, False, "tracing on, 1 event in 1,000 sampled"),
    "tracing_1pct": Variant(100, True, False, "tracing on, 1 event in 100 sampled"),
    "timed": Variant(None, False, True, "handlers timed (tidings.metrics), tracing off"),
    "timed_tracing_0.1pct": Variant(1000, True, True, "handlers timed, tracing 1 in 1,000"),
    "timed_tracing_1pct": Variant(100, True, True, "handlers timed, tracing 1 in 100"),
    "tracing_all": Variant(1, True, False, "tracing on, every event sampled"),
}
DEFAULT = [name for name in VARIANTS if name != "tracing_all"]


def _traceparent(n: int, sampled_every: int | None) -> str | None:
    if sampled_every is None:
        return None
    flags = "01" if sampled_every and n % sampled_every == 0 else "00"
    return f"00-{n + 1:032x}-{n + 1:016x}-{flags}"


def records(n: int, sampled_every: int | None, tracestate: str | None = None) -> list[Record]:
    """``n`` encoded events of one partition, as a fetch returns them."""
    out = []
    extensions = None if tracestate is None else {"tracestate": tracestate}
    for k in range(n):
        event = Event(
            type=EVENT_TYPE, source="bench", data=payload(k), correlationid=f"c{k:08d}",
            traceparent=_traceparent(k, sampled_every), extensions=extensions,
        )  # fmt: skip
        out.append(Record(TOPIC, 0, k, 0, None, encode(event)))
    return out


def _provider() -> Any:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=65536))
    return provider


class Harness:
    """One variant's app, worker and intake, started; :meth:`drain` takes records through."""

    def __init__(self, variant: Variant, calls: Iterator[int]) -> None:
        self.variant = variant
        self.provider = _provider() if variant.tracing else None
        tracing: Any = False
        if self.provider is not None:
            from tidings.otel import Tracing

            tracing = Tracing(self.provider)
        self.app = Tidings("memory://", service="bench", tracing=tracing)
        self.app.topic(TOPIC, partitions=1)

        async def count(data: Any) -> None:
            next(calls)

        self.app.subscriber(TOPIC, group=GROUP)(count)
        self.intake: Intake | None = None

    async def start(self) -> None:
        await self.app.start()
        worker = Worker(self.app)
        if self.variant.timed:
            worker.time_handlers()
        worker.rate_limits = {}  # as Worker.run sets them: this app limits no group
        self.intake = worker._runner(GROUP).intake  # the Worker's own making of it

    async def drain(self, batch: Sequence[Record]) -> None:
        assert self.intake is not None
        queue = collections.deque(batch)
        pop = queue.popleft

        def taken(records: list[Record]) -> None:
            for _ in records:
                pop()

        take_run = self.intake.take_run
        for _ in range(len(batch) + 1):  # bounded: at least one record per call
            if not queue:
                return
            await take_run(queue, taken)
        raise RuntimeError("the intake did not take every record")

    async def close(self) -> None:
        await self.app.close()
        if self.provider is not None:
            self.provider.shutdown()


async def cpu_rounds(names: Sequence[str], n: int, rounds: int) -> dict[str, list[float]]:
    """CPU microseconds per event of each variant, the variants taking turns."""
    calls = itertools.count()
    batches = {v: records(n, VARIANTS[v].sampled_every, VARIANTS[v].tracestate) for v in names}
    harnesses = {v: Harness(VARIANTS[v], calls) for v in names}
    for v, h in harnesses.items():
        await h.start()
        await h.drain(batches[v][: n // 10])  # warm: routes, caches
    out: dict[str, list[float]] = {v: [] for v in names}
    try:
        for r in range(rounds):
            for v in names:
                before = next(calls)
                begin = time.process_time()
                await harnesses[v].drain(batches[v])
                out[v].append((time.process_time() - begin) / n * 1e6)
                if next(calls) - before - 1 != n:
                    raise RuntimeError(f"{v}: the handler was not called {n} times")
            log(f"  round {r + 1}: " + ", ".join(f"{v} {out[v][-1]:.3f}" for v in names))
    finally:
        for h in harnesses.values():
            await h.close()
    return out


async def _segments(names: Sequence[str], n: int, rounds: int) -> None:
    """A child under callgrind: each variant's drain of ``n`` events between two calls of
    ``getppid``, before which valgrind dumps its counts (``--dump-before=getppid``)."""
    from tidings.worker import dispatch

    dispatch.RUN_SECONDS = 3600.0  # valgrind runs some 50 times slower: keep runs whole
    calls = itertools.count()
    batches = {v: records(n, VARIANTS[v].sampled_every, VARIANTS[v].tracestate) for v in names}
    harnesses = {v: Harness(VARIANTS[v], calls) for v in names}
    for v, h in harnesses.items():
        await h.start()
        await h.drain(batches[v][: n // 2])  # warm: routes, caches, the specialized code
    for _ in range(rounds):
        for v in names:
            os.getppid()  # a dump: what came before is not this variant's
            await harnesses[v].drain(batches[v])
    os.getppid()
    for h in harnesses.values():
        await h.close()


def instructions(names: Sequence[str], n: int, rounds: int) -> dict[str, list[int]]:
    """Machine instructions of each variant's drain of ``n`` events, per round: one child
    process under ``valgrind --tool=callgrind``, one dump per drain."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            [
                "valgrind", "--tool=callgrind", "--dump-before=getppid",
                f"--callgrind-out-file={d}/cg.out", sys.executable, "-m",
                "bench.fig_tracing_cost", "--child", ",".join(names), str(n), str(rounds),
            ],
            capture_output=True, text=True, timeout=3600, check=True,
        )  # fmt: skip
        totals = []
        for k in range(2, 2 + rounds * len(names)):  # cg.out.1: the start, before them
            with open(f"{d}/cg.out.{k}") as f:
                found = re.search(r"^totals: (\d+)", f.read(), re.MULTILINE)
            if found is None:
                raise RuntimeError(f"no totals in callgrind's dump {k}")
            totals.append(int(found[1]))
    out: dict[str, list[int]] = {v: [] for v in names}
    for k, total in enumerate(totals):
        out[names[k % len(names)]].append(total)
    return out


def _when() -> str:
    now = time.strftime("%H:%M:%S", time.gmtime())
    return f"# load average {os.getloadavg()[0]:.2f}, {now} UTC"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(DEFAULT))
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        names, n, rounds = args.child
        asyncio.run(_segments(names.split(","), int(n), int(rounds)))
        return
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    print(_when())
    if args.callgrind:
        counts = instructions(names, args.events, args.rounds)
        base = statistics.median(counts[names[0]])
        for v in names:
            m = statistics.median(counts[v])
            rounds = ", ".join(f"{c / args.events:,.0f}" for c in counts[v])
            print(
                f"{v:22s} {m / args.events:9,.0f} instructions/event (rounds: {rounds})  "
                f"{m / base:.3f} x {names[0]}  {VARIANTS[v].about}",
                flush=True,
            )
    else:
        cpu = asyncio.run(cpu_rounds(names, args.events, args.rounds))
        off = statistics.median(cpu[names[0]])
        for v in names:
            m = statistics.median(cpu[v])
            print(
                f"{v:22s} {m:7.3f} us CPU/event (median of {args.rounds}; min "
                f"{min(cpu[v]):.3f})  {names[0]}/this {off / m:.3f}  {VARIANTS[v].about}"
            )
    print(_when())


if __name__ == "__main__":
    main()
