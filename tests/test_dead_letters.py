"""Retry policies and dead letters on a real SQLite log: what is kept, that the
partition moves on, replay to one group only, sequenced parking, purge, the filters."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import tracemalloc
from typing import Any, cast

import orjson
import pytest
from pydantic import BaseModel

from tests.conftest import LOGS, log_url
from tidings import Tidings
from tidings.admin import group_rows
from tidings.codec import encode
from tidings.dead_letters import (
    DeadLetter,
    DeadLetterLog,
    Filter,
    depths,
    dlq_topic,
    open_log,
    purge,
    replay,
    replay_plan,
)
from tidings.errors import ConfigError, RecordRejected, TopicNotFound, TransportError
from tidings.middleware import Delivery, Retry, default_middleware
from tidings.partitioning import partition_for
from tidings.testing import eventually, running
from tidings.transport import Record

FAST = {"base_delay": 0.005, "max_delay": 0.01}


class Task(BaseModel):
    task_id: str
    n: int = 0


def make_app(url: str) -> Tidings:
    app = Tidings(url, service="test")
    app.event("task.created", subject="task_id")(Task)
    return app


@pytest.fixture(params=LOGS)
def url(request: pytest.FixtureRequest) -> str:
    return log_url(request, partitions=4)


async def entries(app: Tidings, group: str, *, everything: bool = False) -> list[DeadLetter]:
    log = await open_log(app.transport, group)
    return [e for e, _ in log.listing(include_resolved=everything)]


async def wait_dead(app: Tidings, group: str, count: int) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    async def enough() -> bool:
        nonlocal found
        try:
            found = await entries(app, group)
        except TopicNotFound:
            return False
        return len(found) >= count

    await eventually(enough, what=f"{count} dead letter(s) in {group}")
    return found


# -- retry policy ----------------------------------------------------------------------


async def test_a_handler_that_keeps_failing_is_dead_lettered_with_everything_needed(
    url: str,
) -> None:
    app = make_app(url)
    attempts: list[int] = []
    handled: list[int] = []

    @app.subscriber("tasks", group="mail", retry=Retry(max_attempts=3, **FAST))
    async def send(task: Task, ctx: Any) -> None:
        if task.n == 0:
            attempts.append(ctx.attempt)
            raise TimeoutError(f"smtp timed out for {task.task_id}")
        handled.append(task.n)

    async with app, running(app) as worker:
        first = await app.publish("tasks", Task(task_id="t-1", n=0), correlation_id="req-7")
        await app.publish("tasks", Task(task_id="t-1", n=1))  # same key: must not be stuck
        (dead,) = await wait_dead(app, "mail", 1)
        await eventually(lambda: handled == [1], what="the next event of the key")
        (record,) = await app.transport.read("tasks", partition_for("t-1", 4), 0, 1)
        assert await depths(app.transport, ["mail", "other"]) == {"mail": 1, "other": 0}
    assert attempts == [1, 2, 3]
    assert worker.stats.dead_lettered == 1
    assert worker.stats.failed_attempts == 3
    # The original bytes, byte for byte, and where they were.
    assert dead.value == record.value == encode(first)
    assert (dead.topic, dead.partition, dead.offset) == ("tasks", record.partition, 0)
    assert dead.timestamp == record.timestamp
    assert dead.key == "t-1"
    assert (dead.event_id, dead.type, dead.correlationid) == (first.id, "task.created", "req-7")
    assert dead.group == "mail"
    assert dead.reason == "failed"
    assert dead.handler == send.__qualname__
    assert dead.error_type == "TimeoutError"
    assert dead.error_message == "smtp timed out for t-1"
    assert dead.traceback is not None
    assert "in send" in dead.traceback
    assert "TimeoutError: smtp timed out" in dead.traceback
    assert dead.attempts == 3
    assert dead.first_failure <= dead.last_failure <= dead.dead_at <= time.time()
    assert dead.last_failure - dead.first_failure > 0  # two back-off waits between


async def test_errors_the_policy_never_retries_go_to_the_dead_letters_at_once(url: str) -> None:
    app = make_app(url)
    calls: list[str] = []
    policy = Retry(max_attempts=5, never=(ValueError,), retry_on=(OSError, ValueError), **FAST)

    @app.subscriber("tasks", group="g", retry=policy)
    async def handler(task: Task) -> None:
        calls.append(task.task_id)
        if task.task_id == "bad":
            raise ValueError("no such user")  # in retry_on, but also in never
        if task.task_id == "typo":
            raise KeyError("not in retry_on")
        raise ConnectionResetError("retried, then given up")  # an OSError

    async with app, running(app):
        await app.publish_many(
            "tasks", [Task(task_id="bad"), Task(task_id="typo"), Task(task_id="flaky")]
        )
        dead = await wait_dead(app, "g", 3)
    by_id = {d.key: d for d in dead}
    assert by_id["bad"].attempts == 1
    assert by_id["bad"].error_type == "ValueError"
    assert by_id["typo"].attempts == 1
    assert by_id["typo"].error_type == "KeyError"
    assert by_id["flaky"].attempts == 5
    assert by_id["flaky"].error_type == "ConnectionResetError"
    assert sorted(calls) == sorted(["bad", "typo", *["flaky"] * 5])


async def test_the_on_exhausted_hook_sees_the_delivery_and_a_broken_hook_changes_nothing(
    url: str,
) -> None:
    app = make_app(url)
    seen: list[tuple[str, int, str]] = []

    async def hook(delivery: Delivery, error: BaseException) -> None:
        seen.append((delivery.event.subject or "", delivery.attempt, repr(error)))

    def broken(delivery: Delivery, error: BaseException) -> None:
        raise RuntimeError("the hook itself fails")

    @app.subscriber("tasks", group="a", retry=Retry(max_attempts=2, on_exhausted=hook, **FAST))
    async def a(task: Task) -> None:
        raise OSError("down")

    @app.subscriber("tasks", group="b", retry=Retry(max_attempts=1, on_exhausted=broken))
    def b(task: Task) -> None:  # a sync handler, in a thread
        raise OSError("down too")

    async with app, running(app):
        await app.publish("tasks", Task(task_id="t-1"))
        await wait_dead(app, "a", 1)
        await wait_dead(app, "b", 1)
    assert seen == [("t-1", 2, "OSError('down')")]


def test_retry_policies_with_impossible_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"max_attempts=\.\.\.\) must be an int >= 1"):
        Retry(max_attempts=0)
    with pytest.raises(ConfigError, match=r"never=\.\.\.\) takes a tuple of exception classes"):
        Retry(never=ValueError)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"retry_on=\.\.\.\) takes a tuple"):
        Retry(retry_on=("TimeoutError",))  # type: ignore[arg-type]
    app = Tidings("memory://", service="t")
    with pytest.raises(ConfigError, match=r"takes a tidings\.Retry"):
        app.subscriber("t", group="g", retry={"max_attempts": 3})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"group name 'mail\.dlq' is not valid.*no dots"):
        app.subscriber("t", group="mail.dlq")


async def test_retry_forever_keeps_the_partition_waiting(url: str) -> None:
    app = make_app(url)
    failures = 0

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=None, **FAST))
    async def handler(task: Task) -> None:
        nonlocal failures
        failures += 1
        raise OSError("down")

    async with app, running(app) as worker:
        await app.publish("tasks", Task(task_id="t"))
        await eventually(lambda: failures > 30, what="many attempts")
        assert worker.stats.dead_lettered == 0


# -- poison ----------------------------------------------------------------------------


async def test_poison_goes_to_the_dead_letters_at_once_with_its_reason(url: str) -> None:
    app = Tidings(url, service="test", max_event_bytes=4096)
    app.event("task.created", subject="task_id")(Task)

    # A new required field breaks BACKWARD: declared as a new major version.
    @app.event("task.created", version=2, subject="task_id", breaking=True)
    class TaskV2(BaseModel):
        task_id: str
        title: str

    handled: list[str] = []

    @app.subscriber("tasks", group="g")
    async def handler(task: Any) -> None:
        handled.append(task.task_id)

    good = app.build(Task(task_id="k"))
    other = Tidings(url, service="test")  # a producer that knows more versions
    future = other.build({"task_id": "k"}, type="task.created", version=3)
    mismatch = app.build({"task_id": "k", "n": "many"}, type="task.created", version=1, check=False)
    big = other.build({"task_id": "k", "pad": "x" * 5000}, type="task.created", version=1)
    raw = [
        b"{not json",
        b'{"specversion": "1.0", "id": "\xff\xfe", "source": "s", "type": "a.b"}',
        encode(future),
        encode(mismatch),
        encode(big),
        b'{"specversion": "1.0", "source": "s", "type": "a.b"}',  # no id
        encode(good),
    ]
    async with app:
        await app.transport.append("tasks", [("k", value) for value in raw])
        async with running(app) as worker:
            dead = await wait_dead(app, "g", 6)
            await eventually(lambda: handled == ["k"], what="the good event after the poison")
    assert [d.reason for d in dead] == ["poison"] * 6
    assert [d.value for d in dead] == raw[:6]
    assert [d.attempts for d in dead] == [1] * 6
    reasons = [f"{d.error_type}: {d.error_message}" for d in dead]
    assert "JSON" in reasons[0]
    assert "UTF-8" in reasons[1]
    assert "version 3" in reasons[2]
    assert "task.created" in reasons[2]
    assert "n:" in reasons[3]  # the field that failed validation
    assert "bytes; the limit is 4,096" in reasons[4]
    assert "id" in reasons[5]
    assert dead[0].event_id is None  # nothing could be read from it
    assert dead[3].event_id == mismatch.id
    assert dead[3].handler == handler.__qualname__
    assert worker.stats.undecodable == 6


# -- replay ----------------------------------------------------------------------------


async def test_replay_reaches_only_that_group_keeps_ids_and_is_safe_twice(url: str) -> None:
    app = make_app(url)
    broken = True
    mail: list[tuple[str, str | None]] = []
    audit: list[str] = []

    @app.subscriber("tasks", group="mail", retry=Retry(max_attempts=1))
    async def send(task: Task, ctx: Any) -> None:
        if broken:
            raise OSError("smtp down")
        mail.append((ctx.event.id, ctx.correlationid))

    @app.subscriber("tasks", group="audit")
    async def record(task: Task, ctx: Any) -> None:
        audit.append(ctx.event.id)

    async with app, running(app) as worker:
        events = await app.publish_many(
            "tasks", [Task(task_id=f"t-{i}") for i in range(5)], correlation_id="req-1"
        )
        await wait_dead(app, "mail", 5)
        await eventually(lambda: len(audit) == 5, what="audit")
        broken = False
        assert await replay(app.transport, "mail", Filter()) == 5
        await eventually(lambda: len(mail) == 5, what="the replayed mail")
        assert await replay(app.transport, "mail", Filter()) == 0  # nothing left to replay
        await asyncio.sleep(0.3)
        log = await open_log(app.transport, "mail")
        await eventually(lambda: log.depth() == 0)
    assert sorted(mail) == sorted((e.id, "req-1") for e in events)
    assert len(audit) == 5  # the other group saw each event once, never the replay
    assert worker.stats.dead_lettered == 5
    states = {s for _, s in log.listing(include_resolved=True)}
    assert states == {"resolved"}


async def test_a_replay_sent_twice_is_handled_once(url: str) -> None:
    """A replay interrupted between sending and marking sends its entries again."""
    app = make_app(url)
    broken = True
    handled: list[str] = []

    @app.subscriber("tasks", group="mail", retry=Retry(max_attempts=1))
    async def send(task: Task) -> None:
        if broken:
            raise OSError("down")
        handled.append(task.task_id)

    async with app:
        async with running(app):
            await app.publish("tasks", Task(task_id="t-1"))
            (dead,) = await wait_dead(app, "mail", 1)
        broken = False
        # The replay's first step twice, as a crash before its mark would leave it.
        for _ in range(2):
            await app.transport.append("mail.retry", [(dead.key, dead.encode())])
        async with running(app) as worker:
            await eventually(lambda: handled == ["t-1"])
            await eventually(lambda: worker.stats.skipped == 1, what="the second copy skipped")
    assert handled == ["t-1"]


async def test_a_replay_that_fails_again_is_a_new_dead_letter(url: str) -> None:
    app = make_app(url)

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=2, **FAST))
    async def handler(task: Task) -> None:
        raise OSError("still down")

    async with app, running(app):
        await app.publish("tasks", Task(task_id="t-1"))
        (first,) = await wait_dead(app, "g", 1)
        await replay(app.transport, "g", Filter())

        async def replaced() -> bool:
            current = await entries(app, "g")
            return len(current) == 1 and current[0].entry != first.entry

        await eventually(replaced, what="a new entry for the failed replay")
        (second,) = await entries(app, "g")
    assert second.replay_of == first.entry
    assert second.value == first.value
    assert second.offset == first.offset
    assert second.attempts == 2


async def test_a_group_starting_at_latest_still_reads_replays_sent_while_it_was_down(
    url: str,
) -> None:
    app = make_app(url)
    broken = True
    handled: list[str] = []

    @app.subscriber("tasks", group="late", start_from="latest", retry=Retry(max_attempts=1))
    async def handler(task: Task) -> None:
        if broken:
            raise OSError("down")
        handled.append(task.task_id)

    async with app:
        async with running(app):  # joined at the end of the topic
            await app.publish("tasks", Task(task_id="t-1"))
            await wait_dead(app, "late", 1)
        broken = False
        await replay(app.transport, "late", Filter())
        async with running(app):
            await eventually(lambda: handled == ["t-1"])


# -- sequenced groups ------------------------------------------------------------------


async def test_a_sequenced_group_parks_a_key_behind_its_dead_letter_and_replays_in_order(
    url: str,
) -> None:
    app = make_app(url)
    app.group("ledger", sequenced=True)
    failing = {"a-0"}
    order: list[str] = []

    @app.subscriber("tasks", group="ledger", retry=Retry(max_attempts=2, **FAST))
    async def post(task: Task) -> None:
        name = f"{task.task_id}-{task.n}"
        if name in failing:
            raise OSError(f"cannot post {name}")
        order.append(name)

    async with app, running(app) as worker:
        await app.publish_many(
            "tasks",
            [Task(task_id=k, n=i) for i in range(3) for k in ("a", "b")],
        )
        dead = await wait_dead(app, "ledger", 3)
        await eventually(lambda: [o for o in order if o[0] == "b"] == ["b-0", "b-1", "b-2"])
        assert [o for o in order if o[0] == "a"] == []  # the whole key waits
        assert [(d.reason, d.key) for d in dead] == [
            ("failed", "a"),
            ("parked", "a"),
            ("parked", "a"),
        ]
        assert dead[1].parked_behind == dead[0].entry == dead[2].parked_behind
        assert worker.stats.parked == 2
        assert "parked behind dead letter" in dead[1].error_message

        # While parked, a new event of the key is parked too, even after the replay
        # started failing again: the first one fails on replay, so all stay in order.
        await replay(app.transport, "ledger", Filter(ids=frozenset({dead[0].entry})))

        async def reparked() -> bool:
            return {e.entry for e in await entries(app, "ledger")}.isdisjoint(
                {dead[0].entry}
            ) and len(await entries(app, "ledger")) == 3

        await eventually(reparked, what="the failed replay taking its place")
        await app.publish("tasks", Task(task_id="a", n=3))
        await wait_dead(app, "ledger", 4)
        assert order.count("a-1") == 0

        failing.clear()
        assert await replay(app.transport, "ledger", Filter()) == 4
        await eventually(lambda: [o for o in order if o[0] == "a"] == ["a-0", "a-1", "a-2", "a-3"])
        await app.publish("tasks", Task(task_id="a", n=4))
        await eventually(lambda: order[-1] == "a-4", what="the key unparked")
        log = await open_log(app.transport, "ledger")
    assert log.depth() == 0


async def test_replaying_a_later_entry_alone_parks_it_again_behind_the_earlier_one(
    url: str,
) -> None:
    app = make_app(url)
    app.group("ledger", sequenced=True)
    order: list[int] = []

    @app.subscriber("tasks", group="ledger", retry=Retry(max_attempts=1))
    async def post(task: Task) -> None:
        if task.n == 0:
            raise OSError("no")
        order.append(task.n)

    async with app, running(app):
        await app.publish_many("tasks", [Task(task_id="a", n=i) for i in range(3)])
        dead = await wait_dead(app, "ledger", 3)
        await replay(app.transport, "ledger", Filter(ids=frozenset({dead[2].event_id or ""})))
        await asyncio.sleep(0.5)

        async def still_three() -> bool:
            current = await entries(app, "ledger")
            return len(current) == 3 and dead[2].entry not in {e.entry for e in current}

        await eventually(still_three, what="the lone replay parked again")
    assert order == []


# -- purge, filters, depth -------------------------------------------------------------


async def test_purge_drops_only_the_matching_entries(url: str) -> None:
    app = make_app(url)

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=1))
    async def handler(task: Task) -> None:
        raise (OSError if task.n % 2 else TimeoutError)("no")

    async with app, running(app):
        await app.publish_many("tasks", [Task(task_id=f"t-{i}", n=i) for i in range(6)])
        await wait_dead(app, "g", 6)
        assert await purge(app.transport, "g", Filter(error_types=frozenset({"TimeoutError"}))) == 3
        remaining = await entries(app, "g")
        assert {d.error_type for d in remaining} == {"OSError"}
        assert await depths(app.transport, ["g"]) == {"g": 3}
        assert (
            await replay(app.transport, "g", Filter(error_types=frozenset({"TimeoutError"}))) == 0
        )


def entry(**changes: Any) -> DeadLetter:
    base: dict[str, Any] = {
        "entry": "e-1", "group": "g", "reason": "failed", "topic": "t", "partition": 0,
        "offset": 0, "timestamp": 0, "key": None, "value": b"x", "error_type": "builtins.X",
        "error_message": "m", "traceback": None, "attempts": 1, "first_failure": 100.0,
        "last_failure": 100.0, "dead_at": 100.0, "event_id": "ev-1", "type": "a.b",
    }  # fmt: skip
    base.update(changes)
    return DeadLetter(**base)


def test_filters_match_type_error_type_time_and_ids() -> None:
    e = entry(error_type="smtplib.SMTPException", type="task.created", dead_at=200.0)
    assert Filter()(e)
    assert Filter(types=frozenset({"task.created"}))(e)
    assert not Filter(types=frozenset({"task.deleted"}))(e)
    assert Filter(error_types=frozenset({"SMTPException"}))(e)  # the short name works
    assert Filter(error_types=frozenset({"smtplib.SMTPException"}))(e)
    assert not Filter(error_types=frozenset({"TimeoutError"}))(e)
    assert Filter(since=200.0, until=200.0)(e)
    assert not Filter(since=201.0)(e)
    assert not Filter(until=199.0)(e)
    assert Filter(ids=frozenset({"e-1"}))(e)
    assert Filter(ids=frozenset({"ev-1"}))(e)
    assert not Filter(ids=frozenset({"e-2"}))(e)


def test_an_entry_survives_its_json_form_and_a_broken_one_is_a_decode_error() -> None:
    from tidings.errors import DecodeError

    e = entry(value=bytes(range(256)), key="k", traceback="tb")
    assert DeadLetter.from_bytes(e.encode()) == e
    doc = e.to_json()
    assert base64.b64decode(doc["value"]) == bytes(range(256))
    for broken in (b"[]", b"{", b'{"kind": "entry"}', b'{"kind": "mark"}'):
        with pytest.raises(DecodeError, match="not a dead-letter entry"):
            DeadLetter.from_bytes(broken)


async def test_foreign_records_in_a_dead_letter_topic_are_ignored(url: str) -> None:
    app = make_app(url)
    async with app:
        await app.transport.create_topic("g.dlq")
        await app.transport.append("g.dlq", [(None, b"hello"), (None, entry().encode())])
        log = DeadLetterLog(app.transport, "g")
        await log.refresh()
        assert [e.entry for e, _ in log.listing()] == ["e-1"]


async def test_a_group_without_dead_letters_is_named_in_the_error(url: str) -> None:
    app = make_app(url)
    async with app:
        await app.transport.create_topic("mail.dlq")
        with pytest.raises(TopicNotFound, match=r"'maill' has no dead-letter topic.*: mail$"):
            await open_log(app.transport, "maill")
        assert dlq_topic("mail") == "mail.dlq"


async def test_a_dead_letter_is_written_once_the_log_is_back(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(url)
    handled: list[int] = []

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=1))
    async def handler(task: Task) -> None:
        if task.n == 0:
            raise OSError("no")
        handled.append(task.n)

    failures = 2
    real_append = app.transport.append

    async def flaky(topic: str, records: Any) -> Any:
        nonlocal failures
        if topic == "g.dlq" and failures:
            failures -= 1
            raise TransportError("disk I/O error")
        return await real_append(topic, records)

    monkeypatch.setattr("tidings.dead_letters.log.WRITE_RETRY", 0.05)
    async with app:
        monkeypatch.setattr(app.transport, "append", flaky)
        async with running(app):
            await app.publish_many("tasks", [Task(task_id="k", n=0), Task(task_id="k", n=1)])
            (dead,) = await wait_dead(app, "g", 1)
            await eventually(lambda: handled == [1])
    assert failures == 0
    assert dead.attempts == 1


async def test_without_the_dead_letter_middleware_a_failure_blocks_its_partition(
    url: str,
) -> None:
    app = make_app(url)
    calls = 0

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=1))
    async def handler(task: Task) -> None:
        nonlocal calls
        calls += 1
        raise OSError("no")

    async with app, running(app, middleware=[Retry()]) as worker:
        await app.publish("tasks", Task(task_id="k"))
        await eventually(lambda: calls >= 2, timeout=5, what="tried again after the pause")
        assert worker.stats.dead_lettered == 0


async def test_default_middleware_dead_letters_outside_retry() -> None:
    from tidings.middleware import DeadLetters

    layers = default_middleware()
    assert isinstance(layers[0], DeadLetters)
    assert isinstance(layers[1], Retry)


async def test_an_event_dead_lettered_by_a_run_that_did_not_commit_is_not_kept_twice(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that crashes after writing a dead letter and before committing meets
    the event again: the next run must not write a second entry for it."""
    app = make_app(url)
    consumer_class = type(app.transport.consumer("g", ["tasks"]))

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=1))
    async def handler(task: Task) -> None:
        raise OSError("no")

    async def no_commit(self: Any, offsets: Any) -> None:
        return None

    async with app:
        with monkeypatch.context() as patch:
            patch.setattr(consumer_class, "commit", no_commit)
            async with running(app):
                await app.publish("tasks", Task(task_id="k"))
                (first,) = await wait_dead(app, "g", 1)
        groups = await app.transport.groups()
        rows = [p for g in groups if g.group == "g" for p in g.partitions if p.topic == "tasks"]
        # As after a crash: handled, not committed. (On Kafka a group that never committed
        # and has no members is gone; SQLite shows the lag.)
        assert not any(r.committed for r in rows)
        async with running(app) as worker:
            await eventually(lambda: worker.stats.dead_lettered == 1, what="met again")
        assert [e.entry for e in await entries(app, "g", everything=True)] == [first.entry]
        lag = sum(r.lag for r in await group_rows(app.transport, "g") if r.topic == "tasks")
        assert lag == 0


async def test_entries_are_listed_in_the_order_they_were_dead_lettered_however_read(
    tmp_path: Any,
) -> None:
    """By ``dead_at``, then the place in the topic, with writers' clocks out of step;
    the order is kept between listings and follows what is read later (issue 23)."""
    app = make_app(f"sqlite:///{tmp_path}/log.db")
    topic = dlq_topic("g")

    async def write(*stamps: tuple[str, float]) -> None:
        written = [entry(entry=name, key="k", dead_at=at, type=name[0]) for name, at in stamps]
        await app.transport.append(topic, [(e.key, e.encode()) for e in written])

    async with app:
        await app.transport.create_topic(topic)
        # a second writer's clock behind the first; two entries in the same instant
        await write(("a0", 5.0), ("a1", 1.0), ("a2", 3.0), ("a3", 3.0), ("a4", 2.0))
        log = await open_log(app.transport, "g")

        def listed(**kw: Any) -> list[str]:
            return [e.entry for e, _ in log.listing(**kw)]

        assert listed() == ["a1", "a4", "a2", "a3", "a0"]
        assert log.ordered() is log.ordered()  # sorted once, then kept
        await write(("b0", 6.0))  # in order: goes at the end
        await log.refresh()
        assert listed() == ["a1", "a4", "a2", "a3", "a0", "b0"]
        await write(("c0", 0.5))  # out of order: sorted again
        await log.refresh()
        assert listed() == ["c0", "a1", "a4", "a2", "a3", "a0", "b0"]
        await log.mark("purged", ["a4"], asyncio.Event())
        assert listed() == ["c0", "a1", "a2", "a3", "a0", "b0"]
        assert listed(include_resolved=True) == ["c0", "a1", "a4", "a2", "a3", "a0", "b0"]
        assert listed(where=Filter(types=frozenset({"a"}))) == ["a1", "a2", "a3", "a0"]
        assert [e.entry for e in log.matching(Filter(since=3.0))] == ["a2", "a3", "a0", "b0"]
        assert log.with_states([log.entries["a4"]]) == [(log.entries["a4"], "purged")]
        # the same order as a sort of every entry by the whole key
        whole = sorted(
            log.entries.values(), key=lambda e: (e.dead_at, e.dlq_partition, e.dlq_offset)
        )
        assert [e.entry for e in log.ordered()] == [e.entry for e in whole]


def test_a_listing_makes_no_object_per_entry_for_the_garbage_collector() -> None:
    """Sorting and matching 5,000 entries holds a few pointers per entry at most, not a
    tuple per entry (a row, a sort key): 50,000 of those alive at once made the
    dashboard's first list page pay for a full collection over the whole process
    (issue 23)."""
    log = DeadLetterLog(cast(Any, None), "g", max_value_bytes=0)
    for i in range(5000):  # dead_at out of the topic's order, as with two writers
        log.add(entry(entry=f"e-{i}", dead_at=float(i % 7), dlq_offset=i, type="a.b"))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ordered = log.ordered()
        chosen = log.matching(Filter(types=frozenset({"a.b"})))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(ordered) == len(chosen) == 5000
    # Two lists and a sort's keys: 24 bytes an entry; a tuple each is 64 more.
    assert peak / 5000 < 40
    assert [(e.dead_at, e.dlq_offset) for e in chosen[:3]] == [(0.0, 0), (0.0, 7), (0.0, 14)]


# -- bounded memory (finding 13) -------------------------------------------------------


async def _write_entries(app: Tidings, group: str, count: int) -> list[DeadLetter]:
    """``count`` entries of 10 keys written to ``group``'s dead-letter topic."""
    written = [
        entry(entry=f"e-{i:05}", key=f"k-{i % 10}", topic="tasks", offset=i, dead_at=100.0 + i)
        for i in range(count)
    ]
    await app.transport.create_topic(dlq_topic(group))
    await app.transport.append(dlq_topic(group), [(e.key, e.encode()) for e in written])
    return written


async def _write_marks(app: Tidings, group: str, state: str, ids: list[str]) -> None:
    marks = [
        (None, orjson.dumps({"kind": "mark", "state": state, "entries": ids[i : i + 7]}))
        for i in range(0, len(ids), 7)
    ]  # keyless: spread over the partitions, mostly not their entries'
    await app.transport.append(dlq_topic(group), marks)


def _memory(log: DeadLetterLog) -> tuple[Any, ...]:
    return (log.entries, log.states, log.by_key, log.by_position)


async def test_a_log_that_forgets_holds_only_the_unresolved_entries(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tidings.dead_letters.log.READ_BATCH", 16)  # many reads per partition
    app = make_app(url)
    async with app:
        written = await _write_entries(app, "g", 600)
        ids = [e.entry for e in written]
        await _write_marks(app, "g", "replayed", ids[:500])
        await _write_marks(app, "g", "resolved", ids[:450])
        await _write_marks(app, "g", "purged", ids[450:480])
        await _write_marks(app, "g", "replayed", ids[:10])  # late: final states stay final
        lean = DeadLetterLog(app.transport, "g", resolved=False, values=False)
        await lean.refresh()
        full = await open_log(app.transport, "g")
    waiting = set(ids[480:])
    assert set(lean.entries) == waiting
    assert set(lean.states) == waiting
    assert {i for ids_ in lean.by_key.values() for i in ids_} == waiting
    assert set(lean.by_position.values()) == waiting
    assert all(e.value == b"" for e in lean.entries.values())
    assert [(e.entry, s) for e, s in lean.listing(include_resolved=True)] == [
        (e.entry, s) for e, s in full.listing()
    ]
    assert lean.depth() == full.depth() == 100
    assert not lean.unresolved(ids[0])  # resolved, and forgotten
    assert not lean.unresolved(ids[460])  # purged
    assert lean.unresolved(ids[490])  # replayed, not yet resolved
    assert full.state(ids[0]) == "resolved"
    assert len(full.entries) == 600


async def test_marks_read_before_their_entries_still_resolve_them(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mark can be read first: from another partition, stamped by a clock behind the
    entry's writer, or appended after a refresh read the entry's partition."""
    app = make_app(url)
    async with app:
        await app.transport.create_topic(dlq_topic("g"))
        lean = DeadLetterLog(app.transport, "g", resolved=False)
        real_read = app.transport.read

        async def marks_first(topic: str, partition: int, offset: int, limit: int) -> Any:
            records = await real_read(topic, partition, offset, limit)
            # A mark's writer whose clock is an hour behind.
            return [r._replace(timestamp=r.timestamp - 3_600_000) if b'"mark"' in r.value
                    else r for r in records]  # fmt: skip

        monkeypatch.setattr(app.transport, "read", marks_first)
        written = await _write_entries(app, "g", 50)
        ids = [e.entry for e in written]
        await _write_marks(app, "g", "resolved", ids[:40])
        await lean.refresh()
        assert set(lean.entries) == set(ids[40:])

        # Read in one refresh, its entry in the next (as if the entry's partition was
        # read before it was appended): the entry is forgotten when it comes.
        late = entry(entry="late", key="k-late", topic="tasks", offset=999)
        await _write_marks(app, "g", "resolved", ["late", *ids[40:45]])
        await lean.refresh()
        await app.transport.append(dlq_topic("g"), [(late.key, late.encode())])
        await lean.refresh()
        assert set(lean.entries) == set(ids[45:])
        # A mark whose entry never comes (its entry forgotten long ago) is not kept.
        await _write_marks(app, "g", "resolved", ["gone"])
        for _ in range(3):
            await lean.refresh()
        assert not lean._early
        assert not lean._early_before


async def test_a_worker_log_forgets_resolved_entries_and_never_revives_them(url: str) -> None:
    app = make_app(url)
    stop = asyncio.Event()
    async with app:
        first = DeadLetterLog(app.transport, "g", resolved=False, values=False)
        await first.create_topics()
        await first.refresh()
        records = [Record("tasks", 0, offset, 0, f"k-{offset % 3}", b"{}") for offset in range(30)]
        written = [
            await first.write(first.entry(r, OSError("no"), reason="failed"), stop) for r in records
        ]
        assert first.blocker("tasks", "k-0", 99) is not None
        await first.mark("replayed", [e.entry for e in written], stop)
        await first.mark("resolved", [e.entry for e in written[:29]], stop)
        assert set(first.entries) == {written[29].entry}
        await first.refresh()  # reads back what it wrote itself
        assert set(first.entries) == {written[29].entry}
        assert first.blocker("tasks", "k-0", 99) is None
        second = DeadLetterLog(app.transport, "g", resolved=False, values=False)
        await second.create_topics()
        await second.refresh()
        assert set(second.entries) == {written[29].entry}
        # A replay sent twice: the second copy's entry reads as resolved (not unresolved).
        await second.mark("resolved", [written[29].entry], stop)
        await first.refresh()
        for dead in (first, second):
            assert _memory(dead) == ({}, {}, {}, {})
            assert not dead.unresolved(written[0].entry)
            assert not dead.unresolved(written[29].entry)


async def test_a_refresh_whose_read_fails_goes_on_from_what_it_applied(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(url)
    async with app:
        written = await _write_entries(app, "g", 2600)  # over 1,000 in a partition
        await _write_marks(app, "g", "resolved", [e.entry for e in written[:2000]])
        reads: list[tuple[int, int]] = []
        failed: list[tuple[int, int]] = []
        real_read = app.transport.read

        async def fails_once(topic: str, partition: int, offset: int, limit: int) -> Any:
            if offset > 0 and not failed:
                failed.append((partition, offset))
                raise TransportError("database is locked")
            reads.append((partition, offset))
            return await real_read(topic, partition, offset, limit)

        monkeypatch.setattr(app.transport, "read", fails_once)
        for lean in (False, True):
            failed.clear()
            dead = DeadLetterLog(app.transport, "g", resolved=not lean)
            with pytest.raises(TransportError, match="locked"):
                await dead.refresh()
            reads.clear()
            await dead.refresh()
            (partition, offset), *_ = failed
            first_read = next(o for p, o in reads if p == partition)
            assert first_read == offset  # nothing applied twice, nothing skipped
            fresh = DeadLetterLog(app.transport, "g", resolved=not lean)
            await fresh.refresh()
            assert _memory(dead) == _memory(fresh)
            assert len(dead.entries) == (600 if lean else 2600)


# -- a dead letter can always be written (finding 14) ----------------------------------


@pytest.fixture(params=["memory", *LOGS])
def any_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://?partitions=4"
    return log_url(request, partitions=4)


async def test_an_original_over_the_limit_is_kept_cut_with_its_size_and_digest(
    any_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tidings.dead_letters.entry.VALUE_LIMIT", 1000)
    app = make_app(any_url)
    handled: list[int] = []

    @app.subscriber("tasks", group="g")
    async def handler(task: Task) -> None:
        handled.append(task.n)

    garbage = bytes(range(256)) * 20  # 5,120 bytes that are no event
    async with app, running(app):
        await app.transport.append("tasks", [("k", garbage), ("k", small := b"{nope")])
        await app.publish("tasks", Task(task_id="k", n=1))
        cut, whole = await wait_dead(app, "g", 2)
        await eventually(lambda: handled == [1], what="the event behind the poison")
        plan = replay_plan(await open_log(app.transport, "g"), Filter())
        assert await replay(app.transport, "g", Filter()) == 1  # only the whole one
    assert (cut.truncated, cut.value, cut.value_size) == (True, garbage[:1000], len(garbage))
    assert cut.value_sha256 == hashlib.sha256(garbage).hexdigest()
    assert (cut.topic, cut.offset, cut.reason) == ("tasks", 0, "poison")
    assert not cut.replayable
    assert (whole.truncated, whole.value, whole.value_size) == (False, small, len(small))
    assert whole.value_sha256 == hashlib.sha256(small).hexdigest()
    assert plan == ([whole], [cut])  # the cut one is not sent, and is reported


async def test_a_cut_entry_sent_to_the_retry_topic_by_hand_is_not_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `replay` never sends a cut entry; another writer might: the worker must not hand
    # the kept prefix to the handler as if it were the event. (The worker's part alone:
    # one transport is enough.)
    monkeypatch.setattr("tidings.dead_letters.entry.VALUE_LIMIT", 1000)
    app = make_app("memory://?partitions=4")
    handled: list[int] = []

    @app.subscriber("tasks", group="g")
    async def handler(task: Task) -> None:
        handled.append(task.n)

    garbage = bytes(range(256)) * 20
    async with app, running(app) as worker:
        await app.transport.append("tasks", [("k", garbage)])
        [cut] = await wait_dead(app, "g", 1)
        assert cut.truncated
        skipped = worker.stats.skipped
        await app.transport.append("g.retry", [(cut.key, cut.encode())])
        await app.publish("tasks", Task(task_id="k", n=1))
        await eventually(lambda: handled == [1], what="the event after the cut entry")
        await eventually(lambda: worker.stats.skipped == skipped + 1, what="the cut one skipped")
        [still] = await entries(app, "g")
    assert still.entry == cut.entry  # it stays in the dead letters


async def test_a_dead_letter_the_log_refuses_is_written_without_the_original(
    any_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Kafka refuses a record over its size limit: the partition moves on."""
    app = make_app(any_url)
    handled: list[int] = []
    refused: list[int] = []

    @app.subscriber("tasks", group="g")
    async def handler(task: Task) -> None:
        handled.append(task.n)

    real_append = app.transport.append

    async def broker_limit(topic: str, records: Any) -> Any:
        if topic == "g.dlq" and any(len(value) > 5000 for _, value in records):
            refused.append(max(len(value) for _, value in records))
            raise RecordRejected("Broker: Message size too large")
        return await real_append(topic, records)

    monkeypatch.setattr("tidings.dead_letters.log.WRITE_RETRY", 0.05)
    garbage = b"\xff" * 6000
    async with app:
        monkeypatch.setattr(app.transport, "append", broker_limit)
        async with running(app):
            await app.transport.append("tasks", [("k", garbage)])
            await app.publish("tasks", Task(task_id="k", n=1))
            (dead,) = await wait_dead(app, "g", 1)
            await eventually(lambda: handled == [1], what="the event behind the poison")
    assert len(refused) == 1  # refused once, never sent again as it was
    assert (dead.truncated, dead.value, dead.value_size) == (True, b"", 6000)
    assert dead.value_sha256 == hashlib.sha256(garbage).hexdigest()
    assert dead.error_type == "tidings.errors.DecodeError"


async def test_a_dead_letter_refused_even_without_the_original_is_not_tried_for_ever() -> None:
    app = make_app("memory://")
    tries = 0

    async def refuses(topic: str, records: Any) -> Any:
        nonlocal tries
        tries += 1
        raise RecordRejected("Broker: Message size too large")

    async with app:
        dead = DeadLetterLog(app.transport, "g", resolved=False, values=False)
        await dead.create_topics()
        app.transport.append = refuses  # type: ignore[method-assign]
        record = Record("tasks", 0, 7, 0, "k", b"x" * 100)
        entry = dead.entry(record, OSError("no"), reason="failed")
        with pytest.raises(RecordRejected, match=r"even a dead letter without the original"):
            await dead.write(entry, asyncio.Event())
    assert tries == 2
    with pytest.raises(ConfigError, match="max_value_bytes"):
        DeadLetterLog(app.transport, "g", max_value_bytes=-1)


def test_an_entry_written_before_values_were_cut_reads_as_whole() -> None:
    old = entry(value=b"abc").to_json()
    for name in ("truncated", "value_size", "value_sha256"):
        del old[name]
    parsed = DeadLetter.from_json(old)
    assert (parsed.truncated, parsed.value_size, parsed.value_sha256) == (False, None, None)
    assert parsed.replayable
    cut = entry(value=b"ab", truncated=True, value_size=9, value_sha256="00ff")
    assert DeadLetter.from_bytes(cut.encode()) == cut


def test_a_dead_letter_keeps_the_whole_original_where_the_log_takes_any_size() -> None:
    # A failed event of 300 KiB (under the 1 MiB event limit) must stay replayable on
    # SQLite; on Kafka and NATS the entry, base64 and all, must fit their record limit.
    from tidings.dead_letters import value_limit
    from tidings.dead_letters.entry import ENTRY_ROOM
    from tidings.transports.kafka import KafkaTransport
    from tidings.transports.memory import MemoryTransport
    from tidings.transports.nats import NatsTransport
    from tidings.transports.sqlite import SQLiteTransport

    assert value_limit(SQLiteTransport("sqlite:///x.db")) is None
    assert value_limit(MemoryTransport("memory://")) is None
    for transport, most in (
        (KafkaTransport("kafka://127.0.0.1:9"), 1_000_000),
        (NatsTransport("nats://127.0.0.1:9"), 1024 * 1024),
    ):
        limit = value_limit(transport)
        assert limit is not None
        assert limit > 600_000
        assert limit * 4 // 3 + ENTRY_ROOM <= most
