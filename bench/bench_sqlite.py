"""Benchmarks of the embedded SQLite log, each figure against a baseline measured in
the same run.

    .venv/bin/python -m bench.bench_sqlite [--quick] [--only NAME[,NAME...]] [--profile]

Prints one JSON line per figure on stdout, then a summary table. Progress goes to
stderr. It reports; it never fails a build (exit status 0 whether targets pass or
not, 1 only if a benchmark itself broke). What each figure measures, and why, is in
``docs/benchmarks.md``.

Every loop is bounded by a count and by a deadline; every child process is stopped
by its PID. The SQLite files live in a fresh temporary folder on the real disk
(``--dir`` to choose where), removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bench._common import (
    Figure,
    cpu_probe,
    log,
    summary_table,
)
from bench._setup import Config, Workdir
from bench.fig_codec import fig_codec
from bench.fig_e2e import fig_end_to_end, fig_litequeue
from bench.fig_inbox import fig_inbox
from bench.fig_latency import fig_latency
from bench.fig_outbox import fig_outbox
from bench.fig_personal import fig_personal
from bench.fig_publish import (
    fig_publish_batched,
    fig_publish_concurrent,
    fig_publish_one_partition,
)
from bench.fig_tracing import fig_tracing

# -- the run ---------------------------------------------------------------------------

BENCHES: dict[str, Callable[[Config, Workdir], Awaitable[list[Figure]]]] = {
    "publish_many": fig_publish_batched,
    "publish_concurrent": fig_publish_concurrent,
    "publish_one_partition": fig_publish_one_partition,
    "e2e": fig_end_to_end,
    "litequeue": fig_litequeue,
    "latency": fig_latency,
    "codec": fig_codec,
    "inbox": fig_inbox,
    "outbox": fig_outbox,
    "tracing": fig_tracing,
    "personal": fig_personal,
}


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "orjson": getattr(orjson, "__version__", "?"),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


async def run(
    cfg: Config, names: list[str], root: str, profile: bool
) -> tuple[list[Figure], list[str]]:
    work = Workdir(root)
    probe_before = cpu_probe()
    figures: list[Figure] = []
    broken = []
    for name in names:
        log(f"{name} ...")
        profiler = cProfile.Profile() if profile else None
        try:
            if profiler:
                profiler.enable()
            got = await BENCHES[name](cfg, work)
        except Exception:
            log(f"  {name} broke:\n{traceback.format_exc()}")
            broken.append(name)
            continue
        finally:
            if profiler:
                profiler.disable()
                stats = pstats.Stats(profiler, stream=sys.stderr)
                stats.sort_stats("tottime").print_stats(20)
        for figure in got:
            print(figure.as_json(), flush=True)
        figures.extend(got)
    probe = Figure(
        "cpu_probe",
        probe_before,
        "ns/iteration",
        None,
        "",
        None,
        {"after": round(cpu_probe(), 1), "what": "a fixed pure-Python loop; lower is faster"},
    )
    print(probe.as_json(), flush=True)
    figures.append(probe)
    return figures, broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sqlite", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, one round")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}"
    )
    parser.add_argument(
        "--synchronous", default="FULL", choices=["FULL", "NORMAL"], help="for the log files"
    )
    parser.add_argument("--dir", default=None, help="where the temporary SQLite files go")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile each benchmark (main thread) to stderr"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    cfg = Config.make(args.quick, args.synchronous)
    info = machine()
    log(f"machine: {json.dumps(info)}; {'quick' if cfg.quick else 'full'} run")
    root = tempfile.mkdtemp(prefix="tidings-bench-", dir=args.dir)
    started = time.perf_counter()
    try:
        figures, broken = asyncio.run(run(cfg, names, root, args.profile))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = round(os.getloadavg()[0], 2)
    print()
    print(
        f"tidings SQLite benchmarks ({'quick' if cfg.quick else 'full'} run, {elapsed:.0f} s): "
        f"{info['nproc']} CPUs, Python {info['python']}, SQLite {info['sqlite']}, "
        f"synchronous={cfg.synchronous}; load average {info['loadavg_1min']} before, "
        f"{load_after} after"
    )
    busiest = max(info["loadavg_1min"], load_after)
    if busiest > (info["nproc"] or 1) / 2:
        print(
            f"note: the machine was busy (load average up to {busiest} on {info['nproc']} CPUs);"
            " absolute figures are pessimistic, ratios less so"
        )
    print(summary_table(figures))
    missed = [f.bench for f in figures if not f.ok]
    print(f"\ntargets missed: {', '.join(missed)}" if missed else "\nall targets met")
    if broken:
        print(f"benchmarks that broke (see stderr): {', '.join(broken)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
