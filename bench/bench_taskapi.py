"""The reference system under load: the Task API's cost of the outbox, and the time
from ``POST /tasks`` to each service's effect.

    .venv/bin/python -m bench.bench_taskapi [--quick] [--seconds S] [--rate R]

1. **Creation throughput with the outbox**: requests/s of ``POST /tasks`` against an
   API that writes the task and its ``task.created`` event in one transaction, with
   its relay moving events to the log; the baseline, in the same run, is the very
   same endpoint started with ``--no-events`` (the task only). Closed loop, a fixed
   number of concurrent clients, rounds alternating between the two. Target: the
   outbox costs at most 30% (ratio >= 0.70).
2. **Time to each effect** at a steady rate (open loop, 100 requests/s by default),
   with the whole system running (sinks, API, relay, five services), all on the
   embedded SQLite log: email (the SMTP sink received the mail), slack (the webhook
   receiver got the post), audit (the line's ``audited_at``), reminders (the timer
   row's ``scheduled_at``) for ``POST /tasks``; push reacts to assignment, not
   creation, so one request in ten is followed by a ``PATCH`` that assigns the task,
   and push is timed from that request. Target: p99 to the audit line <= 100 ms.

All processes run on this machine, the load generator included: the figures are for
the machine as a whole. Prints one JSON line per figure, then a summary table.
Every loop is bounded by a count and a deadline; processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import Figure, cpu_probe, log, median, percentile, summary_table
from taskapi.effects import Effects
from taskapi.system import System

CORRELATION = "X-Correlation-ID"
CLIENTS = 16  # concurrent requests in the throughput figure
WARM_UP = 1.0  # seconds of requests before a throughput round is timed
MAX_REQUESTS = 200_000  # a bound on any load loop
SERVICES = ("email", "slack", "audit", "reminders")  # the effects of POST /tasks


def _task(i: int) -> dict[str, Any]:
    due = datetime.now(UTC) + timedelta(days=1)  # a reminder is set, and stays pending
    return {"title": f"Benchmark task {i}", "assignee": "alice", "due": due.isoformat()}


def _session() -> aiohttp.ClientSession:
    # aiohttp: a sixth of httpx's CPU per request (docs/decisions/0006), and the load
    # generator shares the machine with what it measures.
    connector = aiohttp.TCPConnector(limit=CLIENTS * 4)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def _post(http: aiohttp.ClientSession, url: str, body: Any, **headers: str) -> Any:
    async with http.post(url, json=body, headers=headers) as response:
        if response.status != 201:
            raise RuntimeError(f"POST {url} answered {response.status}: {await response.text()}")
        return await response.json()


async def _closed_loop(api: str, seconds: float) -> float:
    """CLIENTS concurrent clients creating tasks for ``seconds``; requests per second."""
    done = 0
    stop_at = time.monotonic() + WARM_UP
    async with _session() as http:

        async def client(c: int) -> None:
            nonlocal done
            i = c
            while time.monotonic() < stop_at and done < MAX_REQUESTS:
                await _post(http, f"{api}/tasks", _task(i))
                done += 1
                i += CLIENTS

        await asyncio.gather(*(client(c) for c in range(3)))  # warm up for WARM_UP seconds
        done = 0
        start = time.monotonic()
        stop_at = start + seconds
        await asyncio.gather(*(client(c) for c in range(CLIENTS)))
        return done / (time.monotonic() - start)


def throughput(folder: Path, seconds: float, rounds: int) -> Figure:
    results: dict[str, list[float]] = {"baseline": [], "outbox": []}
    for r in range(rounds):
        for mode in ("baseline", "outbox"):
            system = System(folder / f"{mode}-{r}")
            try:
                system.start_api(*(["--no-events"] if mode == "baseline" else []))
                rate = asyncio.run(_closed_loop(system.api_url, seconds))
            finally:
                system.stop_all()
            results[mode].append(rate)
            log(f"  round {r + 1}: {mode:<8} {rate:,.0f} requests/s")
    return Figure(
        "taskapi_create_outbox",
        median(results["outbox"]),
        "requests/s",
        baseline=median(results["baseline"]),
        baseline_name="same endpoint without events",
        target=("ratio", ">=", 0.70),
        detail={"rounds": results, "clients": CLIENTS, "seconds": seconds},
    )


async def _open_loop(api: str, rate: float, seconds: float) -> dict[str, float]:
    """Send at ``rate``/s for ``seconds``; the send time of each correlation id."""
    sent: dict[str, float] = {}
    count = min(int(rate * seconds), MAX_REQUESTS)
    failures: list[str] = []
    async with _session() as http:

        async def one(i: int) -> None:
            correlation = f"bench-{i}"
            sent[correlation] = time.time()
            try:
                task = await _post(http, f"{api}/tasks", _task(i), **{CORRELATION: correlation})
            except (RuntimeError, aiohttp.ClientError) as exc:
                failures.append(str(exc))
                return
            if i % 10 == 0:
                assign = f"bench-assign-{i}"
                sent[assign] = time.time()
                headers = {CORRELATION: assign}
                url = f"{api}/tasks/{task['id']}"
                async with http.patch(url, json={"assignee": "bob"}, headers=headers) as response:
                    if response.status != 200:
                        failures.append(f"PATCH {response.status}")

        start = time.monotonic()
        tasks = []
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        achieved = count / (time.monotonic() - start)
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[:3]}")
    log(f"  sent {count} creations at {achieved:.1f}/s (asked {rate:g}/s)")
    return sent


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(folder: Path, rate: float, seconds: float) -> list[Figure]:
    data = folder / "system"
    data.mkdir(parents=True)
    (data / "devices.json").write_text(json.dumps({"bob": "dev-bob"}))
    system = System(data)
    try:
        system.start_all()
        effects = Effects(system.settings)
        sent = asyncio.run(_open_loop(system.api_url, rate, seconds))
        creations = [c for c in sent if not c.startswith("bench-assign")]
        assigns = [c for c in sent if c.startswith("bench-assign")]
        want = {(s, c) for s in SERVICES for c in creations} | {("push", c) for c in assigns}
        deadline = time.monotonic() + 120
        firsts: dict[tuple[str, str], float] = {}
        while len(firsts) < len(want) and time.monotonic() < deadline:
            for e in effects.poll():
                key = (e.service, e.correlation_id or "")
                if e.ok and key in want:
                    firsts.setdefault(key, e.at)
            time.sleep(0.1)
        log("  CPU seconds per process: " + ", ".join(
            f"{name} {_cpu_seconds(part.process.pid):.1f}"
            for name, part in system.parts.items() if part.process is not None
        ) + f", load generator {time.process_time():.1f}")  # fmt: skip
    finally:
        system.stop_all()
    figures = []
    for service, ids in [*((s, creations) for s in SERVICES), ("push", assigns)]:
        ms = sorted((firsts[(service, c)] - sent[c]) * 1000 for c in ids if (service, c) in firsts)
        missing = len(ids) - len(ms)
        figures.append(
            Figure(
                f"taskapi_p99_to_{service}",
                percentile(ms, 99),
                "ms",
                target=("value", "<=", 100.0) if service == "audit" else None,
                detail={
                    "p50_ms": round(percentile(ms, 50), 1),
                    "p99_ms": round(percentile(ms, 99), 1),
                    "max_ms": round(ms[-1], 1) if ms else None,
                    "samples": len(ms),
                    "missing": missing,
                    "rate": rate,
                },
            )
        )
        log(
            f"  {service:<9} p50 {percentile(ms, 50):7.1f} ms  p99 {percentile(ms, 99):7.1f} ms"
            f"  ({len(ms)} effects{f', {missing} MISSING' if missing else ''})"
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_taskapi", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, one round")
    parser.add_argument("--seconds", type=float, help="per throughput round / latency run")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s (%(default)s)")
    parser.add_argument("--only", choices=("throughput", "latency"), help="one figure only")
    parser.add_argument("--keep", action="store_true", help="keep the data folders (logs)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    folder = Path(tempfile.mkdtemp(prefix="tidings-bench-taskapi-"))
    try:
        log(f"cpu probe: {cpu_probe():.0f} ns")
        figures = []
        if args.only in (None, "throughput"):
            log("creation throughput, outbox against no events:")
            figures.append(throughput(folder, seconds, 1 if args.quick else 3))
        if args.only in (None, "latency"):
            log(f"time to each effect at {args.rate:g} requests/s:")
            figures += latency(folder, args.rate, seconds * 2.5)
    finally:
        if args.keep:
            log(f"data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    for f in figures:
        print(f.as_json())
    print(summary_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
