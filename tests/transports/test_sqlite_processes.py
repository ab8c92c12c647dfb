"""The embedded SQLite log shared by real worker processes.

Each test runs ``python -m tidings run tests.transports.apps.recorder:app`` processes
on one SQLite file under ``tmp_path``, publishes from the test process, and then
compares two records: what each process handled (one line per event, written
unbuffered before the handler returns, see ``apps/recorder.py``) and what the log
itself says (``transport.groups()``: members, leases, committed offsets, lag).

Every wait polls against a deadline, and every process is stopped by its PID when
the test ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import pytest

from tests.transports.worker_processes import Keys, Line, WorkerProcesses, by_partition, until
from tidings import Tidings
from tidings.partitioning import partition_for
from tidings.transport import GroupInfo

pytestmark = pytest.mark.integration

TOPIC = "proc-events"  # apps/recorder.py subscribes to it
PARTITIONS = 8
LEASE = 2.0  # seconds; members heartbeat every LEASE / 3
COMMIT_INTERVAL = 0.05  # the worker's default
DEADLINE = 60.0


class Cluster(WorkerProcesses):
    """Worker processes on one SQLite log, and a publisher in the test process."""

    deadline = DEADLINE

    def __init__(self, tmp_path: Path, lease: float = LEASE) -> None:
        db = tmp_path / "events.db"
        super().__init__(tmp_path, f"sqlite:///{db}?lease={lease:g}&partitions={PARTITIONS}")
        self.app = Tidings(self.url, service="proc-test")

    # -- processes --------------------------------------------------------------

    def start(
        self,
        group: str | None = None,
        *,
        groups: str = "g1",
        sleep: str = "0",
        slow_share: float = 1.0,
        sync: bool = False,
    ) -> subprocess.Popen[bytes]:
        env = {
            "RECORDER_GROUPS": groups,
            "RECORDER_SLEEP": sleep,
            "RECORDER_SLOW_SHARE": str(slow_share),
            "RECORDER_SYNC": "1" if sync else "0",
        }
        return self.spawn(env, ["--group", group] if group is not None else [])

    # -- the log and the records ------------------------------------------------

    async def publish(self, items: Iterable[tuple[str, int]]) -> list[str]:
        events = [
            self.app.build({"key": key, "seq": seq}, type="test.happened", subject=key)
            for key, seq in items
        ]
        await self.app.publish_events(TOPIC, events)
        return [e.id for e in events]

    async def group(self, name: str) -> GroupInfo | None:
        return next((g for g in await self.app.transport.groups() if g.group == name), None)

    async def owners(self, name: str) -> dict[int, set[int]]:
        """pid -> partitions it holds a live lease on."""
        info = await self.group(name)
        if info is None:
            return {}
        return {m.pid: {p for _, p in m.partitions} for m in info.members}

    async def balanced(self, name: str, procs: list[subprocess.Popen[bytes]]) -> bool:
        owned = await self.owners(name)
        share = math.ceil(PARTITIONS / len(procs))
        return (
            set(owned) == {p.pid for p in procs}
            and sum(map(len, owned.values())) == PARTITIONS
            and all(len(parts) <= share for parts in owned.values())
        )

    async def caught_up(self, name: str, events: int) -> bool:
        info = await self.group(name)
        return (
            info is not None
            and sum(p.end for p in info.partitions) == events
            and info.lag == 0
            and all(p.committed is not None for p in info.partitions)
        )

    async def committed(self, name: str) -> dict[int, int]:
        info = await self.group(name)
        assert info is not None
        return {p.partition: p.committed or 0 for p in info.partitions}

    def begun(self) -> Counter[str]:
        """How many times each event id was begun, in any process."""
        return Counter(line.id for line in self.lines("begin"))


async def stream(
    cluster: Cluster, keys: Keys, stop: asyncio.Event, limit: int, pause: float = 0.02
) -> list[str]:
    """Publish batches of 50 at a steady pace until ``stop`` is set (or ``limit`` events)."""
    ids: list[str] = []
    while not stop.is_set() and len(ids) < limit:
        ids += await cluster.publish(keys.take(50))
        await asyncio.sleep(pause)
    return ids


def offsets(lines: Iterable[Line]) -> list[int]:
    return sorted(line.offset for line in lines)


def key_in(partition: int) -> str:
    """A key that lands in ``partition``."""
    return next(
        key
        for key in (f"key-{i}" for i in range(10_000))
        if partition_for(key, PARTITIONS) == partition
    )


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path):
    c = Cluster(tmp_path, **getattr(request, "param", {}))
    await c.app.start()
    await c.app.transport.create_topic(TOPIC, PARTITIONS)
    try:
        yield c
    finally:
        c.shutdown()
        await c.app.close()


# -- the tests -------------------------------------------------------------------


async def test_two_workers_handle_each_of_10000_events_exactly_once(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()
    await until(
        cluster, "two members with 4 partitions each", lambda: cluster.balanced("g1", [a, b])
    )
    keys = Keys(500)
    ids = []
    for _ in range(20):
        ids += await cluster.publish(keys.take(500))
    await until(cluster, "lag 0", lambda: cluster.caught_up("g1", 10_000))
    await until(cluster, "10,000 lines", lambda: len(cluster.lines()) >= 10_000)

    lines = cluster.lines()
    counts = Counter(line.id for line in lines)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:10]
    per_pid = Counter(line.pid for line in lines)
    print(f"\nhandled per process: {dict(per_pid)}")
    assert set(per_pid) == {a.pid, b.pid}
    parts = {pid: {line.partition for line in lines if line.pid == pid} for pid in per_pid}
    assert not parts[a.pid] & parts[b.pid], "a partition was handled by both processes"
    assert await cluster.committed("g1") == {p: len(ls) for p, ls in by_partition(lines).items()}


async def test_killed_worker_partitions_move_to_survivor_and_nothing_is_lost(
    cluster: Cluster,
) -> None:
    # Half the victim's handlers take 100 ms (two commit intervals), so that it is
    # killed in the middle of some (they must not count as done); the other half are
    # quick, so that it has handled some it has not committed yet (duplicates). The
    # survivor is quick, to catch up.
    a, b = cluster.start(sleep="0.1", slow_share=0.5), cluster.start()
    await until(
        cluster, "two members with 4 partitions each", lambda: cluster.balanced("g1", [a, b])
    )
    stop = asyncio.Event()
    publisher = asyncio.create_task(stream(cluster, Keys(500), stop, limit=20_000, pause=0.04))
    try:
        # About 2.5 s of work, so that "handled in its last moments" means something.
        await until(cluster, "the victim at work", lambda: cluster.handled_by(a) >= 200)
        victim = (await cluster.owners("g1"))[a.pid]
        killed_at = time.monotonic_ns()
        cluster.send(a, signal.SIGKILL)
        takeover = await until(
            cluster,
            "the survivor holding every partition",
            lambda: _owns_all(cluster, b),
            timeout=LEASE * 5,
        )
        await asyncio.sleep(1.0)  # the survivor works on the victim's partitions a while
    finally:
        stop.set()
        ids = await publisher
    assert await cluster.wait_exit(a) == -signal.SIGKILL
    await until(cluster, "lag 0", lambda: cluster.caught_up("g1", len(ids)))

    lines = cluster.lines()
    counts = Counter(line.id for line in lines)
    assert set(counts) == set(ids), f"{len(set(ids) - set(counts))} events lost"
    cut_off = {x.id for x in cluster.lines("begin") if x.pid == a.pid} - {
        x.id for x in lines if x.pid == a.pid
    }
    assert cut_off, "the victim was not killed in the middle of a handler"
    duplicated = {i for i, n in counts.items() if n > 1}
    assert max(counts.values()) <= 2
    # Each event at most once per process: a duplicate is one handling by the victim
    # and one by the survivor.
    assert all(n == 1 for n in Counter((line.id, line.pid) for line in lines).values())

    # Per partition: the victim handled 0..h-1, the survivor resumed at the victim's
    # last committed offset r <= h (nothing skipped) and went on to the end. The
    # duplicates are exactly the victim's r..h-1: what it handled but had not yet
    # committed. The worker commits every COMMIT_INTERVAL, so they can only be from
    # the victim's last moments: we allow 1 s (20 commit intervals, for a commit held
    # up by the write lock) of the victim's 2.5 s of work. Not max_in_flight: an event
    # leaves "in flight" when handled, before its commit, and an event fetched but not
    # handled is never a duplicate.
    info = await cluster.group("g1")
    assert info is not None
    ends = {p.partition: p.end for p in info.partitions}
    dup_per_partition = {}
    for part, plines in by_partition(lines).items():
        mine = offsets(x for x in plines if x.pid == a.pid)
        theirs = offsets(x for x in plines if x.pid == b.pid)
        if part not in victim:
            assert not mine, part
            assert theirs == list(range(ends[part])), part
            continue
        assert mine == list(range(len(mine))), part
        resumed = theirs[0] if theirs else ends[part]
        assert resumed <= len(mine), f"partition {part}: offsets {len(mine)}..{resumed} lost"
        assert theirs == list(range(resumed, ends[part])), part
        dup_per_partition[part] = len(mine) - resumed
        late = [x for x in plines if x.pid == a.pid and x.offset >= resumed]
        window = 20 * COMMIT_INTERVAL * 1e9
        assert all(x.t >= killed_at - window for x in late), f"partition {part} resumed early"
    assert sum(dup_per_partition.values()) == len(duplicated)
    print(
        f"\nSIGKILL: takeover after {takeover:.2f}s (lease {LEASE}s), {len(ids)} events, "
        f"{len(cut_off)} cut off mid-handler, {len(duplicated)} handled twice "
        f"(per partition {dup_per_partition})"
    )
    # The victim's leases end at most LEASE after its last heartbeat, and the survivor
    # claims them at its next heartbeat, LEASE / 3 later at most.
    assert takeover <= LEASE + LEASE / 3 + 1.0


async def _owns_all(cluster: Cluster, proc: subprocess.Popen[bytes]) -> bool:
    owned = await cluster.owners("g1")
    return set(owned) == {proc.pid} and len(owned[proc.pid]) == PARTITIONS


async def test_three_groups_each_receive_every_event(cluster: Cluster) -> None:
    names = ["email", "audit", "push"]
    procs = [cluster.start(name, groups=",".join(names)) for name in names]
    for name, proc in zip(names, procs, strict=True):
        await until(cluster, f"{name} running", partial(cluster.balanced, name, [proc]))
    ids = await cluster.publish(Keys(100).take(2000))
    for name in names:
        await until(cluster, f"lag 0 in {name}", partial(cluster.caught_up, name, len(ids)))
    await until(cluster, "every line", lambda: len(cluster.lines()) >= 3 * len(ids))

    lines = cluster.lines()
    for name, proc in zip(names, procs, strict=True):
        mine = [line for line in lines if line.group == name]
        assert {line.pid for line in mine} == {proc.pid}
        counts = Counter(line.id for line in mine)
        assert set(counts) == set(ids), name
        assert max(counts.values()) == 1, name


async def test_per_key_order_holds_across_processes_and_concurrent_partitions(
    cluster: Cluster,
) -> None:
    two = [cluster.start("two", groups="two,one", sleep="~0.002") for _ in range(2)]
    one = cluster.start("one", groups="two,one", sleep="~0.002")
    await until(cluster, "group two balanced", lambda: cluster.balanced("two", two))
    await until(cluster, "group one running", lambda: cluster.balanced("one", [one]))
    keys = Keys(200)
    ids = []
    for _ in range(10):
        ids += await cluster.publish(keys.take(300))
        await asyncio.sleep(0.05)
    for name in ("two", "one"):
        await until(cluster, f"lag 0 in {name}", partial(cluster.caught_up, name, len(ids)))
    await until(cluster, "every line", lambda: len(cluster.lines()) >= 2 * len(ids))

    lines = cluster.lines()
    for name in ("two", "one"):
        seqs: dict[str, list[int]] = defaultdict(list)
        for line in sorted((x for x in lines if x.group == name), key=lambda x: x.t):
            seqs[line.key].append(line.seq)
        for key, handled in seqs.items():
            assert handled == list(range(keys.next[key])), (name, key, handled)
        assert len(seqs) == len(keys.next)
    assert {line.pid for line in lines if line.group == "two"} == {p.pid for p in two}
    # The handlers really ran concurrently: one process's successive completions jump
    # between partitions all the time (serial partitions would switch rarely).
    mine = sorted((x for x in lines if x.pid == one.pid), key=lambda x: x.t)
    switches = sum(1 for x, y in itertools.pairwise(mine) if x.partition != y.partition)
    assert switches > len(mine) // 4, switches


async def test_restarted_group_resumes_exactly_at_its_committed_offsets(cluster: Cluster) -> None:
    keys = Keys(100)
    first_ids = await cluster.publish(keys.take(2000))
    first = cluster.start(sleep="0.005")
    await until(cluster, "the first worker at work", lambda: cluster.handled_by(first) >= 300)
    cluster.send(first, signal.SIGTERM)
    assert await cluster.wait_exit(first) == 0, cluster.log(first)

    handled = cluster.lines()
    assert len(handled) < len(first_ids), "stopped too late to test a mid-stream stop"
    assert len({line.id for line in handled}) == len(handled)
    parts = by_partition(handled)
    for part, plines in parts.items():
        assert offsets(plines) == list(range(len(plines))), part
    committed = await cluster.committed("g1")
    assert committed == {p: len(parts.get(p, [])) for p in range(PARTITIONS)}
    assert len(cluster.lines("begin")) == len(handled), "a handler began but never ended"

    second_ids = await cluster.publish(keys.take(500))
    second = cluster.start(sleep="0.005")
    total = len(first_ids) + len(second_ids)
    await until(cluster, "lag 0", lambda: cluster.caught_up("g1", total))
    await until(cluster, "every line", lambda: len(cluster.lines()) >= total)

    again = [line for line in cluster.lines() if line.pid == second.pid]
    assert Counter(line.id for line in again).most_common(1)[0][1] == 1
    assert {line.id for line in again} == set(first_ids + second_ids) - {
        line.id for line in handled
    }
    print(f"\nrestart: {len(handled)} handled before SIGTERM, {len(again)} after restart")
    cluster.send(second, signal.SIGTERM)
    assert await cluster.wait_exit(second) == 0


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_sigterm_lets_slow_handlers_finish_and_commits_them(
    cluster: Cluster, sync: bool
) -> None:
    # Three events in every partition; each handler takes 1.5 s.
    keys = [key_in(p) for p in range(PARTITIONS)]
    ids = await cluster.publish([(k, s) for s in range(3) for k in keys])
    proc = cluster.start(sleep="1.5", sync=sync)
    await until(cluster, "handlers running", lambda: len(cluster.lines("begin")) >= 4)
    signalled = time.monotonic()
    cluster.send(proc, signal.SIGTERM)
    assert await cluster.wait_exit(proc) == 0, cluster.log(proc)
    took = time.monotonic() - signalled

    began, done = cluster.lines("begin"), cluster.lines("done")
    assert {x.id for x in began} == {x.id for x in done}, "an in-flight handler was cut off"
    assert len(done) == PARTITIONS  # the first event of each partition, no more
    assert {x.seq for x in done} == {0}
    assert await cluster.committed("g1") == dict.fromkeys(range(PARTITIONS), 1)
    info = await cluster.group("g1")
    assert info is not None
    assert info.lag == len(ids) - PARTITIONS
    assert took >= 1.0, f"exited {took:.2f}s after SIGTERM, before its handlers could end"
    print(f"\nSIGTERM ({'sync' if sync else 'async'}): exit 0 after {took:.2f}s")


async def test_new_member_takes_a_share_and_nothing_is_handled_twice(cluster: Cluster) -> None:
    a = cluster.start()
    await until(cluster, "the first member holding everything", lambda: cluster.balanced("g1", [a]))
    stop = asyncio.Event()
    publisher = asyncio.create_task(stream(cluster, Keys(500), stop, limit=20_000))
    try:
        await until(cluster, "the first member at work", lambda: cluster.handled_by(a) >= 300)
        b = cluster.start()
        rebalance = await until(
            cluster, "two members with 4 partitions each", lambda: cluster.balanced("g1", [a, b])
        )
        await until(cluster, "the new member at work", lambda: cluster.handled_by(b) >= 300)
    finally:
        stop.set()
        ids = await publisher
    await until(cluster, "lag 0", lambda: cluster.caught_up("g1", len(ids)))
    await until(cluster, "every line", lambda: len(cluster.lines()) >= len(ids))

    lines = cluster.lines()
    counts = Counter(line.id for line in lines)
    assert set(counts) == set(ids)
    twice = [i for i, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} events handled twice in a graceful rebalance"
    info = await cluster.group("g1")
    assert info is not None
    ends = {p.partition: p.end for p in info.partitions}
    moved = []
    for part, plines in by_partition(lines).items():
        old = [x for x in plines if x.pid == a.pid]
        new = [x for x in plines if x.pid == b.pid]
        if old and new:  # handed over: the old owner finished before the new one began
            moved.append(part)
            assert offsets(old) == list(range(len(old))), part
            assert offsets(new) == list(range(len(old), ends[part])), part
            assert max(x.t for x in old) < min(x.t for x in new), part
    assert moved, "no partition changed hands while events flowed"
    assert "lost" not in cluster.log(a), "a lease expired instead of being handed over"
    print(f"\nrebalance: {rebalance:.2f}s after start; partitions moved mid-stream: {moved}")


@pytest.mark.parametrize("cluster", [{"lease": 1.0}], indirect=True)
async def test_rebalance_while_handlers_outlast_the_lease_handles_nothing_twice(
    cluster: Cluster,
) -> None:
    # Three events in every partition; every handler takes 5 leases. The first member
    # is in the middle of a handler in every partition when the second one joins. (With
    # two, a second member that took over 5 s to start on a busy machine found all of
    # them begun by the first: nothing left to hand over.)
    keys = [key_in(p) for p in range(PARTITIONS)]
    ids = await cluster.publish([(k, s) for s in range(3) for k in keys])
    a = cluster.start(sleep="5")
    await until(cluster, "a handler in every partition", lambda: len(cluster.begun()) == PARTITIONS)
    b = cluster.start(sleep="5")

    async def settled_or_twice() -> bool:
        return max(cluster.begun().values()) > 1 or await cluster.caught_up("g1", len(ids))

    await until(cluster, "lag 0 (or an event begun twice)", settled_or_twice, timeout=60)
    begun = cluster.begun()
    twice = sorted(
        (x.partition, x.offset, x.pid) for x in cluster.lines("begin") if begun[x.id] > 1
    )
    assert not twice, f"events handled by both members at once: {twice}\n{cluster.report()}"
    assert {x.pid for x in cluster.lines()} == {a.pid, b.pid}
