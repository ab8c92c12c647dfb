"""Kafka worker start and stop on Tansu at tidings' defaults (issue 17):

- ``first_event_s``: seconds from ``Worker.run`` to the first event handled, on a fresh
  Tansu broker, for a group reading one topic (and, as every group does, its
  ``<group>.retry`` topic); the event was published before the worker started;
- ``stop_s``: seconds from ``Worker.stop`` until ``run`` returned (handlers finished,
  offsets committed, the group left);
- ``first_event_after_kill_s``: the same as ``first_event_s``, on another fresh broker,
  for a worker started right after one that was killed (``os._exit``: no LeaveGroup) once it
  had handled an event: its dead member is still in the group.

    .venv/bin/python bench/fig_kafka_startup.py [--rounds 3] [--before /tmp/tree] [--query Q]

Each measurement runs in child processes of its own, against a Tansu broker started
for it (and stopped by its PID), with the URL's defaults (no ``session_timeout_ms``):
what a user gets; ``--query`` adds URL options (e.g. ``session_timeout_ms=45000``).
With ``--before``, the same children run with that tree's ``tidings`` too (e.g. a
``git worktree`` of an older commit), alternating with this one, so both are measured
in the same run. Also ``python -m bench.bench_kafka --only startup``.
Prints one JSON line per measurement and a summary (medians, ratios) on stdout.
This file imports only ``tidings`` and ``devservers`` (both trees have them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 150.0  # seconds one measurement may take, broker start included
TOPIC, GROUP = "orders", "billing"
QUERY_ENV = "TIDINGS_BENCH_KAFKA_QUERY"  # --query, handed to the children


async def _measure(address: str, mode: str) -> dict[str, float]:
    """``mode``: "stop" (stop gracefully and time it), "die" (exit at once, leaving the
    group without a word), "after" (the first event only, after a worker died)."""
    from tidings import Tidings, Worker

    query = os.environ.get(QUERY_ENV, "")
    app = Tidings(f"kafka://{address}" + (f"?{query}" if query else ""), service="bench-startup")
    handled = asyncio.Event()

    @app.subscriber(TOPIC, group=GROUP)
    async def on_order(event: object) -> None:
        handled.set()

    async with app:
        await app.publish(TOPIC, {"order": 1}, key="k", type="order.placed")
        worker = Worker(app)
        began = time.monotonic()
        run = asyncio.ensure_future(worker.run())
        waiting = asyncio.ensure_future(handled.wait())
        await asyncio.wait(
            [run, waiting], timeout=CHILD_TIMEOUT - 30, return_when=asyncio.FIRST_COMPLETED
        )
        if not handled.is_set():
            run.cancel()
            raise SystemExit("no event handled (or the worker ended) in time")
        first = time.monotonic() - began
        if mode == "die":
            print(json.dumps({}), flush=True)
            os._exit(0)  # no close, no LeaveGroup: as a worker killed by SIGKILL
        if mode == "after":
            return {"first_event_after_kill_s": first}
        stopping = time.monotonic()
        worker.stop()
        await asyncio.wait_for(run, 60)
        return {"first_event_s": first, "stop_s": time.monotonic() - stopping}


def child(address: str, mode: str) -> None:
    print(json.dumps(asyncio.run(_measure(address, mode))))


def _run_child(tree: Path, address: str, mode: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", address, mode],
        env=env, cwd=tree, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"measurement in {tree} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(tree: Path) -> dict[str, Any]:
    """The three figures of ``tree``'s tidings, on fresh brokers of their own."""
    from devservers.tansu import run_tansu, tansu_binary

    with run_tansu(tansu_binary()) as address:
        figures = _run_child(tree, address, "stop")
    with run_tansu(tansu_binary()) as address:  # the stop above may leave it rebalancing
        _run_child(tree, address, "die")
        try:
            figures.update(_run_child(tree, address, "after"))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # the worker never got going
            figures["first_event_after_kill_s"] = None
            figures["failed_after_kill"] = str(exc).splitlines()[0][:300]
    return figures


def _medians(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each figure's median over the rounds; None where a round failed."""
    out: dict[str, float | None] = {}
    for k in ("first_event_s", "stop_s", "first_event_after_kill_s"):
        xs = [f.get(k) for f in rows]
        out[k] = (
            round(statistics.median(x for x in xs if x is not None), 2) if None not in xs else None
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a tree whose tidings to measure too")
    parser.add_argument("--query", default="", help="URL options, e.g. session_timeout_ms=45000")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.query:
        os.environ[QUERY_ENV] = args.query
    if args.child:
        child(*args.child)
        return 0
    trees = {"after": HERE} | ({"before": args.before.resolve()} if args.before else {})
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    for r in range(max(1, args.rounds)):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            figures = measure(trees[name])
            seen[name].append(figures)
            print(json.dumps({"round": r, "tree": name, **figures}), flush=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    summary = {name: _medians(rows) for name, rows in seen.items()}
    if "before" in summary:
        after, before = summary["after"], summary["before"]
        summary["after/before"] = {
            k: round(v / b, 3) if v and (b := before.get(k)) else None for k, v in after.items()
        }
    print(json.dumps({"median": summary}))
    return 0


if __name__ == "__main__":
    if "--child" not in sys.argv:
        sys.path.insert(0, str(HERE))
    sys.exit(main())
