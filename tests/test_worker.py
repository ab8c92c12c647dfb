"""The worker: handler kinds, ordering, backpressure, retries, shutdown, poison records."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from tidings import ConfigError, Context, Tidings, TransportError, Worker
from tidings.middleware import Retry, default_middleware
from tidings.partitioning import partition_for
from tidings.testing import running
from tidings.transport import GroupPartition, Record
from tidings.transports.memory import MemoryConsumer

TOPIC = "task-events"


class TaskCreated(BaseModel):
    task_id: str
    seq: int = 0


async def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met in {timeout}s: {what}")
        await asyncio.sleep(0.005)


def make_app(partitions: int = 4) -> Tidings:
    app = Tidings(f"memory://?partitions={partitions}", service="test")
    app.event("task.created", subject="task_id")(TaskCreated)
    return app


async def group_rows(app: Tidings, group: str) -> list[GroupPartition]:
    for info in await app.transport.groups():
        if info.group == group:
            return list(info.partitions)
    return []


async def lag(app: Tidings, group: str) -> int:
    return sum(row.lag for row in await group_rows(app, group))


async def wait_for_lag(app: Tidings, group: str, expected: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (current := await lag(app, group)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"lag of {group} is {current}, expected {expected}")
        await asyncio.sleep(0.01)


async def the_runner(worker: Worker) -> Any:
    """The worker's only group runner, once ``run`` has made it."""
    await eventually(lambda: bool(worker._runners), what="worker started")
    (runner,) = worker._runners
    return runner


def keys_in_distinct_partitions(count: int, partitions: int) -> list[str]:
    """``count`` keys that hash to ``count`` different partitions."""
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < count:
        key = f"k{i}"
        chosen.setdefault(partition_for(key, partitions), key)
        i += 1
    return list(chosen.values())


# -- construction ----------------------------------------------------------------


def test_worker_needs_subscribers_and_known_groups() -> None:
    app = make_app()
    with pytest.raises(ConfigError, match="no subscribers"):
        Worker(app)

    @app.subscriber(TOPIC, group="email")
    def handle(payload: Any) -> None:
        pass

    with pytest.raises(ConfigError, match=r"unknown group.*sms.*this app has: email"):
        Worker(app, ["sms"])
    with pytest.raises(ConfigError, match="max_in_flight"):
        Worker(app, max_in_flight=0)


# -- handlers ---------------------------------------------------------------------


async def test_async_handler_receives_the_typed_model_and_its_context() -> None:
    app = make_app()
    seen: list[tuple[Any, Context]] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated, ctx: Context) -> None:
        seen.append((payload, ctx))

    async with app, running(app):
        event = await app.publish(TOPIC, TaskCreated(task_id="t1", seq=7))
        await eventually(lambda: len(seen) == 1)
    payload, ctx = seen[0]
    assert type(payload) is TaskCreated
    assert payload == TaskCreated(task_id="t1", seq=7)
    assert ctx.event == event.with_(data={"task_id": "t1", "seq": 7})
    assert (ctx.id, ctx.type, ctx.subject, ctx.group) == (event.id, "task.created", "t1", "g")
    assert ctx.topic == TOPIC
    assert ctx.partition == partition_for("t1", 4)
    assert ctx.offset == 0
    assert ctx.attempt == 1


async def test_sync_handler_runs_in_a_thread_and_receives_the_typed_model() -> None:
    app = make_app()
    seen: list[tuple[Any, int]] = []
    loop_thread = threading.get_ident()

    @app.subscriber(TOPIC, group="g")
    def handle(payload: TaskCreated) -> None:
        time.sleep(0.01)  # blocking is fine here: not on the event loop
        seen.append((payload, threading.get_ident()))

    async with app, running(app) as worker:
        await app.publish_many(TOPIC, [TaskCreated(task_id=f"t{i}") for i in range(3)])
        await eventually(lambda: len(seen) == 3)
    assert all(type(p) is TaskCreated for p, _ in seen)
    assert sorted(p.task_id for p, _ in seen) == ["t0", "t1", "t2"]
    assert all(thread != loop_thread for _, thread in seen)
    assert worker.stats.handled == 3


async def test_unregistered_types_reach_the_handler_as_raw_json() -> None:
    app = make_app()
    seen: list[Any] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any) -> None:
        seen.append(payload)

    async with app, running(app):
        await app.publish(TOPIC, {"free": ["form"]}, type="note.added")
        await eventually(lambda: len(seen) == 1)
    assert seen == [{"free": ["form"]}]


async def test_events_of_types_not_subscribed_are_skipped_and_committed() -> None:
    app = make_app()
    seen: list[str] = []

    @app.subscriber(TOPIC, group="g", types=["task.created"])
    async def handle(payload: TaskCreated) -> None:
        seen.append(payload.task_id)

    async with app:
        await app.publish(TOPIC, {"x": 1}, type="task.deleted", subject="t1")
        await app.publish(TOPIC, {"x": 2}, type="task.updated", subject="t2")
        await app.publish(TOPIC, TaskCreated(task_id="t1"))
        async with running(app) as worker:
            await eventually(lambda: seen == ["t1"])
            await wait_for_lag(app, "g", 0)
    assert worker.stats.skipped == 2
    assert worker.stats.handled == 1
    rows = await group_rows(app, "g")
    assert sum(row.committed or 0 for row in rows) == 3


async def test_each_group_gets_every_event() -> None:
    app = make_app()
    got: dict[str, list[str]] = {"a": [], "b": []}

    @app.subscriber(TOPIC, group="a")
    async def in_a(payload: TaskCreated) -> None:
        got["a"].append(payload.task_id)

    @app.subscriber(TOPIC, group="b")
    def in_b(payload: TaskCreated) -> None:
        got["b"].append(payload.task_id)

    async with app, running(app):
        await app.publish_many(TOPIC, [TaskCreated(task_id=f"t{i}") for i in range(10)])
        await eventually(lambda: len(got["a"]) == len(got["b"]) == 10)
    assert sorted(got["a"]) == sorted(got["b"]) == sorted(f"t{i}" for i in range(10))


async def test_only_the_named_groups_run() -> None:
    app = make_app()
    got: list[str] = []

    @app.subscriber(TOPIC, group="a")
    async def in_a(payload: TaskCreated) -> None:
        got.append("a")

    @app.subscriber(TOPIC, group="b")
    async def in_b(payload: TaskCreated) -> None:
        got.append("b")

    async with app, running(app, groups=["b"]):
        await app.publish(TOPIC, TaskCreated(task_id="t"))
        await eventually(lambda: got == ["b"])
        await asyncio.sleep(0.05)
    assert got == ["b"]


# -- order and concurrency ---------------------------------------------------------


async def test_order_is_kept_per_partition_while_partitions_run_concurrently() -> None:
    app = make_app(partitions=8)
    keys = keys_in_distinct_partitions(6, 8)
    seen: dict[str, list[int]] = {k: [] for k in keys}
    running_now = 0
    most_at_once = 0
    per_partition_now: dict[int, int] = {}

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated, ctx: Context) -> None:
        nonlocal running_now, most_at_once
        running_now += 1
        per_partition_now[ctx.partition] = per_partition_now.get(ctx.partition, 0) + 1
        assert per_partition_now[ctx.partition] == 1, "two handlers in one partition"
        most_at_once = max(most_at_once, running_now)
        await asyncio.sleep(random.uniform(0, 0.004))
        seen[payload.task_id].append(payload.seq)
        per_partition_now[ctx.partition] -= 1
        running_now -= 1

    async with app:
        # Interleaved across keys, in several appends, so fetches mix partitions.
        for chunk in range(5):
            await app.publish_many(
                TOPIC,
                [TaskCreated(task_id=k, seq=chunk * 10 + i) for i in range(10) for k in keys],
            )
        async with running(app) as worker:
            await eventually(lambda: sum(map(len, seen.values())) == 300, timeout=10)
    for key in keys:
        assert seen[key] == list(range(50)), key
    assert most_at_once >= 3  # partitions really ran side by side
    assert worker.stats.failed_attempts == 0


# -- backpressure -------------------------------------------------------------------


async def test_never_more_than_max_in_flight_events_fetched_and_unfinished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    max_in_flight = 3
    app = make_app(partitions=16)
    keys = keys_in_distinct_partitions(8, 16)
    gate = asyncio.Event()
    started: list[str] = []
    finished = 0
    fetched = 0
    worst = 0

    make_consumer = app.transport.consumer

    def counting_consumer(*args: Any, **kwargs: Any) -> Any:
        consumer = make_consumer(*args, **kwargs)
        fetch = consumer.fetch

        async def counting_fetch(max_records: int, timeout: float) -> list[Record]:
            nonlocal fetched, worst
            records = await fetch(max_records, timeout)
            fetched += len(records)
            worst = max(worst, fetched - finished)
            return records

        consumer.fetch = counting_fetch  # type: ignore[method-assign]
        return consumer

    monkeypatch.setattr(app.transport, "consumer", counting_consumer)

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        nonlocal finished
        started.append(payload.task_id)
        await gate.wait()
        finished += 1

    async with app:
        await app.publish_many(
            TOPIC, [TaskCreated(task_id=k, seq=n) for n in range(3) for k in keys]
        )
        async with running(app, max_in_flight=max_in_flight, fetch_max=100) as worker:
            try:
                runner = await the_runner(worker)
                await eventually(lambda: len(started) == max_in_flight)
                await asyncio.sleep(0.3)  # a fetch loop ignoring the limit would fetch more
                assert len(started) == max_in_flight
                assert runner.in_flight == max_in_flight
                assert fetched == max_in_flight
                assert await lag(app, "g") == 24
            finally:
                gate.set()
            await eventually(lambda: finished == 24)
            await wait_for_lag(app, "g", 0)
    assert worst <= max_in_flight
    assert fetched == 24
    assert runner.in_flight == 0


async def test_in_flight_limit_holds_with_one_slow_partition() -> None:
    app = make_app(partitions=4)
    gate = asyncio.Event()
    started = 0

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        nonlocal started
        started += 1
        await gate.wait()

    async with app:
        await app.publish_many(TOPIC, [TaskCreated(task_id="same", seq=i) for i in range(10)])
        async with running(app, max_in_flight=5) as worker:
            try:
                runner = await the_runner(worker)
                await eventually(lambda: runner.in_flight == 5)
                await asyncio.sleep(0.2)
                assert runner.in_flight == 5  # fetched and queued, not more
                assert started == 1  # one partition: one at a time
            finally:
                gate.set()
            await wait_for_lag(app, "g", 0)


# -- failures and retries ---------------------------------------------------------------


async def test_a_failing_handler_leaves_the_event_uncommitted_and_retries_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    failing = True
    attempts: list[int] = []
    done: list[str] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated, ctx: Context) -> None:
        if payload.task_id == "bad":
            attempts.append(ctx.attempt)
            if failing:
                raise RuntimeError("smtp is down")
        done.append(payload.task_id)

    async with app:
        bad = await app.publish(TOPIC, TaskCreated(task_id="bad"))
        bad_partition = partition_for("bad", 4)
        other = next(
            k for k in (f"o{i}" for i in range(100)) if partition_for(k, 4) != bad_partition
        )
        await app.publish(TOPIC, TaskCreated(task_id=other))
        worker = Worker(
            app,
            commit_interval=0.01,
            middleware=default_middleware(Retry(base_delay=0.01, max_delay=0.02)),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await eventually(lambda: len(attempts) >= 3 and other in done)
            # Still running, the event still pending and visible as lag.
            assert not task.done()
            rows = {row.partition: row for row in await group_rows(app, "g")}
            assert rows[bad_partition].lag == 1
            assert rows[bad_partition].committed in (None, 0)
            await wait_for_lag(app, "g", 1)  # the other partition moved on
            assert "bad" not in done
            failing = False
            await eventually(lambda: "bad" in done)
            await wait_for_lag(app, "g", 0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
    assert attempts == list(range(1, len(attempts) + 1))
    assert worker.stats.failed_attempts == len(attempts) - 1
    assert worker.stats.handled == 2
    assert bad.id in caplog.text
    assert "smtp is down" in caplog.text


async def test_a_handler_exception_does_not_stop_later_events_of_other_groups() -> None:
    app = make_app()
    healthy: list[str] = []

    @app.subscriber(TOPIC, group="broken")
    async def broken(payload: TaskCreated) -> None:
        raise ValueError("always")

    @app.subscriber(TOPIC, group="healthy")
    async def fine(payload: TaskCreated) -> None:
        healthy.append(payload.task_id)

    async with app, running(app) as worker:
        await app.publish_many(TOPIC, [TaskCreated(task_id=f"t{i}") for i in range(5)])
        await eventually(lambda: len(healthy) == 5)
        await eventually(lambda: worker.stats.failed_attempts >= 5)
        assert await lag(app, "broken") == 5
    assert await lag(app, "healthy") == 0


async def test_a_handler_changing_a_raw_payload_does_not_change_it_for_other_groups() -> None:
    app = make_app()
    a_done = asyncio.Event()
    b_saw: list[Any] = []

    @app.subscriber(TOPIC, group="a")
    async def in_a(payload: Any) -> None:
        payload["seen_by"] = "a"
        payload["items"].append("from a")
        a_done.set()

    @app.subscriber(TOPIC, group="b")
    async def in_b(payload: Any) -> None:
        await a_done.wait()
        b_saw.append(payload)

    async with app, running(app):
        await app.publish(TOPIC, {"items": []}, type="note.added", subject="n")
        await eventually(lambda: len(b_saw) == 1)
    assert b_saw == [{"items": []}]


# -- shutdown ------------------------------------------------------------------------------


async def test_stop_lets_the_running_handler_finish_and_commits_it() -> None:
    app = make_app()
    gate = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        started.append(payload.seq)
        await gate.wait()
        finished.append(payload.seq)

    async with app:
        await app.publish_many(TOPIC, [TaskCreated(task_id="k", seq=i) for i in range(3)])
        worker = Worker(app, commit_interval=60)  # only the final commit can commit
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await eventually(lambda: started == [0])
        stop.set()
        # Longer than the worker's fetch timeout (0.25 s): by now it is shutting down.
        await asyncio.sleep(0.5)
        assert not task.done()  # waiting for the handler, not abandoning it
        assert started == [0]
        gate.set()
        await asyncio.wait_for(task, 5)
        assert finished == [0]
        (row,) = [
            r
            for r in await group_rows(app, "g")
            if r.topic == TOPIC and r.partition == partition_for("k", 4)
        ]
        assert row.committed == 1  # the finished one, not the two never started
        assert row.lag == 2

        # The next run picks up exactly where this one stopped.
        async with running(app):
            await eventually(lambda: finished == [0, 1, 2])
            await wait_for_lag(app, "g", 0)


async def test_stop_during_retries_leaves_the_event_for_the_next_run() -> None:
    app = make_app()
    fail = True
    handled: list[str] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        if fail:
            raise RuntimeError("down")
        handled.append(payload.task_id)

    async with app:
        await app.publish(TOPIC, TaskCreated(task_id="t"))
        # A backoff no run waits out: a stop that did not cut it short fails the test by
        # its time, whatever a loaded machine does to a normal stop's.
        slow = default_middleware(Retry(base_delay=600.0, max_delay=600.0))
        async with running(app, middleware=slow) as worker:
            await eventually(lambda: worker.stats.retries == 1, what="the backoff under way")
            started = time.monotonic()
        assert time.monotonic() - started < 60.0  # stop cuts the backoff short
        assert await lag(app, "g") == 1
        fail = False
        async with running(app):
            await eventually(lambda: handled == ["t"])
            await wait_for_lag(app, "g", 0)


# -- poison records -------------------------------------------------------------------------


async def test_an_undecodable_record_does_not_block_its_partition() -> None:
    app = make_app()
    seen: list[str] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        seen.append(payload.task_id)

    async with app:
        await app.transport.append(TOPIC, [("k", b"\xff\xfe not json at all")])
        await app.transport.append(TOPIC, [("k", b'{"specversion":"1.0"}')])
        await app.publish(TOPIC, TaskCreated(task_id="k"))
        async with running(app) as worker:
            await eventually(lambda: seen == ["k"])
            await wait_for_lag(app, "g", 0)
    assert worker.stats.undecodable == 2
    assert worker.stats.handled == 1


async def test_a_record_the_codec_chokes_on_does_not_block_its_partition() -> None:
    app = make_app()
    seen: list[str] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        seen.append(payload.task_id)

    poison = orjson.dumps(
        {"specversion": "1.0", "id": "x", "source": "s", "type": "task.created", "dataversion": "²"}
    )
    async with app:
        await app.transport.append(TOPIC, [("k", poison)])
        await app.publish(TOPIC, TaskCreated(task_id="k"))
        async with running(app) as worker:
            with contextlib.suppress(AssertionError):
                await eventually(lambda: seen == ["k"], timeout=1)
    assert seen == ["k"]
    assert worker.stats.undecodable == 1


async def test_a_payload_that_does_not_match_its_model_does_not_block_its_partition() -> None:
    app = make_app()
    seen: list[str] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        seen.append(payload.task_id)

    async with app:
        # check=False: as a producer without the model would (decision 0052)
        await app.publish(TOPIC, {"wrong": "shape"}, type="task.created", subject="k", check=False)
        await app.publish(TOPIC, TaskCreated(task_id="k"))
        async with running(app) as worker:
            await eventually(lambda: seen == ["k"], timeout=2)
            await wait_for_lag(app, "g", 0)
        assert worker.stats.undecodable == 1


async def test_a_failing_fetch_is_tried_again_and_the_worker_goes_on() -> None:
    app = make_app()
    seen: list[str] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        seen.append(payload.task_id)

    original = app.transport.consumer
    failures = [TransportError("the log went away for a moment")]

    def flaky_consumer(*args: Any, **kwargs: Any) -> Any:
        consumer = original(*args, **kwargs)
        real_fetch = consumer.fetch

        async def fetch(max_records: int, timeout: float) -> Any:
            if failures:
                raise failures.pop()
            return await real_fetch(max_records, timeout)

        consumer.fetch = fetch  # type: ignore[method-assign]
        return consumer

    app.transport.consumer = flaky_consumer  # type: ignore[method-assign]
    async with app:
        await app.publish(TOPIC, TaskCreated(task_id="k"))
        async with running(app):
            await eventually(lambda: seen == ["k"], timeout=10)
    assert not failures


def test_tune_gc_freezes_start_up_objects_and_collects_young_ones_less_often() -> None:
    import gc
    import weakref

    from tidings.worker.worker import YOUNG_COLLECTION_EVERY, tune_gc

    class Node:
        link: Any = None

    before = gc.get_threshold()
    start_up = [Node()]  # alive now, as a worker's modules and app are
    cycle = Node()
    cycle.link = cycle  # garbage that only the collector frees
    gone = weakref.ref(cycle)
    del cycle
    assert gone() is not None
    try:
        assert tune_gc() == before
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, before[1], before[2])
        assert gone() is None, "collected first: frozen garbage would never be freed"
        assert not any(o is start_up for o in gc.get_objects()), "not frozen"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert any(o is start_up for o in gc.get_objects())


async def test_records_fetched_just_before_a_revocation_are_not_handled_after_it() -> None:
    """A revocation that runs in the loop turn after a fetch returned: the fetched
    records must be in their lanes by then, so that the revocation drops them (the one
    already started finishes and is committed). Records handled after the revocation
    would be handled by the partition's next owner too."""
    app = make_app(partitions=1)
    handled: list[int] = []
    revoked = asyncio.Event()
    after_revoke: list[int] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: TaskCreated) -> None:
        handled.append(payload.seq)
        if revoked.is_set():
            after_revoke.append(payload.seq)

    original = app.transport.consumer

    def revoking_consumer(*args: Any, **kwargs: Any) -> Any:
        consumer = original(*args, **kwargs)
        assert isinstance(consumer, MemoryConsumer)
        real_fetch = consumer.fetch

        async def revoke(lost: frozenset[tuple[str, int]]) -> None:
            await consumer.revoke(lost)  # as a rebalance does: on_revoke, then let go
            revoked.set()

        async def fetch(max_records: int, timeout: float) -> Any:
            records = await real_fetch(max_records, timeout)
            if any(r.topic == TOPIC for r in records) and not revoked.is_set():
                # Scheduled before the fetch returns: it runs in the very next turn.
                asyncio.get_running_loop().create_task(revoke(consumer.assignment()))
            return records

        consumer.fetch = fetch  # type: ignore[method-assign]
        return consumer

    app.transport.consumer = revoking_consumer  # type: ignore[method-assign]
    async with app:
        await app.publish_many(TOPIC, [TaskCreated(task_id="k", seq=i) for i in range(10)])
        worker = Worker(app)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(revoked.wait(), 5)
        await asyncio.sleep(0.3)  # longer than a fetch: anything left would run now
        stop.set()
        await asyncio.wait_for(task, 5)
        (row,) = [r for r in await group_rows(app, "g") if r.topic == TOPIC]
    assert after_revoke == []
    # What was handled is what was committed: the next owner starts right after it.
    assert row.committed == len(handled)
    assert handled == list(range(len(handled)))


async def test_a_failed_dead_letter_read_after_a_rebalance_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 15, finding 6: after the assignment changed, one failed read of the dead
    # letters (on NATS, a stream without a leader for a moment) ended the whole worker.
    monkeypatch.setattr("tidings.worker.group.UNHANDLED_PAUSE", 0.01)
    name = f"memory://rebalance-{random.random()}?partitions=4"
    first, second = Tidings(name, service="a"), Tidings(name, service="b")
    handled: list[str] = []
    for app in (first, second):
        app.event("task.created", subject="task_id")(TaskCreated)

        @app.subscriber("tasks", group="mail")
        async def handle(task: TaskCreated) -> None:
            handled.append(task.task_id)

    async with first, second, running(first) as worker:
        runner = await the_runner(worker)
        real = runner.intake.log.refresh
        failures: list[int] = []

        async def failing_once() -> None:
            if not failures:
                failures.append(1)
                raise TransportError("the stream has no leader")
            await real()

        runner.intake.log.refresh = failing_once
        async with running(second):  # the first worker gives half its partitions up
            await eventually(lambda: bool(failures), what="the failed read")
            for i in range(40):
                await first.publish("tasks", TaskCreated(task_id=f"t{i}"))
            await eventually(lambda: len(set(handled)) == 40, what="every event handled")
            assert not runner.stopping, "the first worker ended"
    assert sorted(set(handled)) == sorted(f"t{i}" for i in range(40))
