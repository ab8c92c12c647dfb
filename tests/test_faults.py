"""The fault-injection kit (tidings.testing: FaultyTransport, FaultPlan, SteppedClock,
Killed, Invariants): its own behaviour, and real apps run under it on the memory
transport and on a SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import tidings.testing
from tidings import ConfigError, Context, Tidings, Worker
from tidings.envelope import Event
from tidings.testing import (
    FaultPlan,
    FaultyTransport,
    InjectedFault,
    Invariants,
    Killed,
    SteppedClock,
    drain,
    eventually,
    running,
)
from tidings.transport import Consumer, Record, TopicPartition, Transport, positions
from tidings.transports import open_transport
from tidings.transports.memory import MemoryConsumer, MemoryTransport

TOPIC = "task-events"
GROUPS = ("audit", "email")


class TaskChanged(BaseModel):
    task_id: str
    seq: int


@pytest.fixture(autouse=True)
def quick_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker waits a second after a failed fetch or handling; injected faults make
    # many of them, and the waiting is not what these tests are about.
    monkeypatch.setattr("tidings.worker.group.UNHANDLED_PAUSE", 0.02, raising=False)


def make_app(
    transport: Transport,
    inv: Invariants,
    groups: Sequence[str] = GROUPS,
    *,
    calls: Counter[str] | None = None,
    name: str = "",
) -> Tidings:
    """An app whose handlers record every delivery in ``inv`` (and count it in
    ``calls[name]``)."""
    app = Tidings(transport=transport, service="faults")
    app.event("task.changed", subject="task_id")(TaskChanged)
    app.topic(TOPIC, partitions=4)
    for group in groups:

        @app.subscriber(TOPIC, group=group)
        async def handle(payload: TaskChanged, ctx: Context) -> None:
            inv.handled(ctx.group, ctx.event)
            if calls is not None:
                calls[name] += 1
            await asyncio.sleep(0)

    return app


async def publish(app: Tidings, inv: Invariants, events: int, keys: int) -> None:
    """``events`` events over ``keys`` keys, one publisher per key (each key's events
    in order, each sent again after an error until acknowledged)."""

    async def one_key(k: int) -> None:
        for seq in range(k, events, keys):
            await inv.publish(app, TOPIC, TaskChanged(task_id=f"t{k}", seq=seq))

    await asyncio.gather(*(one_key(k) for k in range(keys)))


def quiet(**faults: object) -> FaultPlan:
    """No faults but ``faults``."""
    return dataclasses.replace(FaultPlan.none(), **faults)  # type: ignore[arg-type]


def urls(tmp_path: Path) -> dict[str, str]:
    return {
        "memory": f"memory://faults-{uuid.uuid4().hex}",
        "sqlite": f"sqlite:///{tmp_path / 'events.db'}?lease=1",
    }


# -- the plan and the clock ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"fetch_error": 1.5}, "fetch_error"),
        ({"append_error": -0.1}, "append_error"),
        ({"duplicate": float("nan")}, "duplicate"),
        ({"heartbeat_error": True}, "heartbeat_error"),
        ({"delay_max": -1}, "delay_max"),
        ({"kill_within_calls": 0}, "kill_within_calls"),
        ({"error_limit": 2.5}, "error_limit"),
    ],
)
def test_a_fault_plan_names_the_field_it_refuses(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"FaultPlan.{field} must be"):
        FaultPlan(**options)  # type: ignore[arg-type]


def test_the_quiet_plan_injects_nothing() -> None:
    plan = FaultPlan.none()
    assert plan.append_error == plan.fetch_error == plan.commit_error == 0
    assert plan.delay == plan.duplicate == 0
    assert plan.kill_within_calls is None


def test_a_stepped_clock_steps_wall_time_both_ways_and_monotonic_time_forward() -> None:
    clock = SteppedClock()
    wall, mono = clock.time_ms(), clock.monotonic()
    clock.step_wall(60)
    assert clock.time_ms() - wall >= 60_000
    clock.step_wall(-120)
    assert clock.time_ms() - wall < -59_000
    clock.advance(30)
    assert clock.monotonic() - mono >= 30
    with pytest.raises(ConfigError, match="advance"):
        clock.advance(-1)


def test_the_kit_is_public_in_tidings_testing() -> None:
    assert set(tidings.testing.__all__) == {
        "FaultPlan",
        "FaultyConsumer",
        "FaultyTransport",
        "InjectedFault",
        "Invariants",
        "Killed",
        "Report",
        "SteppedClock",
        "TransportConformance",
        "drain",
        "eventually",
        "running",
        "stored",
    }


async def test_the_wrapper_installs_its_clock_and_fault_points_on_the_inner_transport() -> None:
    inner = MemoryTransport()
    faulty = FaultyTransport(inner, seed=1, plan=FaultPlan(heartbeat_error=1.0, delay=0))
    assert inner.clock is faulty.clock
    assert isinstance(faulty.clock, SteppedClock)
    assert inner.fault_hook is not None
    with pytest.raises(InjectedFault, match="seed=1"):
        await inner.fault_hook("heartbeat")
    await inner.fault_hook("lease")  # lease_error is 0
    assert faulty.injected["heartbeat_error"] == 1


# -- the schedule replays from the seed ---------------------------------------------------


async def run_a_fixed_script(seed: int) -> list[tuple[str, int, str]]:
    """The same calls, one after another, on a fresh memory log; the faults met."""
    plan = FaultPlan(
        append_error=0.2, fetch_error=0.2, commit_error=0.2, delay=0.3, delay_max=0.001
    )
    faulty = FaultyTransport(MemoryTransport(), seed=seed, plan=plan)
    await faulty.start()
    await faulty.create_topic("t", 2)
    for i in range(60):
        with contextlib.suppress(InjectedFault):
            await faulty.append("t", [(f"k{i % 4}", b"x")])
    consumer = faulty.consumer("g", ["t"])
    await consumer.start()
    for _ in range(40):
        try:
            records = await consumer.fetch(5, timeout=0)
            await consumer.commit(positions(records))
        except InjectedFault:
            pass
    await consumer.close()
    await faulty.close()
    return [tuple(f) for f in faulty.schedule]


async def test_the_same_seed_gives_the_same_fault_schedule() -> None:
    first = await run_a_fixed_script(seed=42)
    again = await run_a_fixed_script(seed=42)
    other = await run_a_fixed_script(seed=43)
    assert first == again
    assert len(first) > 20  # errors and delays of all three operations were drawn
    assert {op for op, _, _ in first} >= {"append", "g#1:fetch", "g#1:commit"}
    assert first != other


# -- the consumer's faults, one at a time -------------------------------------------------


async def one_partition(faulty: FaultyTransport, values: int) -> None:
    await faulty.create_topic("t", 1)
    await faulty.inner.append("t", [("k", f"v{i}".encode()) for i in range(values)])


async def test_a_duplicate_revokes_the_partition_then_hands_out_again_from_the_commit() -> None:
    faulty = FaultyTransport(MemoryTransport(), seed=3, plan=FaultPlan.none())
    await one_partition(faulty, 10)
    revoked: list[frozenset[TopicPartition]] = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        revoked.append(tps)

    consumer = faulty.consumer("g", ["t"], on_revoke=on_revoke)
    await consumer.start()
    first = await drain(consumer, 10)
    await consumer.commit(positions(first[:4]))
    faulty.plan = quiet(duplicate=1.0)
    again = await consumer.fetch(100, timeout=1)
    assert revoked == [frozenset({("t", 0)})]  # the worker was asked to give it up first
    assert [r.value for r in again] == [f"v{i}".encode() for i in range(4, 10)]
    assert {r.generation for r in again} == {first[0].generation}
    assert faulty.injected["duplicate"] == 1
    assert faulty.injected["duplicated_records"] == 6
    faulty.plan = FaultPlan.none()
    await faulty.inner.append("t", [("k", b"new")])
    [new] = await drain(consumer, 1)
    assert new.value == b"new"  # after the records handed out again, never before
    await consumer.close()


async def test_a_fetch_error_leaves_the_records_for_the_next_fetch() -> None:
    faulty = FaultyTransport(MemoryTransport(), seed=5, plan=quiet(fetch_error=0.5))
    await one_partition(faulty, 30)
    consumer = faulty.consumer("g", ["t"])
    await consumer.start()
    got: list[Record] = []
    while len(got) < 30:
        with contextlib.suppress(InjectedFault):
            got += await consumer.fetch(3, timeout=0.1)
    assert [r.offset for r in got] == list(range(30))
    assert faulty.injected["fetch_error"] > 0
    await consumer.close()


async def test_an_append_error_after_the_append_is_a_lost_reply() -> None:
    faulty = FaultyTransport(MemoryTransport(), seed=11, plan=quiet(append_error=1.0))
    await faulty.create_topic("t", 1)
    stored_anyway = 0
    for _ in range(20):
        before = (await faulty.inner.create_topic("t")).events
        with pytest.raises(InjectedFault):
            await faulty.append("t", [("k", b"x")])
        stored_anyway += (await faulty.inner.create_topic("t")).events - before
    # Some failed before reaching the log, some after (the publisher cannot tell).
    assert 0 < stored_anyway < 20


async def test_a_killed_member_raises_killed_on_every_call_and_keeps_its_partitions() -> None:
    name = f"memory://kill-{uuid.uuid4().hex}"
    faulty = FaultyTransport(open_transport(name), seed=9, plan=FaultPlan.none())
    await one_partition(faulty, 5)
    revoked: list[frozenset[TopicPartition]] = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        revoked.append(tps)

    member = faulty.consumer("g", ["t"], on_revoke=on_revoke)
    await member.start()
    records = await drain(member, 5)
    faulty.kill()
    for call in (
        member.fetch(1, timeout=0),
        member.commit(positions(records)),
        faulty.append("t", [("k", b"x")]),
    ):
        with pytest.raises(Killed):
            await call
    with pytest.raises(Killed):
        member.assignment()
    await member.close()  # a dead member does not leave: nothing happens
    # On memory (no leases to expire) the dead member has left without committing:
    # the survivor starts at the beginning, and the dead member's callback never ran.
    survivor_transport = open_transport(name)
    survivor = survivor_transport.consumer("g", ["t"])
    await survivor.start()
    assert [r.value for r in await drain(survivor, 5)] == [f"v{i}".encode() for i in range(5)]
    assert revoked == []
    await survivor.close()
    await faulty.close()


async def test_the_kill_lands_at_a_call_drawn_from_the_seed() -> None:
    plan = quiet(kill_within_calls=10)

    async def calls_until_killed(seed: int) -> int:
        faulty = FaultyTransport(MemoryTransport(), seed=seed, plan=plan)
        await one_partition(faulty, 5)
        member = faulty.consumer("g", ["t"])
        await member.start()
        calls = 0
        while not faulty.killed.is_set():
            calls += 1
            with contextlib.suppress(Killed):
                await member.fetch(1, timeout=0)
        await faulty.close()
        return calls

    seen = [await calls_until_killed(seed) for seed in range(8)]
    assert all(1 <= n <= 10 for n in seen)
    assert seen == [await calls_until_killed(seed) for seed in range(8)]
    assert len(set(seen)) > 1


# -- the checker --------------------------------------------------------------------------


def _event(app: Tidings, key: str, seq: int) -> Event:
    return app.build(TaskChanged(task_id=key, seq=seq))


def test_the_checker_finds_a_lost_event_and_an_out_of_order_handling() -> None:
    app = make_app(MemoryTransport(), Invariants(["x"]))
    inv = Invariants(["a", "b"], seed=1234)
    k0 = [_event(app, "k0", i) for i in range(3)]
    k1 = [_event(app, "k1", i) for i in range(2)]
    for e in [*k0, *k1]:
        inv.published(e)
    for e in [*k0, *k1]:  # group a: everything in order, k0's first twice
        inv.handled("a", e)
    inv.handled("a", k0[0])
    for e in [k0[0], k0[2], k0[1], k1[0]]:  # group b: k0's #2 before #1, k1's #1 lost
        inv.handled("b", e)
    assert not inv.complete()
    with pytest.raises(AssertionError) as failure:
        inv.check()
    message = str(failure.value)
    assert message.startswith("seed=1234:")
    assert f"lost: group b never handled {k1[1].id} (#1 of key 'k1')" in message
    assert f"out of order: group b handled {k0[2].id} (#2 of key 'k0') before {k0[1].id}" in (
        message
    )
    assert "group a" not in message.split("):")[1]  # a kept every promise
    assert "a: handled=5 duplicates=1 lost=0 out_of_order=0" in message


def test_the_checker_counts_duplicates_and_checks_effects_once() -> None:
    app = make_app(MemoryTransport(), Invariants(["x"]))
    inv = Invariants(["a"], seed=7)
    events = [_event(app, "k", i) for i in range(3)]
    for e in events:
        inv.published(e)
        inv.published(e)  # a retried publish of the same event counts once
        inv.handled("a", e)
        inv.effect("a", e.id)
    inv.handled("a", events[1])  # redelivered; with an inbox no second effect
    report = inv.check(exactly_once=["a"])
    assert report.published == 3
    assert report.duplicates == {"a": 1}
    assert report.effects == {"a": 3}
    inv.effect("a", events[2].id)
    with pytest.raises(AssertionError, match=r"seed=7:.*\n  effect twice: group a had 2"):
        inv.check(exactly_once=["a"])


def test_groups_that_handle_only_some_events_are_not_asked_for_the_others() -> None:
    app = make_app(MemoryTransport(), Invariants(["x"]))
    inv = Invariants(["all", "some"])
    events = [_event(app, "k", i) for i in range(3)]
    inv.published(events[0])
    inv.published(events[1], groups=["all"])
    inv.published(events[2])
    for e in events:
        inv.handled("all", e)
    inv.handled("some", events[0])
    inv.handled("some", events[2])  # not out of order: #1 is not this group's
    assert inv.complete()
    assert inv.check().handled == {"all": 3, "some": 2}


class ReorderingTransport(MemoryTransport):
    """A broken transport: each fetch hands its records out in reverse, and one record
    (partition 0, offset 3) is skipped for good."""

    def consumer(self, group: str, topics: Sequence[str], **kw: object) -> Consumer:
        inner = super().consumer(group, topics, **kw)  # type: ignore[arg-type]
        assert isinstance(inner, MemoryConsumer)
        fetch = inner.fetch

        async def broken(max_records: int, timeout: float) -> list[Record]:
            records = await fetch(max_records, timeout)
            return [r for r in reversed(records) if (r.partition, r.offset) != (0, 3)]

        inner.fetch = broken  # type: ignore[method-assign]
        return inner


async def test_the_checker_fails_a_run_on_a_transport_that_loses_and_reorders() -> None:
    faulty = FaultyTransport(ReorderingTransport(), seed=77, plan=FaultPlan.none())
    inv = Invariants(["audit"], faults=faulty)
    app = make_app(faulty, inv, groups=["audit"])
    async with app:
        await publish(app, inv, events=80, keys=4)
        async with running(app, fetch_max=8):
            await eventually(lambda: len(inv._log) >= 79, what="79 handlings")
    with pytest.raises(AssertionError) as failure:
        inv.check()
    message = str(failure.value)
    assert message.startswith("seed=77:")
    assert "lost: group audit never handled" in message
    assert "out of order: group audit handled" in message
    assert "lost=1" in message


# -- real apps under faults ---------------------------------------------------------------

FAULTS = FaultPlan(
    append_error=0.05,
    fetch_error=0.05,
    commit_error=0.2,
    duplicate=0.05,
    delay=0.2,
    delay_max=0.005,
)


@pytest.mark.parametrize("transport", ["memory", "sqlite"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_an_app_under_faults_loses_nothing_and_keeps_per_key_order(
    tmp_path: Path, transport: str, seed: int
) -> None:
    faulty = FaultyTransport(open_transport(urls(tmp_path)[transport]), seed=seed, plan=FAULTS)
    inv = Invariants(GROUPS, faults=faulty)
    app = make_app(faulty, inv)
    async with app, running(app, fetch_max=20, max_in_flight=40):
        await publish(app, inv, events=400, keys=20)
        await eventually(inv.complete, timeout=60, what="every group handling every event")
    report = inv.check()
    assert report.published == 400
    assert report.lost == dict.fromkeys(GROUPS, 0)
    assert report.out_of_order == dict.fromkeys(GROUPS, 0)
    for group in GROUPS:
        assert report.deliveries[group] == 400 + report.duplicates[group]
    injected = faulty.injected
    assert injected["append_error"] > 0
    assert injected["fetch_error"] > 0
    assert injected["commit_error"] > 0
    assert injected["delay"] > 0
    assert injected["duplicate"] > 0
    print(report)


@pytest.mark.parametrize("seed", [3, 4])
async def test_an_app_on_sqlite_keeps_the_promises_when_lease_renewals_and_claims_fail(
    tmp_path: Path, seed: int
) -> None:
    faulty = FaultyTransport(
        open_transport(urls(tmp_path)["sqlite"]), seed=seed, plan=FaultPlan.none()
    )
    inv = Invariants(GROUPS, faults=faulty)
    app = make_app(faulty, inv)
    async with app, running(app, fetch_max=20, max_in_flight=40):
        # From here on: a member whose very first heartbeat fails does not join, and
        # its worker ends; that is start-up, not what this test is about.
        faulty.plan = dataclasses.replace(FAULTS, heartbeat_error=0.3, lease_error=0.3)
        await publish(app, inv, events=200, keys=20)
        await eventually(
            lambda: faulty.injected["heartbeat_error"] >= 3, timeout=60, what="3 failed renewals"
        )
        await publish(app, inv, events=200, keys=20)
        await eventually(inv.complete, timeout=60, what="every group handling every event")
    report = inv.check()
    assert report.lost == dict.fromkeys(GROUPS, 0)
    print(report)


@pytest.mark.parametrize("transport", ["memory", "sqlite"])
async def test_a_killed_worker_loses_nothing_as_its_group_mate_takes_over(
    tmp_path: Path, transport: str
) -> None:
    # Two transports on one log, as two processes. The doomed one works alone and dies
    # within its first 20 fetches and commits, without committing what it handled
    # meanwhile; its mate starts after the kill, so everything left goes through the
    # takeover (on SQLite once the dead member's 1 s leases have expired).
    log = urls(tmp_path)[transport]
    doomed = FaultyTransport(open_transport(log), seed=21, plan=quiet(kill_within_calls=20))
    mate = FaultyTransport(open_transport(log), seed=22, plan=FAULTS)
    inv = Invariants(["audit"], faults=doomed)
    calls: Counter[str] = Counter()
    app_doomed = make_app(doomed, inv, groups=["audit"], calls=calls, name="doomed")
    app_mate = make_app(mate, inv, groups=["audit"], calls=calls, name="mate")
    async with app_doomed, app_mate:
        worker = Worker(app_doomed, fetch_max=10, max_in_flight=20, commit_interval=0.01)
        doomed_run = asyncio.create_task(worker.run())
        ready = asyncio.ensure_future(worker.ready.wait())
        await asyncio.wait([ready, doomed_run], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        await publish(app_mate, inv, events=300, keys=10)
        await doomed.killed.wait()
        with pytest.raises(Killed):
            await doomed_run
        async with running(app_mate, fetch_max=10, max_in_flight=20):
            await eventually(inv.complete, timeout=60, what="the survivor handling every event")
    report = inv.check()
    assert doomed.injected["kill"] == 1
    assert report.lost == {"audit": 0}
    assert calls["doomed"] > 0
    assert calls["mate"] > 0
    print(report, dict(calls))


async def _owners(transport: Transport, group: str) -> dict[str, frozenset[int]]:
    """member -> the partitions of TOPIC it holds now."""
    out: dict[str, frozenset[int]] = {}
    for info in await transport.groups():
        if info.group == group:
            for m in info.members:
                out[m.member] = frozenset(p for t, p in m.partitions if t == TOPIC)
    return out


@pytest.mark.parametrize("step", [60, -60])
async def test_a_wall_clock_step_moves_no_partition_between_two_live_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    # Issue 15, finding 9: a +60 s step made both members lose every partition (91
    # events handled twice); leases are now judged by monotonic time alone. Two
    # transports on one file, as two processes, with 5 s leases, so that a busy machine
    # does not let one lapse for real.
    log = f"sqlite:///{tmp_path / 'events.db'}?lease=5"
    a = FaultyTransport(open_transport(log), seed=31, plan=FaultPlan.none())
    b = FaultyTransport(open_transport(log), seed=32, plan=FaultPlan.none())
    inv = Invariants(["audit"], faults=a)
    calls: Counter[str] = Counter()
    app_a = make_app(a, inv, groups=["audit"], calls=calls, name="a")
    app_b = make_app(b, inv, groups=["audit"], calls=calls, name="b")
    beats: Counter[str] = Counter()
    for name, faulty in (("a", a), ("b", b)):
        hook = faulty.inner.fault_hook
        assert hook is not None

        async def counting(point: str, hook: Any = hook, name: str = name) -> None:
            beats[f"{name}:{point}"] += 1
            await hook(point)

        faulty.inner.fault_hook = counting
    async with app_a, app_b, running(app_a), running(app_b):
        await eventually(
            lambda: _balanced(a), timeout=30, what="two members holding two partitions each"
        )
        before = await _owners(a, "audit")
        await publish(app_a, inv, events=200, keys=20)
        await eventually(inv.complete, timeout=60, what="the first 200 handled")
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() + step * 1_000_000_000)
        # Two heartbeats of each member (every 5/3 s) under the stepped clock.
        seen = beats.copy()
        await eventually(
            lambda: all(beats[f"{n}:heartbeat"] >= seen[f"{n}:heartbeat"] + 2 for n in "ab"),
            timeout=30,
            what="two heartbeats of each member after the step",
        )
        await publish(app_b, inv, events=200, keys=20)
        await eventually(inv.complete, timeout=60, what="the next 200 handled")
        after = await _owners(a, "audit")
    report = inv.check()
    assert report.lost == {"audit": 0}
    assert report.out_of_order == {"audit": 0}
    assert report.duplicates == {"audit": 0}
    assert after == before
    print(f"step {step:+d} s:", report, dict(calls))


async def _balanced(transport: Transport) -> bool:
    owners = await _owners(transport, "audit")
    return len(owners) == 2 and all(len(parts) == 2 for parts in owners.values())
