"""The soak of issue 15 on the SQLite log: three groups of two worker processes each,
a random worker SIGKILLed (and replaced) every 0.5 s while 20,000 events of 50 keys
flow, then a forced reset of one group to the earliest offset while events still flow.

Checked from the workers' record files: every group handled every event, per-key order
held in every group (an event was handled only after every earlier event of its key),
and the reset group handled everything published before the reset again. Duplicates
are counted and printed, not forbidden: a SIGKILLed worker's handled but uncommitted
events are handled again by design (at-least-once).

``TIDINGS_SOAK_SECONDS`` sets how long the kills go on (20 by default; the issue's
figure, 60, is what docs/reliability.md reports).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable

import pytest

from tests.transports.test_sqlite_processes import Cluster, Keys, cluster
from tests.transports.worker_processes import ROOT, Line, until

pytestmark = pytest.mark.integration

GROUPS = ("g1", "g2", "g3")
RESET_GROUP = "g1"
EVENTS = 20_000
KEYS = 50
KILL_EVERY = 0.5
SECONDS = float(os.environ.get("TIDINGS_SOAK_SECONDS", "20"))

__all__ = ["cluster"]  # the fixture, used below


async def steady(cluster: Cluster, keys: Keys, stop: asyncio.Event, seconds: float) -> list[str]:
    """Publish EVENTS events in batches of 50, spread evenly over ``seconds``."""
    ids: list[str] = []
    started = time.monotonic()
    step = seconds / (EVENTS / 50)
    while len(ids) < EVENTS and not stop.is_set():
        ids += await cluster.publish(keys.take(50))
        await asyncio.sleep(max(0.0, started + step * len(ids) / 50 - time.monotonic()))
    return ids


def order_violations(lines: Iterable[Line]) -> list[str]:
    """Handlings of an event before an earlier event of its key had been handled,
    per group, in the order the handlers finished (monotonic time, one machine)."""
    out = []
    done: dict[tuple[str, str], set[int]] = defaultdict(set)
    prefix: Counter[tuple[str, str]] = Counter()  # first seq not yet handled, per key
    for line in sorted(lines, key=lambda x: x.t):
        slot = (line.group, line.key)
        if line.seq > prefix[slot]:
            out.append(f"{line.group} handled {line.key}#{line.seq} before #{prefix[slot]}")
        done[slot].add(line.seq)
        while prefix[slot] in done[slot]:
            prefix[slot] += 1
    return out


@pytest.mark.parametrize("cluster", [{"lease": 2.0}], indirect=True)
async def test_soak_kills_and_a_forced_reset_lose_nothing_and_keep_key_order(
    cluster: Cluster,
) -> None:
    rng = random.Random(15)
    workers: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}

    def start(group: str) -> None:
        proc = cluster.start(group, groups=",".join(GROUPS), sleep="~0.002", slow_share=0.2)
        workers[proc.pid] = (group, proc)

    for group in GROUPS:
        start(group)
        start(group)
    stop = asyncio.Event()
    publisher = asyncio.create_task(steady(cluster, Keys(KEYS), stop, SECONDS + 3))
    kills = 0
    try:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(KILL_EVERY)
            pid = rng.choice(sorted(workers))
            group, proc = workers.pop(pid)
            cluster.send(proc, signal.SIGKILL)
            kills += 1
            start(group)
        # The forced reset, with the group's workers alive and events flowing.
        reset = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidings", "offsets", "reset", RESET_GROUP,
            "--to", "earliest", "--topic", "proc-events", "--force", "--url", cluster.url,
            cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        _, err = await asyncio.wait_for(reset.communicate(), 60)
        assert reset.returncode == 0, err.decode()
        reset_at = time.monotonic_ns()
        assert not publisher.done(), "the events stopped flowing before the reset"
        ids = await publisher  # the rest of the 20,000, after the reset
    finally:
        stop.set()
        ids = await publisher
    published = set(ids)
    for group in GROUPS:
        await until(
            cluster,
            f"group {group} caught up",
            lambda group=group: cluster.caught_up(group, len(ids)),
            timeout=180,
        )
    lines = cluster.lines()
    before = {x.id for x in lines if x.t < reset_at} & published
    replayed = {x.id for x in lines if x.group == RESET_GROUP and x.t > reset_at}
    missing = before - replayed
    assert not missing, f"the reset group did not handle {len(missing)} events again"
    report = []
    for group in GROUPS:
        handled = Counter(x.id for x in lines if x.group == group)
        lost = published - set(handled)
        assert not lost, f"group {group}: {len(lost)} of {len(published)} events never handled"
        again = sum(handled.values()) - len(handled)
        if group == RESET_GROUP:  # the replay asked for
            again -= len({x.id for x in lines if x.group == group and x.t < reset_at} & replayed)
        report.append(f"{group} {again}")
    violations = order_violations(lines)
    assert not violations, f"{len(violations)} out of order, first: {violations[:5]}"
    print(
        f"\nsoak: {SECONDS:.0f}s, {kills} SIGKILLs, {len(ids)} events, 0 lost, 0 out of "
        f"order; {len(before)} replayed by {RESET_GROUP} after the reset; handled twice "
        "beyond that: " + ", ".join(report)
    )
