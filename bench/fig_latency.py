"""Figure 4: publish -> handler latency across processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench._common import (
    PARTITIONS,
    ROOT,
    TOPIC,
    Deadline,
    Figure,
    log,
    percentile,
    raw_connect,
)
from bench._gcwatch import GCWatch
from bench._setup import Config, Workdir, encoded_events, new_app, sqlite_url

# -- figure 4: cross-process latency ---------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TIDINGS_LOG_LEVEL"] = "WARNING"
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _read_latencies(path: str) -> tuple[list[float], int]:
    """Latencies in ms of the measured (non-warm-up) lines, sorted; and the line count."""
    out, lines = [], 0
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        for line in f:
            sent, received, warmup = map(int, line.split())
            lines += 1
            if not warmup:
                out.append((received - sent) / 1e6)
    return sorted(out), lines


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


async def _paced(total: int, rate: int, send: Callable[[int], Coroutine[Any, Any, None]]) -> float:
    """Start ``send(i)`` for i in 0..total-1 at ``rate`` per second (open loop: a slow
    send does not delay the next). Returns the worst lateness against the schedule, s."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    worst = 0.0
    begin = loop.time() + 0.01
    for i in range(total):
        delay = begin + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            worst = max(worst, -delay)
        task = loop.create_task(send(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait_for(asyncio.gather(*pending), 60)
    return worst


def _start_worker(url: str, out: str, log_path: str) -> subprocess.Popen[bytes]:
    """``python -m tidings run bench._latency_app:app`` on the log at ``url``."""
    with open(log_path, "wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "tidings", "run", "bench._latency_app:app", "--url", url],
            cwd=ROOT,
            env=_child_env() | {"BENCH_LATENCY_OUT": out},
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )


async def tidings_latency(d: str, cfg: Config) -> tuple[list[float], dict[str, Any]]:
    db, out = os.path.join(d, "events.db"), os.path.join(d, "latency.txt")
    url = sqlite_url(db, cfg.synchronous)
    total = cfg.latency_warmup + int(cfg.latency_rate * cfg.latency_seconds)
    note = "x" * 240
    async with new_app(db, cfg.synchronous, service="bench-latency-publisher") as app:
        proc = _start_worker(url, out, os.path.join(d, "worker.log"))
        try:
            # Ready when the worker's member holds every partition of the topic (the
            # group also reads its retry topic: those partitions do not count).
            for _ in range(600):  # 30 s
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited ({proc.returncode}); see worker.log")
                infos = [g for g in await app.transport.groups() if g.group == "latency"]
                held = [tp for m in infos[0].members for tp in m.partitions] if infos else []
                if sum(topic == TOPIC for topic, _ in held) == PARTITIONS:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the latency worker did not join its group in 30 s")

            acks: list[float] = []  # publish -> publish returned (durable), ms

            async def send(i: int) -> None:
                sent = time.time_ns()
                warmup = int(i < cfg.latency_warmup)
                data: dict[str, Any] = {"sent_ns": sent, "warmup": warmup, "seq": i, "note": note}
                await app.publish(TOPIC, data, type="bench.probed", subject=f"key-{i % 64}")
                if i >= cfg.latency_warmup:
                    acks.append((time.time_ns() - sent) / 1e6)

            with GCWatch() as publisher_gc:
                worst = await _paced(total, cfg.latency_rate, send)
            for _ in range(600):  # up to 30 s for the last events to arrive
                if _count_lines(out) >= total:
                    break
                await asyncio.sleep(0.05)
        finally:
            _stop(proc)
    latencies, lines = _read_latencies(out)
    acks.sort()
    return latencies, {
        "received": lines,
        "sent": total,
        "worst_send_lateness_ms": round(worst * 1e3, 2),
        "publish_ack_ms": _spread(acks),
        "publisher_gc": publisher_gc.summary(),
        "worker_full_gc_ms": _worker_gc(out + ".gc"),
    }


def _worker_gc(path: str) -> list[float]:
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        return [round(float(line), 2) for line in f if line.strip()]
    return []


def _spread(sorted_ms: list[float]) -> dict[str, float]:
    return {
        name: round(percentile(sorted_ms, q), 3)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }


def raw_latency(d: str, cfg: Config) -> tuple[list[float], dict[str, Any]]:
    """Raw sqlite3 across processes: this process inserts one row per transaction at the
    same rate; a child polls for new rows every millisecond (``bench/_rawpoll.py``)."""
    db, out = os.path.join(d, "raw.db"), os.path.join(d, "raw.txt")
    total = cfg.latency_warmup + int(cfg.latency_rate * cfg.latency_seconds)
    value = encoded_events(1)[0]
    conn = raw_connect(db, cfg.synchronous)
    conn.execute(
        "CREATE TABLE q (id INTEGER PRIMARY KEY, sent_ns INTEGER NOT NULL,"
        " warmup INTEGER NOT NULL, value BLOB NOT NULL)"
    )
    budget = cfg.latency_seconds + cfg.latency_warmup / cfg.latency_rate + 30
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._rawpoll", db, out, str(total), str(budget)],
        cwd=ROOT,
        env=_child_env(),
    )
    worst = 0.0
    acks: list[float] = []  # insert -> commit returned, ms
    try:
        deadline = Deadline(30)
        while not os.path.exists(out + ".ready") and not deadline.over():
            time.sleep(0.01)
        begin = time.monotonic() + 0.01
        for i in range(total):
            delay = begin + i / cfg.latency_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                worst = max(worst, -delay)
            sent = time.time_ns()
            conn.execute(
                "INSERT INTO q(sent_ns, warmup, value) VALUES (?,?,?)",
                (sent, int(i < cfg.latency_warmup), value),
            )
            if i >= cfg.latency_warmup:
                acks.append((time.time_ns() - sent) / 1e6)
        proc.wait(30)
    finally:
        _stop(proc)
        conn.close()
    latencies, lines = _read_latencies(out)
    acks.sort()
    return latencies, {
        "received": lines,
        "sent": total,
        "worst_send_lateness_ms": round(worst * 1e3, 2),
        "insert_ack_ms": _spread(acks),
    }


async def fig_latency(cfg: Config, work: Workdir) -> list[Figure]:
    with work.folder("latency-raw") as d:
        raw, raw_info = await asyncio.to_thread(raw_latency, d, cfg)
    with work.folder("latency-tidings") as d:
        ours, info = await tidings_latency(d, cfg)
    if not ours or not raw:
        raise RuntimeError(f"no latencies measured: tidings {info}, raw {raw_info}")
    detail = {
        "rate": cfg.latency_rate,
        "seconds": cfg.latency_seconds,
        "synchronous": cfg.synchronous,
        "tidings": info,
        "raw": raw_info,
        "worker": "python -m tidings run (a separate process)",
    }
    figures = []
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)):
        figures.append(
            Figure(
                f"latency_{name}_cross_process",
                percentile(ours, q),
                "ms",
                percentile(raw, q),
                "raw sqlite3, 1 row per transaction, 1 ms poll in another process",
                ("value", "<=", 10.0) if name == "p99" else None,
                detail if name == "p99" else {},
            )
        )
    log(
        f"  tidings p50/p99/max {percentile(ours, 50):.2f}/{percentile(ours, 99):.2f}/"
        f"{ours[-1]:.2f} ms; raw {percentile(raw, 50):.2f}/{percentile(raw, 99):.2f}/"
        f"{raw[-1]:.2f} ms"
    )
    return figures
