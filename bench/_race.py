"""The rounds and the figures of a transport benchmark (``bench_kafka``, ``bench_nats``):
three contestants (tidings, the raw client, FastStream) take turns at going first on
one broker; informational extras (FastStream variants, the raw client with prebuilt
records) run the e2e figures (and, some, the publish figure) last.

A script gives a :class:`Race` (how topics are named and created, what each baseline
is), runs :func:`run_round` per round, builds :func:`figures` and prints them with
:func:`report`.
"""

from __future__ import annotations

import cProfile
import functools
import os
import pstats
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench._common import Figure, cpu_probe, fmt, log, median, percentile, summary_table
from bench._contest import (
    Contestant,
    event,
    measure_e2e,
    measure_latency,
    measure_publish,
)

CHUNK = 1000
MAIN = ("tidings", "raw", "faststream")
THROUGHPUT = ("publish", "e2e_one_group", "e2e_three_groups")
LATENCY = ("latency_p50", "latency_p99")
UNITS = {
    "publish": "events/s",
    "e2e_one_group": "events/s",
    "e2e_three_groups": "events/s per group",
    "latency_p50": "ms",
    "latency_p99": "ms",
    "latency_max": "ms",
}


@dataclass(frozen=True)
class Config:
    quick: bool
    events: int
    rounds: int
    latency_seconds: float
    latency_warmup: int
    latency_rate: int = 1000

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, events=5000, rounds=1, latency_seconds=3.0, latency_warmup=300)
        return cls(False, events=20_000, rounds=3, latency_seconds=5.0, latency_warmup=500)


@dataclass(frozen=True)
class Race:
    """What differs between transports: topics are ``<prefix>-<kind>-<who>-<round>``,
    created by ``create_topic(name)`` before each measurement; ``baselines`` says what
    ``raw`` and ``faststream`` are; ``extras`` (name -> label) are informational
    contestants measured on the e2e figures, after the others; those in ``publishers``
    on the publish figure too, those in ``publish_only`` on the publish figure alone
    (e.g. other producer settings)."""

    prefix: str
    create_topic: Callable[[str], Awaitable[Any]]
    baselines: Mapping[str, str]
    extras: Mapping[str, str] = field(default_factory=dict)
    publishers: frozenset[str] = frozenset()
    publish_only: frozenset[str] = frozenset()

    def measures(self, who: str, figure: str) -> bool:
        """Whether contestant ``who`` is measured on ``figure``."""
        if who not in self.extras:
            return True
        if who in self.publish_only:
            return figure == "publish"
        return figure.startswith("e2e") or (figure == "publish" and who in self.publishers)


class Results:
    """Each figure's value per contestant per round; and what broke."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = {}
        self.broken: list[str] = []
        self.probes: list[float] = []
        self.notes: dict[str, list[Any]] = {}

    def add(self, figure: str, who: str, value: float) -> None:
        self.values.setdefault(figure, {}).setdefault(who, []).append(value)

    def get(self, figure: str, who: str) -> list[float]:
        return self.values.get(figure, {}).get(who, [])

    def med(self, figure: str, who: str) -> float:
        xs = self.get(figure, who)
        return median(xs) if xs else float("nan")


async def attempt(
    res: Results, what: str, profiler: cProfile.Profile | None, fn: Callable[[], Awaitable[Any]]
) -> Any:
    """Run one measurement; on failure log it, note it as broken and return None."""
    try:
        if profiler is not None:
            profiler.enable()
        try:
            return await fn()
        finally:
            if profiler is not None:
                profiler.disable()
    except Exception:
        log(f"  {what} broke:\n{traceback.format_exc()}")
        res.broken.append(what)
        return None


async def run_round(
    cfg: Config,
    r: int,
    race: Race,
    contestants: Mapping[str, Contestant],
    res: Results,
    profiler: cProfile.Profile | None,
) -> None:
    names = [*MAIN[r % 3 :], *MAIN[: r % 3], *race.extras]  # informational last
    n = cfg.events
    chunks = [[event(i) for i in range(s, min(s + CHUNK, n))] for s in range(0, n, CHUNK)]
    log(f"round {r + 1}: order {', '.join(names)}")

    async def topic(kind: str, who: str) -> str:
        name = f"{race.prefix}-{kind}-{who.replace('_', '-')}-{r}"
        await race.create_topic(name)
        return name

    for who in names:
        if not race.measures(who, "publish"):
            continue  # e.g. a FastStream subscriber option: the publish side is faststream's
        c = contestants[who]
        t = await topic("pub", who)
        prof = profiler if who == "tidings" else None
        got = await attempt(
            res, f"publish {who} r{r}", prof, functools.partial(measure_publish, c, t, chunks)
        )
        if got is not None:
            res.add("publish", who, got)
            log(f"  publish {who}: {got:,.0f} events/s")
    for figure, groups in (("e2e_one_group", 1), ("e2e_three_groups", 3)):
        for who in names:
            if not race.measures(who, figure):
                continue
            c = contestants[who]
            t = await topic(f"e2e{groups}", who)
            gs = [f"{t}-g{i}" for i in range(groups)]
            prof = profiler if who == "tidings" else None
            got = await attempt(
                res, f"{figure} {who} r{r}", prof, functools.partial(measure_e2e, c, t, chunks, gs)
            )
            if got is not None:
                res.add(figure, who, got)
                log(f"  {figure} {who}: {got:,.0f} events/s per group")
    for who in names:
        if not race.measures(who, "latency"):
            continue
        c = contestants[who]
        t = await topic("lat", who)
        prof = profiler if who == "tidings" else None
        got = await attempt(
            res,
            f"latency {who} r{r}",
            prof,
            functools.partial(
                measure_latency, c, t, cfg.latency_rate, cfg.latency_seconds, cfg.latency_warmup
            ),
        )
        if got is not None:
            lat, worst = got
            res.add("latency_p50", who, percentile(lat, 50))
            res.add("latency_p99", who, percentile(lat, 99))
            res.add("latency_max", who, lat[-1] if lat else float("nan"))
            res.notes.setdefault(f"latency_samples_{who}", []).append(len(lat))
            res.notes.setdefault(f"worst_send_lateness_ms_{who}", []).append(round(worst, 1))
            log(
                f"  latency {who}: p50 {percentile(lat, 50):.1f} ms, "
                f"p99 {percentile(lat, 99):.1f} ms ({len(lat)} events)"
            )
    res.probes.append(round(cpu_probe(), 1))


# -- the figures -------------------------------------------------------------------------


def figures(race: Race, res: Results, common: dict[str, Any], probe_before: float) -> list[Figure]:
    """One figure per measurement and baseline (targets from the issue: throughput at
    least 0.8x raw's, tidings ahead of FastStream on every figure); then the CPU probe."""
    out = []
    for name in (*THROUGHPUT, *LATENCY):
        for base in ("raw", "faststream", *race.extras):
            if not race.measures(base, name):
                continue
            target: tuple[str, str, float] | None = None
            if name in THROUGHPUT and base == "raw":
                target = ("ratio", ">=", 0.8)
            elif name in THROUGHPUT and base == "faststream":
                target = ("ratio", ">=", 1.0)
            elif name in LATENCY and base == "faststream":
                target = ("ratio", "<=", 1.0)
            rounds = {
                f"rounds_{who}": [round(x, 2) for x in res.get(name, who)]
                for who in ("tidings", base)
            }
            out.append(
                Figure(
                    f"{name}_vs_{base}",
                    res.med(name, "tidings"),
                    UNITS[name],
                    res.med(name, base),
                    race.baselines[base],
                    target,
                    {**common, **rounds} if base == "raw" else rounds,
                )
            )
    out.append(
        Figure(
            "cpu_probe",
            probe_before,
            "ns/iteration",
            None,
            "",
            None,
            {"after": round(cpu_probe(), 1), "what": "a fixed pure-Python loop; lower is faster"},
        )
    )
    return out


def contestant_table(race: Race, res: Results) -> str:
    rows = [("figure", "unit", "tidings", "raw", "faststream", "tidings/raw", "tidings/FastStream")]
    for name in (*THROUGHPUT, *LATENCY, "latency_max"):
        ours, raw, fs = (res.med(name, who) for who in MAIN)
        rows.append(
            (name, UNITS[name], fmt(ours), fmt(raw), fmt(fs), _ratio(ours, raw), _ratio(ours, fs))
        )
    for extra, label in race.extras.items():
        for name in THROUGHPUT:
            if not race.measures(extra, name):
                continue
            other = res.med(name, extra)
            ours = res.med(name, "tidings")
            raw_like = extra.startswith("raw")  # in the raw client's columns
            rows.append(
                (f"{name} ({label})", UNITS[name], fmt(ours),
                 fmt(other) if raw_like else "-", "-" if raw_like else fmt(other),
                 _ratio(ours, other) if raw_like else "-",
                 "-" if raw_like else _ratio(ours, other))
            )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return "-" if b != b or a != a or not b else f"{a / b:.2f}"


def print_profile(profiler: cProfile.Profile | None) -> None:
    if profiler is not None:
        log("tidings' measurements, event-loop thread, by own time:")
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def report(
    race: Race,
    figs: Sequence[Figure],
    res: Results,
    heading: Sequence[str],
    load: tuple[float, float],
) -> int:
    """Print the JSON lines, ``heading``, the tables and the verdict; the exit status:
    0 whether targets pass or not, 1 if a measurement broke."""
    for f in figs:
        print(f.as_json(), flush=True)
    print()
    for line in heading:
        print(line)
    busiest = max(load)
    if busiest > (os.cpu_count() or 1) / 2:
        print(
            f"note: the machine was busy (load average up to {busiest}); absolute figures "
            "are pessimistic, ratios less so"
        )
    print()
    print(contestant_table(race, res))
    print()
    print(summary_table(figs))
    missed = [f.bench for f in figs if not f.ok]
    print(f"\ntargets missed: {', '.join(missed)}" if missed else "\nall targets met")
    if res.broken:
        print(f"measurements that broke (see stderr): {', '.join(res.broken)}")
        return 1
    return 0


Measured = tuple[list[Figure], Results, dict[str, Any], Race]


def main(
    prog: str,
    doc: str | None,
    argv: list[str] | None,
    run: Callable[[Config, bool], Coroutine[Any, Any, Measured]],
    heading: Callable[[Config, dict[str, Any], float, tuple[float, float]], list[str]],
) -> int:
    """A benchmark's command line: parse ``--quick`` / ``--profile``, ``run`` it, then
    :func:`report` with the ``heading`` lines (from the config, the versions found, the
    seconds it took and the load average before and after)."""
    import argparse
    import asyncio
    import time

    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--quick", action="store_true", help="5,000 events, one round")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile tidings' measurements (loop thread)"
    )
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    figs, res, info, race = asyncio.run(run(cfg, args.profile))
    elapsed = time.perf_counter() - started
    load = (load_before, round(os.getloadavg()[0], 2))
    return report(race, figs, res, heading(cfg, info, elapsed, load), load)
