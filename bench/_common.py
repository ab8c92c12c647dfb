"""Shared pieces of the benchmarks: figures, payloads, raw SQLite baselines, bounds."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidings.transports.sqlite import SCHEMA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOPIC = "bench"
PARTITIONS = 8
EVENT_TYPE = "bench.ticked"
PAD = 240  # characters of filler: with the other fields, a payload of ~300 bytes of JSON


def payload(n: int) -> dict[str, Any]:
    """A typical small event payload, about 300 bytes once encoded as JSON."""
    return {"task_id": f"task-{n:08d}", "seq": n, "status": "open", "note": "x" * PAD}


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout holds only the figures and the table."""
    print(message, file=sys.stderr, flush=True)


# -- figures -----------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure. ``target`` is ``(on, op, threshold)`` with ``on`` one of
    ``value`` or ``ratio`` and ``op`` one of ``>=`` or ``<=``, e.g.
    ``("ratio", ">=", 1 / 3)``; a figure without a target is informational."""

    bench: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: tuple[str, str, float] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def target_text(self) -> str | None:
        if self.target is None:
            return None
        on, op, threshold = self.target
        return f"{on} {op} {threshold:.3g}" if threshold < 1000 else f"{on} {op} {threshold:.0f}"

    @property
    def ok(self) -> bool:
        """True when the target is met, or when there is none (an informational figure)."""
        if self.target is None:
            return True
        on, op, threshold = self.target
        got = self.value if on == "value" else self.ratio
        if got is None or got != got:  # no baseline, or NaN
            return False
        return got >= threshold if op == ">=" else got <= threshold

    def as_json(self) -> str:
        return json.dumps(
            {
                "bench": self.bench,
                "value": _round(self.value),
                "unit": self.unit,
                "baseline": None if self.baseline is None else _round(self.baseline),
                "ratio": None if self.ratio is None else round(self.ratio, 3),
                "target": self.target_text,
                "ok": self.ok,
                "baseline_name": self.baseline_name or None,
                "detail": self.detail,
            },
            default=str,
        )


def _round(x: float) -> float:
    if abs(x) >= 100:
        return round(x)
    return round(x, 3)


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def summary_table(figures: Sequence[Figure]) -> str:
    rows = [("figure", "value", "unit", "baseline", "ratio", "target", "result")]
    for f in figures:
        result = ("PASS" if f.ok else "MISS") if f.target else "info"
        rows.append(
            (
                f.bench,
                fmt(f.value),
                f.unit,
                fmt(f.baseline),
                "-" if f.ratio is None else f"{f.ratio:.2f}",
                f.target_text or "-",
                result,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_xs:
        return float("nan")
    rank = max(1, min(len(sorted_xs), int(-(-q * len(sorted_xs) // 100))))
    return float(sorted_xs[rank - 1])


# -- bounds ------------------------------------------------------------------


class Deadline:
    """A wall-clock bound for one loop: ``left()`` seconds remain, ``over()`` when done."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def over(self) -> bool:
        return time.monotonic() >= self.end


# -- raw sqlite3 baselines -----------------------------------------------------


def events_ddl() -> str:
    """The transport's own ``events`` DDL, read from its schema, so that the baselines
    keep the library's table shape."""
    match = re.search(r"CREATE TABLE IF NOT EXISTS events \(.*?\)[^;]*;", SCHEMA, re.S)
    if match is None:
        raise RuntimeError("the events table is missing from the SQLite schema")
    return match.group(0).rstrip(";")


def raw_connect(path: str, synchronous: str) -> sqlite3.Connection:
    """A connection set up as the transport sets up its own: WAL, the same synchronous."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- micro timing --------------------------------------------------------------


def per_call_us(fns: dict[str, Callable[[], Any]], number: int, repeat: int) -> dict[str, float]:
    """Microseconds per call of each function: the best of ``repeat`` runs of ``number``
    calls. The functions take turns within each repetition, so that a busy spell of the
    machine hits all of them alike rather than whichever happened to run then."""
    best = dict.fromkeys(fns, float("inf"))
    deadline = Deadline(60)
    for r in range(repeat):
        if r and deadline.over():  # at least one full pass, then within a minute
            break
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / number * 1e6 for name, seconds in best.items()}


def cpu_probe() -> float:
    """Nanoseconds per iteration of a fixed pure-Python loop (best of 5): how fast this
    machine runs Python right now. Shared or throttled hosts vary by 2x within minutes;
    comparing this probe across runs tells a slower machine from a slower tidings."""
    best = float("inf")
    for _ in range(5):
        d: dict[int, int] = {}
        start = time.perf_counter()
        for i in range(100_000):
            d[i & 255] = i + len(d)
        best = min(best, time.perf_counter() - start)
    return best / 100_000 * 1e9
