"""Sagas through a real worker: the happy path, a deadline, a compensation, a
cancelled deadline, duplicate and out-of-order inputs, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import LOGS
from tests.sagas.helpers import TOPIC, add_saga, add_sink, effect_rows
from tidings import Tidings
from tidings.sagas import DEADLINE_TYPE, Saga, SagaInfo, list_sagas, show_saga
from tidings.testing import eventually, running

BOTH = pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
HOUR = 3600.0


@pytest.fixture
async def saga(app: Tidings, db_url: str, engine: sa.Engine) -> AsyncIterator[Saga]:
    saga = add_saga(app, db_url)
    saga.create_tables()
    sink = add_sink(app, db_url)
    yield saga
    await saga.close()
    await sink.close()


def one(db: str, key: str) -> SagaInfo:
    [info] = show_saga(db, key, name="esc")
    return info


def notes(db: str, key: str) -> list[str]:
    return [h["note"] for i in show_saga(db, key, name="esc") for h in i.history]


async def publish(app: Tidings, type_: str, key: str, **data: Any) -> None:
    await app.publish(TOPIC, {"task_id": key, **data}, type=type_, subject=key)


def instance(db: str, key: str) -> SagaInfo | None:
    found = [i for i in show_saga(db, key, name="esc") if i.status != "parked"]
    return found[0] if found else None


def state_is(db: str, key: str, state: str, status: str | None = None) -> bool:
    info = instance(db, key)
    return info is not None and info.state == state and (status is None or info.status == status)


@BOTH
async def test_a_completed_task_finishes_its_saga_and_cancels_the_deadline(
    app: Tidings, saga: Saga, db_url: str, engine: sa.Engine
) -> None:
    async with running(app):
        await publish(app, "task.created", "t1", due_in=HOUR)
        await eventually(lambda: state_is(db_url, "t1", "waiting"))
        info = one(db_url, "t1")
        assert [d["deadline"] for d in info.deadlines] == ["overdue"]
        await publish(app, "task.completed", "t1")
        await eventually(lambda: state_is(db_url, "t1", "done", "finished"))
    info = one(db_url, "t1")
    assert info.deadlines == []  # cancelled
    assert notes(db_url, "t1") == ["start", "step; finished"]
    assert [(h["from_state"], h["to_state"], h["version"]) for h in info.history] == [
        (None, "waiting", 1),
        ("waiting", "done", 2),
    ]
    assert info.data == {"reassigned": 0}
    with engine.connect() as conn:  # the deadline's event was taken out of the outbox
        assert conn.execute(sa.text("SELECT count(*) FROM tidings_outbox")).scalar() == 0
    assert effect_rows(engine) == []


@BOTH
async def test_a_deadline_that_passes_escalates_once(
    app: Tidings, saga: Saga, db_url: str, engine: sa.Engine
) -> None:
    async with running(app):
        await publish(app, "task.created", "t2", due_in=0.05)
        await eventually(lambda: len(effect_rows(engine)) == 1, timeout=20)
        await eventually(lambda: state_is(db_url, "t2", "escalated", "active"))
    assert [(k, t) for k, t, _ in effect_rows(engine)] == [("t2", "task.escalated")]
    assert notes(db_url, "t2") == ["start", "deadline overdue"]
    assert one(db_url, "t2").deadlines == []


@BOTH
async def test_a_failed_notification_is_compensated(
    app: Tidings, saga: Saga, db_url: str, engine: sa.Engine
) -> None:
    async with running(app):
        await publish(app, "task.created", "t3", due_in=0.05)
        await eventually(lambda: state_is(db_url, "t3", "escalated"), timeout=20)
        await publish(app, "notification.failed", "t3", channel="email")
        await eventually(lambda: len(effect_rows(engine)) == 2, timeout=20)
        await eventually(lambda: state_is(db_url, "t3", "failed", "failed"))
    assert [t for _, t, _ in effect_rows(engine)] == ["task.escalated", "task.escalation_failed"]
    assert notes(db_url, "t3") == ["start", "deadline overdue", "compensation; failed"]


async def test_a_cancelled_deadline_already_published_is_ignored(
    app: Tidings, saga: Saga, db_url: str, engine: sa.Engine
) -> None:
    async with running(app):
        await publish(app, "task.created", "t4", due_in=HOUR)
        await eventually(lambda: state_is(db_url, "t4", "waiting"))
        [pending] = one(db_url, "t4").deadlines
        await publish(app, "task.completed", "t4")
        await eventually(lambda: state_is(db_url, "t4", "done", "finished"))
        # As if the relay had published the deadline's event before the cancel.
        body = {"saga": "esc", "key": "t4", "deadline": "overdue", "id": pending["id"]}
        await app.publish(TOPIC, body, type=DEADLINE_TYPE, subject="t4")
        await eventually(lambda: len(notes(db_url, "t4")) == 3)
    assert notes(db_url, "t4")[-1] == "deadline overdue cancelled: ignored"
    assert one(db_url, "t4").state == "done"
    assert effect_rows(engine) == []


async def test_a_moved_deadline_fires_once_at_its_new_time(
    app: Tidings, saga: Saga, db_url: str, engine: sa.Engine
) -> None:
    async with running(app):
        await publish(app, "task.created", "t5", due_in=HOUR)
        await eventually(lambda: state_is(db_url, "t5", "waiting"))
        await publish(app, "task.reassigned", "t5", due_in=0.05)
        await eventually(lambda: len(effect_rows(engine)) == 1, timeout=20)
        await eventually(lambda: state_is(db_url, "t5", "escalated"))
    assert one(db_url, "t5").data == {"reassigned": 1}
    assert notes(db_url, "t5") == ["start", "step", "deadline overdue"]


async def test_duplicate_events_move_the_saga_once(
    app: Tidings, saga: Saga, db_url: str, engine: sa.Engine
) -> None:
    created = app.build({"task_id": "t6", "due_in": HOUR}, type="task.created", subject="t6")
    done = app.build({"task_id": "t6"}, type="task.completed", subject="t6")
    again = app.build({"task_id": "t6", "due_in": HOUR}, type="task.created", subject="t6")
    async with running(app) as worker:
        await app.publish_events(TOPIC, [created, created, done, done, again])
        await eventually(lambda: len(notes(db_url, "t6")) == 3)
        await eventually(lambda: worker.stats.duplicates == 2)
    assert notes(db_url, "t6") == ["start", "step; finished", "ignored: saga finished"]
    assert one(db_url, "t6").version == 2


async def test_an_event_before_the_start_is_ignored_by_default(
    app: Tidings, saga: Saga, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "tidings.sagas")
    async with running(app):
        await publish(app, "task.completed", "t7")
        await publish(app, "task.created", "t7", due_in=HOUR)
        await eventually(lambda: state_is(db_url, "t7", "waiting"))
    assert notes(db_url, "t7") == ["start"]
    assert "task.completed" in caplog.text
    assert "no instance: ignored" in caplog.text


@BOTH
async def test_a_parked_event_is_applied_right_after_the_start(
    app: Tidings, db_url: str, engine: sa.Engine
) -> None:
    saga = add_saga(app, db_url, unknown="park")
    saga.create_tables()
    try:
        async with running(app):
            await publish(app, "task.completed", "t8")
            await eventually(lambda: notes(db_url, "t8") == ["parked"])
            [parked] = show_saga(db_url, "t8")
            assert (parked.status, [p["type"] for p in parked.parked]) == (
                "parked",
                ["task.completed"],
            )
            await publish(app, "task.created", "t8", due_in=HOUR)
            await eventually(lambda: state_is(db_url, "t8", "done", "finished"))
    finally:
        await saga.close()
    info = one(db_url, "t8")
    assert [h["note"] for h in info.history] == ["parked", "start", "step; finished"]
    assert (info.parked, info.deadlines) == ([], [])


async def test_list_shows_instances_by_name_and_status(
    app: Tidings, saga: Saga, db_url: str
) -> None:
    async with running(app):
        await publish(app, "task.created", "a", due_in=HOUR)
        await publish(app, "task.created", "b", due_in=HOUR)
        await publish(app, "task.completed", "b")
        await eventually(lambda: state_is(db_url, "b", "done") and state_is(db_url, "a", "waiting"))
    assert sorted(i.key for i in list_sagas(db_url)) == ["a", "b"]
    assert [i.key for i in list_sagas(db_url, status="active")] == ["a"]
    assert [i.key for i in list_sagas(db_url, name="esc", status="finished")] == ["b"]
    assert list_sagas(db_url, name="other") == []


@pytest.mark.parametrize("app", LOGS, indirect=True)
async def test_the_saga_runs_on_every_log(app: Tidings, db_url: str, engine: sa.Engine) -> None:
    """The saga meets the log only through its inbox and outbox: the same steps on
    the SQLite log, Kafka and NATS."""
    saga = add_saga(app, db_url)
    saga.create_tables()
    sink = add_sink(app, db_url)
    try:
        async with running(app):
            await publish(app, "task.created", "e1", due_in=0.05)
            await publish(app, "task.created", "e2", due_in=HOUR)
            await publish(app, "task.completed", "e2")
            await eventually(lambda: state_is(db_url, "e1", "escalated"), timeout=30)
            await publish(app, "notification.failed", "e1", channel="slack")
            await eventually(lambda: len(effect_rows(engine)) == 2, timeout=30)
            await eventually(lambda: state_is(db_url, "e1", "failed", "failed"))
            await eventually(lambda: state_is(db_url, "e2", "done", "finished"))
    finally:
        await saga.close()
        await sink.close()
    assert [t for _, t, _ in effect_rows(engine)] == ["task.escalated", "task.escalation_failed"]
