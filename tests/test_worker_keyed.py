"""A group's ``concurrency``: events of distinct keys of one partition handled at once,
per-key order kept, offsets committed below the lowest unfinished one (decision 0033);
on a real SQLite log. The SIGKILL test is in tests/test_worker_keyed_crash.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tidings import ConfigError, Context, Tidings
from tidings.middleware import Retry
from tidings.testing import eventually, running
from tidings.transport import Clock

TOPIC = "calls"
TYPE = "call.requested"


@pytest.fixture
async def gate() -> AsyncIterator[asyncio.Event]:
    """What held handlers wait on; set at teardown, so that none outlives its test."""
    event = asyncio.Event()
    yield event
    event.set()


class StillLeases(Clock):
    """The system's wall time, and a monotonic time that stands still: no lease expires
    and no member fences itself for late renewals, which a loaded machine can make of a
    1 s lease."""

    def monotonic(self) -> float:
        return 0.0


def make_app(sqlite_url: str, partitions: int = 1) -> Tidings:
    return Tidings(f"{sqlite_url}?partitions={partitions}", service="agents", schemas="off")


async def publish(app: Tidings, items: list[tuple[str, int]]) -> None:
    events = [app.build({"key": k, "seq": n}, type=TYPE, subject=k) for k, n in items]
    await app.publish_events(TOPIC, events)


async def committed(app: Tidings, group: str) -> int | None:
    for info in await app.transport.groups():
        if info.group == group:
            for p in info.partitions:
                if p.topic == TOPIC:
                    return p.committed
    return None


async def test_per_key_order_holds_with_eight_keys_in_flight_over_many_keys(
    sqlite_url: str,
) -> None:
    app = make_app(sqlite_url, partitions=2)
    app.group("g", concurrency=8)
    spans: list[tuple[str, str, int]] = []  # ("start" | "end", key, seq), in the order seen
    busy: set[str] = set()
    overlaps: list[str] = []
    in_flight, most = [0], [0]

    @app.subscriber(TOPIC, group="g")
    async def call(data: dict[str, Any]) -> None:
        key, seq = data["key"], data["seq"]
        if key in busy:
            overlaps.append(key)
        busy.add(key)
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        spans.append(("start", key, seq))
        for _ in range(3 - seq % 3):  # interleave with the other calls, later ones quicker
            await asyncio.sleep(0)
        spans.append(("end", key, seq))
        in_flight[0] -= 1
        busy.discard(key)

    # Fewer keys per partition than K: a key's next event is always within reach.
    keys = [f"k{i}" for i in range(12)]
    items = [(k, n) for n in range(10) for k in keys]  # each key's events in order
    async with app, running(app):
        await publish(app, items)
        await eventually(lambda: len(spans) == 2 * len(items), what="every event handled")
    assert overlaps == []
    for key in keys:
        seen = [(kind, seq) for kind, k, seq in spans if k == key]
        assert seen == [(kind, n) for n in range(10) for kind in ("start", "end")]
    assert most[0] <= 2 * 8  # two partitions, eight keys each


async def test_calls_of_distinct_keys_of_one_partition_run_at_once(
    sqlite_url: str, gate: asyncio.Event
) -> None:
    """Four calls of one partition meet at a barrier: they can only pass it together."""
    app = make_app(sqlite_url)
    app.group("g", concurrency=4)
    waiting: list[str] = []
    done: list[str] = []

    @app.subscriber(TOPIC, group="g")
    async def call(data: dict[str, Any]) -> None:
        waiting.append(data["key"])
        if len(waiting) == 4:
            gate.set()
        await gate.wait()
        done.append(data["key"])

    async with app, running(app):
        await publish(app, [(f"k{i}", 0) for i in range(4)])
        await eventually(lambda: len(done) == 4, what="the barrier passed")
    assert sorted(waiting) == ["k0", "k1", "k2", "k3"]


async def test_the_commit_stops_below_a_slow_event_while_those_after_it_finish(
    sqlite_url: str, gate: asyncio.Event
) -> None:
    app = make_app(sqlite_url)
    app.group("g", concurrency=4)
    done: list[int] = []

    @app.subscriber(TOPIC, group="g")
    async def call(data: dict[str, Any]) -> None:
        if data["key"] == "slow":
            await gate.wait()
        done.append(data["seq"])

    items = [("slow" if n == 5 else f"k{n}", n) for n in range(21)]
    async with app, running(app):
        await publish(app, items)
        await eventually(lambda: len(done) == 20, what="all but offset 5 handled")
        await eventually(lambda: _is(committed(app, "g"), 5), what="offsets 0..4 committed")
        assert 5 not in done
        assert await committed(app, "g") == 5  # not past the unfinished event
        gate.set()
        await eventually(lambda: _is(committed(app, "g"), 21), what="all committed")
    assert sorted(done) == list(range(21))


async def _is(value: Any, expected: int) -> bool:
    return await value == expected


async def test_a_retried_event_holds_its_key_while_other_keys_go_on(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    app.group("g", concurrency=4)
    attempts: dict[int, int] = {}
    order: list[tuple[str, int]] = []

    @app.subscriber(TOPIC, group="g", retry=Retry(max_attempts=5, base_delay=0.01))
    async def call(data: dict[str, Any], ctx: Context) -> None:
        seq = data["seq"]
        attempts[seq] = ctx.attempt
        if data["key"] == "a" and seq == 0 and ctx.attempt < 3:
            raise RuntimeError("flaky")
        order.append((data["key"], seq))

    items = [("a", 0), ("a", 1), ("b", 2), ("b", 3), ("a", 4)]
    async with app, running(app):
        await publish(app, items)
        await eventually(lambda: len(order) == 5, what="every event handled")
        await eventually(lambda: _is(committed(app, "g"), 5), what="all committed")
    assert attempts[0] == 3
    assert [s for k, s in order if k == "a"] == [0, 1, 4]
    assert [s for k, s in order if k == "b"] == [2, 3]


async def test_a_dead_lettered_event_releases_its_key(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    app.group("g", concurrency=4)
    order: list[int] = []

    @app.subscriber(TOPIC, group="g", retry=Retry(max_attempts=1))
    async def call(data: dict[str, Any]) -> None:
        if data["seq"] == 0:
            raise RuntimeError("poisoned")
        order.append(data["seq"])

    async with app, running(app) as worker:
        await publish(app, [("a", 0), ("a", 1), ("b", 2)])
        await eventually(lambda: sorted(order) == [1, 2], what="the others handled")
        await eventually(lambda: _is(committed(app, "g"), 3), what="all committed")
        assert worker.stats.dead_lettered == 1


async def test_concurrency_one_handles_a_partition_one_event_at_a_time(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    app.group("g")  # concurrency=1, the default
    in_flight, most, done = [0], [0], []

    @app.subscriber(TOPIC, group="g")
    async def call(data: dict[str, Any]) -> None:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight[0] -= 1
        done.append(data["seq"])

    async with app, running(app):
        await publish(app, [(f"k{n}", n) for n in range(20)])
        await eventually(lambda: len(done) == 20, what="every event handled")
    assert most[0] == 1
    assert done == list(range(20))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", True, None])
def test_a_concurrency_that_is_not_a_positive_int_is_refused(bad: Any) -> None:
    app = Tidings("memory://", service="s")
    with pytest.raises(ConfigError, match="concurrency"):
        app.group("g", concurrency=bad)


async def test_a_call_past_its_timeout_releases_its_key_while_other_keys_go_on(
    sqlite_url: str, gate: asyncio.Event
) -> None:
    app = make_app(sqlite_url)
    app.group("g", concurrency=4)
    done: list[tuple[str, int]] = []

    # 0.2 s cuts only the call that hangs: the others never await, and a deadline fires
    # only at an await (a loaded machine cannot make them late).
    @app.subscriber(TOPIC, group="g", timeout=0.2, retry=Retry(max_attempts=1))
    async def call(data: dict[str, Any]) -> None:
        if data["seq"] == 0:
            await gate.wait()  # hangs: past its deadline, dead-lettered
        done.append((data["key"], data["seq"]))

    async with app, running(app) as worker:
        await publish(app, [("a", 0), ("b", 1), ("a", 2), ("b", 3)])
        await eventually(lambda: len(done) == 3, what="the others handled")
        await eventually(lambda: _is(committed(app, "g"), 4), what="all committed")
        assert worker.stats.dead_lettered == 1
    assert [s for k, s in done if k == "a"] == [2]
    assert [s for k, s in done if k == "b"] == [1, 3]


async def test_a_shutdown_with_a_call_under_way_commits_below_it_and_the_next_run_redoes_it(
    sqlite_url: str, gate: asyncio.Event
) -> None:
    app = make_app(sqlite_url)
    app.group("g", concurrency=4)
    done: list[int] = []

    @app.subscriber(TOPIC, group="g")
    async def call(data: dict[str, Any]) -> None:
        if data["key"] == "slow":
            await gate.wait()
        done.append(data["seq"])

    items = [("slow" if n == 5 else f"k{n % 7}", n) for n in range(21)]
    async with app:
        async with running(app, shutdown_timeout=0.2) as worker:
            await publish(app, items)
            await eventually(lambda: len(done) == 20, what="all but offset 5 handled")
        assert worker.stats.abandoned == 1  # the call at offset 5, cancelled
        assert await committed(app, "g") == 5
        gate.set()
        async with running(app):
            await eventually(lambda: 5 in done, what="offset 5 handled by the next run")
            await eventually(lambda: _is(committed(app, "g"), 21), what="all committed")
    assert sorted(set(done)) == list(range(21))
    assert done.count(12) == 2  # finished after the unfinished one: delivered again


async def test_a_sequenced_keyed_group_parks_the_failed_key_while_others_go_on(
    sqlite_url: str,
) -> None:
    app = make_app(sqlite_url)
    app.group("g", sequenced=True, concurrency=4)
    order: list[tuple[str, int]] = []

    @app.subscriber(TOPIC, group="g", retry=Retry(max_attempts=1))
    async def call(data: dict[str, Any]) -> None:
        if (data["key"], data["seq"]) == ("a", 0):
            raise RuntimeError("poisoned")
        order.append((data["key"], data["seq"]))

    async with app, running(app) as worker:
        await publish(app, [("a", 0), ("b", 1), ("a", 2), ("b", 3), ("a", 4)])
        await eventually(lambda: _is(committed(app, "g"), 5), what="all committed")
        assert worker.stats.dead_lettered == 3  # the failed one and the two parked
        assert worker.stats.parked == 2
    assert order == [("b", 1), ("b", 3)]  # the key of the dead letter waits behind it


async def test_a_partition_revoked_with_calls_under_way_is_handled_again_from_below_them(
    sqlite_url: str, gate: asyncio.Event
) -> None:
    """Worker one holds a call in each partition (keys slow-1 and slow-0); worker two
    joins, one partition moves: its held call is abandoned at the revocation's timeout,
    its offset not committed, and worker two handles it, and what came after it."""
    url = f"{sqlite_url}?partitions=2&lease=1"  # a heartbeat every 1/3 s: a quick join
    one, two = (Tidings(url, service=f"w{i}", schemas="off") for i in (1, 2))
    for app in (one, two):  # only the join moves a partition, however late the beats
        app.transport.clock = StillLeases()
    finished: dict[str, list[tuple[str, int]]] = {"one": [], "two": []}

    def handler(name: str) -> Any:
        async def call(data: dict[str, Any]) -> None:
            if name == "one" and data["key"].startswith("slow"):
                await gate.wait()
            finished[name].append((data["key"], data["seq"]))

        return call

    for name, app in (("one", one), ("two", two)):
        app.group("g", concurrency=4)
        app.subscriber(TOPIC, group="g")(handler(name))

    keys = ["slow-1", "slow-0", "k0", "k1", "k2", "k3"]  # slow-1: partition 0, slow-0: 1
    items = [(k, n) for n in range(3) for k in keys]
    async with one, two, running(one, revoke_timeout=0.2):
        await publish(one, items)
        await eventually(lambda: len(finished["one"]) == 12, what="all but the held")
        async with running(two):
            await eventually(
                lambda: any(k.startswith("slow") for k, _ in finished["two"]),
                what="a held event handled by worker two",
            )
            gate.set()  # the call worker one kept
            await eventually(
                lambda: set(finished["one"]) | set(finished["two"]) == set(items),
                what="every event handled",
            )
            for key in ("slow-0", "slow-1"):  # per key, in order, in either worker
                for seen in finished.values():
                    got = [n for k, n in seen if k == key]
                    assert got == sorted(got)
