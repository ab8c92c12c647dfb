"""The reminders service: durable timers that move, cancel and fire exactly once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.orm import Session

from taskapi.db import make_engine
from taskapi.events import TOPIC, TaskCompleted, TaskCreated, TaskDeleted, TaskUpdated, register
from taskapi.services import serve
from taskapi.services.reminders import Clock, metadata, on_change, pending
from taskapi.settings import Settings
from tests.taskapi.helpers import LogProbe
from tidings import Outbox, Tidings

LEAD = timedelta(minutes=10)
NOW = datetime.now(UTC)


def created(task_id: str = "t1", due: datetime | None = None, **kw: Any) -> TaskCreated:
    return TaskCreated(task_id=task_id, title="Report", due_at=due, created_at=NOW, **kw)


def updated(changed: list[str], due: datetime | None, title: str = "Report") -> TaskUpdated:
    return TaskUpdated(task_id="t1", changed=changed, title=title, due=due, updated_at=NOW)


def ctx(event_id: str = "e1", correlation: str = "c1") -> Any:
    return SimpleNamespace(id=event_id, correlationid=correlation)


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'reminders.db'}")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def apply(engine, event, context=None) -> None:
    with Session(engine) as session, session.begin():
        on_change(session, event, LEAD, context or ctx())


def test_a_due_date_schedules_a_reminder_lead_before_it(engine) -> None:
    due = NOW + timedelta(hours=2)
    apply(engine, created(due=due, assignee="alice"), ctx("e1", "corr-1"))
    (row,) = pending(engine)
    assert row["task_id"] == "t1"
    assert row["remind_at"] == pytest.approx((due - LEAD).timestamp())
    assert (row["assignee"], row["correlation_id"], row["causation_id"]) == (
        "alice",
        "corr-1",
        "e1",
    )


def test_no_due_date_or_an_overdue_task_schedules_nothing(engine) -> None:
    apply(engine, created("t1", due=None))
    apply(engine, created("t2", due=NOW - timedelta(minutes=1)))
    assert pending(engine) == []


def test_a_due_date_closer_than_the_lead_fires_at_once(engine) -> None:
    apply(engine, created(due=datetime.now(UTC) + timedelta(minutes=1)))
    (row,) = pending(engine)
    assert row["remind_at"] <= time.time()


def test_a_new_due_date_moves_the_reminder_and_none_removes_it(engine) -> None:
    apply(engine, created(due=NOW + timedelta(hours=2)))
    later = NOW + timedelta(days=3)
    apply(engine, updated(["due"], later), ctx("e2", "corr-2"))
    (row,) = pending(engine)
    assert row["remind_at"] == pytest.approx((later - LEAD).timestamp())
    assert row["causation_id"] == "e2"
    apply(engine, updated(["due"], None))
    assert pending(engine) == []


def test_a_title_change_updates_a_pending_reminder_but_does_not_revive_a_fired_one(
    engine,
) -> None:
    due = NOW + timedelta(hours=2)
    apply(engine, created(due=due))
    apply(engine, updated(["title"], due, title="Quarterly report"))
    assert [r["title"] for r in pending(engine)] == ["Quarterly report"]
    with Session(engine) as s, s.begin():
        s.execute(metadata.tables["reminders"].delete())  # as if it had fired
    apply(engine, updated(["title"], due, title="Annual report"))
    assert pending(engine) == []


@pytest.mark.parametrize("end", ["completed", "deleted"])
def test_completion_or_deletion_cancels_the_reminder(engine, end: str) -> None:
    apply(engine, created(due=NOW + timedelta(hours=2)))
    if end == "completed":
        apply(engine, TaskCompleted(task_id="t1", title="Report", completed_at=NOW))
    else:
        apply(engine, TaskDeleted(task_id="t1", title="Report", deleted_at=NOW))
    assert pending(engine) == []


async def test_the_clock_fires_a_due_reminder_once_into_the_outbox(engine, tmp_path) -> None:
    app = register(Tidings(f"sqlite:///{tmp_path / 'events.db'}", service="test"))
    outbox = Outbox(app, engine, topic=TOPIC, table="reminders_outbox")
    outbox.create_table()
    clock = Clock(engine, outbox)
    due = NOW + timedelta(hours=2)
    apply(engine, created(due=due, assignee="bob"), ctx("e1", "corr-1"))
    assert clock.fire_due(now=(due - LEAD).timestamp() - 1) == 0
    assert clock.fire_due(now=(due - LEAD).timestamp()) == 1
    assert clock.fire_due(now=(due - LEAD).timestamp() + 60) == 0
    assert pending(engine) == []
    async with app, LogProbe(f"sqlite:///{tmp_path / 'events.db'}") as probe:
        relay = outbox.relay()
        assert await relay.relay_once() == 1
        await probe.wait_for(lambda: bool(probe.events))
        await relay.close()
    (event,) = probe.events
    assert event.type == "task.reminder_due"
    assert (event.correlationid, event.causationid, event.subject) == ("corr-1", "e1", "t1")
    assert event.data["assignee"] == "bob"
    assert datetime.fromisoformat(event.data["due"]) == due


async def test_the_service_fires_reminders_on_time_and_after_a_restart(tmp_path: Path) -> None:
    settings = Settings.from_env(tmp_path, env={"TASKAPI_REMINDER_LEAD": "1"}).ensure()
    producer = register(Tidings(settings.tidings_url, service="test"))
    async with producer, LogProbe(settings.tidings_url) as probe:
        stop = asyncio.Event()
        service = asyncio.create_task(serve("reminders", settings, stop))
        due = datetime.now(UTC) + timedelta(seconds=2)
        await producer.publish(TOPIC, created("soon", due=due, assignee="alice"))
        # A task whose reminder is cancelled before it fires.
        await producer.publish(TOPIC, created("cancelled", due=due, assignee="alice"))
        await producer.publish(
            TOPIC, TaskCompleted(task_id="cancelled", title="Report", completed_at=NOW)
        )
        await probe.wait_for(lambda: bool(probe.of("task.reminder_due")), what="reminder")
        (fired,) = probe.of("task.reminder_due")
        fired_at = fired.time.timestamp()
        remind_at = due.timestamp() - 1
        assert remind_at <= fired_at < remind_at + 1.0
        assert fired.data["task_id"] == "soon"
        scheduling = probe.of("task.created")[0]
        assert fired.correlationid == scheduling.correlationid
        assert fired.causationid == scheduling.id

        # Stopped with a reminder pending; it fires when the service is back.
        later = datetime.now(UTC) + timedelta(seconds=2.5)
        await producer.publish(TOPIC, created("after-restart", due=later))
        await probe.wait_for(lambda: len(probe.events) >= 5, what="the new task")
        await asyncio.sleep(0.3)  # handled and committed
        stop.set()
        await service
        stop = asyncio.Event()
        await asyncio.sleep(1.0)
        service = asyncio.create_task(serve("reminders", settings, stop))
        await probe.wait_for(lambda: len(probe.of("task.reminder_due")) == 2, what="2nd reminder")
        await asyncio.sleep(0.5)
        stop.set()
        await service
    assert [e.data["task_id"] for e in probe.of("task.reminder_due")] == ["soon", "after-restart"]


def test_the_reminders_command_lists_pending_reminders(tmp_path: Path, capsys) -> None:
    from taskapi.__main__ import main

    assert main(["reminders", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no pending reminders\n"
    engine = make_engine(Settings.from_env(tmp_path, env={}).state_db("reminders"))
    metadata.create_all(engine)
    due = datetime(2999, 1, 2, 3, 4, 5, tzinfo=UTC)
    apply(engine, created("t-7", due=due))
    engine.dispose()
    assert main(["reminders", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "2999-01-02 02:54:05 UTC  task t-7  Report\n"
