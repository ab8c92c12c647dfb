"""Delayed events: ``publish(..., delay=...)`` / ``deliver_at=...`` wait in the scheduler
table and are appended once due, no earlier and promptly after, across restarts."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tidings import Tidings
from tidings.errors import ConfigError, EventTooLarge
from tidings.testing import eventually, running
from tidings.transports.memory import MemoryTransport


class Reminder(BaseModel):
    task_id: str
    n: int = 0


def make_app(url: str, **options: Any) -> Tidings:
    app = Tidings(url, service="test", **options)
    app.event("task.reminder_due", subject="task_id")(Reminder)
    return app


async def count(app: Tidings, topic: str) -> int:
    return sum(i.events for i in await app.transport.topics() if i.name == topic)


async def test_a_delayed_event_arrives_no_earlier_than_asked_and_promptly_after(
    sqlite_url: str,
) -> None:
    app = make_app(sqlite_url)
    seen: list[tuple[float, str]] = []

    @app.subscriber("reminders", group="push")
    async def push(reminder: Reminder, ctx: Any) -> None:
        seen.append((time.time(), ctx.event.id))

    async with app, running(app):
        asked = time.time()
        event = await app.publish("reminders", Reminder(task_id="t-1"), delay=0.6)
        await eventually(lambda: len(seen) == 1, timeout=5)
    ((at, event_id),) = seen
    assert event_id == event.id
    assert at - asked >= 0.6
    assert at - asked < 0.6 + 1.0  # the relay polls every 50 ms; the worker fetches at once


async def test_delayed_events_wait_durably_and_are_sent_by_a_later_worker(
    sqlite_url: str,
) -> None:
    """The publisher and the worker are different app objects (think: processes)."""
    publisher = make_app(sqlite_url)
    # Far enough ahead that it is still to come when the publish runs on a loaded
    # machine (0.5 s was not: a time already past publishes at once).
    due = datetime.now(UTC) + timedelta(seconds=3)
    async with publisher:
        sent = await publisher.publish_many(
            "reminders", [Reminder(task_id="t-1", n=i) for i in range(3)], deliver_at=due
        )
        await publisher.publish("reminders", Reminder(task_id="t-2"), delay=3600)
        assert await count(publisher, "reminders") == 0
        status = await publisher.scheduler.status()  # type: ignore[union-attr]
        assert status.pending == 4

    worker_app = make_app(sqlite_url)
    got: list[Any] = []

    @worker_app.subscriber("reminders", group="push")
    async def push(reminder: Reminder, ctx: Any) -> None:
        got.append((reminder.n, ctx.event.id))

    async with worker_app, running(worker_app):
        await eventually(lambda: len(got) == 3, timeout=60)
        assert datetime.now(UTC) >= due
        assert got == [(i, e.id) for i, e in enumerate(sent)]  # one key, in order
        # The relay appends, then marks its rows sent in its own transaction, so the
        # worker may see the events a moment before the mark: wait for it.
        scheduler = worker_app.scheduler
        assert scheduler is not None

        async def marked() -> bool:
            return (await scheduler.status()).pending == 1

        await eventually(marked, timeout=5, what="the three due rows marked sent")
        status = await scheduler.status()
        assert (status.pending, status.scheduled) == (1, 1)  # the one due in an hour waits


async def test_a_time_in_the_past_publishes_at_once(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    async with app:
        await app.publish(
            "reminders", Reminder(task_id="t"), deliver_at=datetime(2020, 1, 1, tzinfo=UTC)
        )
        await app.publish("reminders", Reminder(task_id="t"), delay=0)
        assert await count(app, "reminders") == 2


@pytest.mark.parametrize(
    "where", ["memory", "postgresql", pytest.param("kafka", marks=pytest.mark.integration)]
)
async def test_delayed_events_on_memory_kafka_and_a_postgresql_scheduler(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url, scheduler = "memory://", None
    if where == "postgresql":
        scheduler = request.getfixturevalue("pg_url")
    if where == "kafka":  # the scheduler table lives in a database beside Kafka
        url = request.getfixturevalue("kafka_url")
        scheduler = f"sqlite:///{tmp_path / 'scheduler.db'}"
    app = make_app(url, scheduler=scheduler)
    got: list[int] = []

    @app.subscriber("reminders", group="push")
    async def push(reminder: Reminder) -> None:
        got.append(reminder.n)

    async with app, running(app):
        await app.publish_many(
            "reminders", [Reminder(task_id="k", n=i) for i in range(5)], delay=0.2
        )
        await eventually(lambda: got == [0, 1, 2, 3, 4], timeout=5)
    await app.scheduler.dispose()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"delay": 5, "deliver_at": datetime.now(UTC)}, "not both"),
        ({"delay": -1}, "delay must be seconds >= 0"),
        ({"delay": "soon"}, "delay must be seconds >= 0"),
        ({"deliver_at": datetime(2030, 1, 1)}, "has no time zone"),
        ({"deliver_at": "2030-01-01T00:00:00Z"}, "deliver_at must be a datetime"),
    ],
)
async def test_bad_delays_are_refused_and_nothing_is_scheduled(
    sqlite_url: str, options: dict[str, Any], says: str
) -> None:
    app = make_app(sqlite_url)
    async with app:
        with pytest.raises(ConfigError, match=says):
            await app.publish("reminders", Reminder(task_id="t"), **options)
        assert await count(app, "reminders") == 0


async def test_an_oversized_delayed_event_is_refused_before_it_is_scheduled(
    sqlite_url: str,
) -> None:
    app = make_app(sqlite_url, max_event_bytes=1024)
    async with app:
        with pytest.raises(EventTooLarge):
            await app.publish(
                "reminders", {"task_id": "x" * 2000}, type="task.reminder_due", delay=1
            )
        await app.publish("reminders", Reminder(task_id="t"), delay=60)
        status = await app.scheduler.status()  # type: ignore[union-attr]
        assert status.pending == 1  # only the good one


async def test_a_transport_without_a_scheduler_says_how_to_configure_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TIDINGS_SCHEDULER_URL", raising=False)
    transport = MemoryTransport("memory://")
    transport.url = "kafka://127.0.0.1:9092"  # a transport with no default scheduler
    app = make_app("kafka://127.0.0.1:9092", transport=transport)
    assert app.scheduler is None
    async with app:
        with pytest.raises(ConfigError, match=r"need a scheduler database.*TIDINGS_SCHEDULER_URL"):
            await app.publish("reminders", Reminder(task_id="t"), delay=10)


@pytest.mark.integration
async def test_on_nats_delayed_events_wait_in_the_stream_with_no_scheduler_database(
    nats_url: str,
) -> None:
    """NATS holds a delayed event itself (a message schedule in the topic's stream):
    no scheduler table, no relay; the event waits durably across the publisher's exit."""
    publisher = make_app(nats_url)
    async with publisher:
        assert publisher.scheduler is None
        asked = time.time()
        early = await publisher.publish("reminders", Reminder(task_id="t-1", n=1), delay=1.2)
        late = await publisher.publish("reminders", Reminder(task_id="t-1", n=2), delay=2.5)
        assert await count(publisher, "reminders") == 0  # nothing in any partition yet
    worker_app = make_app(nats_url)
    seen: list[tuple[float, str, int]] = []

    @worker_app.subscriber("reminders", group="push")
    async def push(reminder: Reminder, ctx: Any) -> None:
        seen.append((time.time(), ctx.event.id, reminder.n))

    async with worker_app, running(worker_app):
        await eventually(lambda: len(seen) == 2, timeout=10)
    assert [(event_id, n) for _, event_id, n in seen] == [(early.id, 1), (late.id, 2)]
    for (at, _, _), delay in zip(seen, (1.2, 2.5), strict=True):
        assert delay <= at - asked < delay + 1.5
    async with worker_app:
        assert await count(worker_app, "reminders") == 2


async def test_a_worker_that_schedules_nothing_logs_nothing_of_the_scheduler_relay_at_info(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every worker runs the delayed-event relay; most never schedule anything. Its
    lease is taken on start and released on stop at DEBUG; it speaks up (INFO) once a
    delayed event is due, and then says it released the lease too."""
    caplog.set_level(logging.DEBUG, "tidings.outbox")
    app = make_app(sqlite_url)
    handled: list[str] = []

    @app.subscriber("reminders", group="push")
    async def push(reminder: Reminder) -> None:
        handled.append(reminder.task_id)

    relay = app.scheduler_relay()
    assert relay is not None
    assert relay.quiet
    async with app, running(app):
        await app.publish("reminders", Reminder(task_id="now"))
        await eventually(lambda: handled == ["now"], timeout=10)
        await eventually(lambda: "holds the lease; relaying" in caplog.text, timeout=10)
    relay_lines = [r for r in caplog.records if r.name == "tidings.outbox"]
    assert [r.levelname for r in relay_lines] == ["DEBUG", "DEBUG"], caplog.text
    assert relay_lines[0].getMessage().endswith("holds the lease; relaying")
    assert relay_lines[1].getMessage().endswith("released the lease")
    caplog.clear()
    async with app, running(app):
        scheduler = app.scheduler
        assert scheduler is not None
        # Due at once, through the scheduler table (a short delay= could be past already).
        later = app.build(Reminder(task_id="later"))
        await scheduler.add("reminders", [later], datetime.now(UTC))
        await eventually(lambda: handled == ["now", "later"], timeout=10)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tidings.outbox"]
    assert [level for level, _ in said if level != "DEBUG"] == ["INFO", "INFO"], said
    assert said[-1] == ("INFO", "outbox-relay:tidings_scheduled: released the lease")
