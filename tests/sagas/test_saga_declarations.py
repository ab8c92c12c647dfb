"""Declaring a saga: what is refused, with a message that names the fix; and the
store's optimistic concurrency, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.sagas.helpers import TOPIC, add_saga
from tidings import ConfigError, Inbox, InvalidEventType, Outbox, Tidings
from tidings.sagas import DEADLINE_TYPE, SagaConflict, SagaStep, show_saga
from tidings.sagas._store import Instance
from tidings.testing import eventually, running

BOTH = pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)


def test_bad_declarations_are_refused_with_the_fix(tmp_path: Path) -> None:
    app = Tidings("memory://decl", service="svc")
    db = f"sqlite:///{tmp_path / 'app.db'}"
    with pytest.raises(ConfigError, match="key= names the payload field"):
        app.saga("s", topic=TOPIC, db=db, key="")
    with pytest.raises(ConfigError, match="unknown= must be 'ignore' or 'park'"):
        app.saga("s", topic=TOPIC, db=db, key="k", unknown="drop")
    with pytest.raises(ConfigError, match="db= takes a database URL or a SQLAlchemy Engine"):
        app.saga("s", topic=TOPIC, db=42, key="k")
    with pytest.raises(ConfigError, match="cannot open the database"):
        app.saga("s", topic=TOPIC, db="nonsense://x", key="k")
    other = Outbox(app, f"sqlite:///{tmp_path / 'other.db'}", topic=TOPIC)
    with pytest.raises(ConfigError, match="its outbox must be in its database"):
        app.saga("s", topic=TOPIC, db=db, key="k", outbox=other)
    saga = app.saga("s", topic=TOPIC, db=db, key="k", states=["a", "b"])
    with pytest.raises(ConfigError, match="has no state 'c'; its states: a, b"):
        saga.starts("x.created", state="c")
    with pytest.raises(ConfigError, match="use on_deadline"):
        saga.on(DEADLINE_TYPE)
    with pytest.raises(InvalidEventType, match=r"not lower-case .domain\.action."):
        saga.on("Created")
    saga.on("x.done", when="a")(lambda p, s: None)
    with pytest.raises(ConfigError, match=r"two steps for x\.done in state a"):
        saga.on("x.done", when="a")(lambda p, s: None)


def test_the_saga_subscribes_to_the_types_it_has_steps_for(tmp_path: Path) -> None:
    app = Tidings("memory://types", service="svc")
    saga = add_saga(app, f"sqlite:///{tmp_path / 'app.db'}")
    [sub] = app.subscribers
    assert sub.group == "esc"
    assert sub.types == {
        "task.created", "task.reassigned", "task.completed", "notification.failed",
        DEADLINE_TYPE,
    }  # fmt: skip
    assert isinstance(sub.inbox, Inbox)
    assert saga.outbox.relay  # the saga made its outbox: its relay runs with the worker
    assert any(getattr(c, "outbox", None) is saga.outbox for c in app.components)


async def test_a_step_that_is_not_declared_is_an_error_in_the_step(
    app: Tidings, db_url: str
) -> None:
    saga = app.saga("bad", topic=TOPIC, db=db_url, key="task_id")
    errors: list[BaseException] = []

    @saga.starts("task.created")
    def start(task: dict[str, Any], step: SagaStep) -> None:
        try:
            step.deadline("never-declared", after=1)
        except ConfigError as exc:
            errors.append(exc)
            raise

    try:
        async with running(app):
            await app.publish(TOPIC, {"task_id": "x"}, type="task.created", subject="x")
            await eventually(lambda: errors)
    finally:
        await saga.close()
    assert "has no step for deadline 'never-declared'" in str(errors[0])


@BOTH
def test_a_write_over_a_moved_version_is_a_conflict(db_url: str, engine: sa.Engine) -> None:
    app = Tidings("memory://conflict", service="svc")
    saga = add_saga(app, db_url)
    saga.create_tables()
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        saga.store.insert(session, "k", Instance("waiting", {}, 1, "active"), now)
    with Session(engine) as session, session.begin():
        saga.store.update(session, "k", 1, Instance("escalated", {}, 2, "active"), now)
    with Session(engine) as session:
        with pytest.raises(SagaConflict, match="version 1 was moved on"):
            saga.store.update(session, "k", 1, Instance("done", {}, 2, "finished"), now)
        session.rollback()
        with pytest.raises(SagaConflict, match="was started by another delivery"):
            saga.store.insert(session, "k", Instance("waiting", {}, 1, "active"), now)
        session.rollback()
    with Session(engine) as session:
        [row] = session.execute(sa.text("SELECT state, version FROM tidings_sagas")).all()
        assert tuple(row) == ("escalated", 2)  # neither conflicting write is there
    engine.dispose()
    saga.engine.dispose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_step_that_lost_a_race_runs_again_on_the_new_state(
    app: Tidings, db_url: str, engine: sa.Engine
) -> None:
    """Another worker (a zombie after a rebalance) moves the instance while a step
    runs: the step's write finds another version, nothing of it is kept, and the
    retry runs it on the state as it is now, once."""
    saga = add_saga(app, db_url)
    saga.create_tables()
    raced: list[int] = []

    @saga.on("task.renamed")
    def renamed(task: dict[str, Any], step: SagaStep) -> None:
        if not raced:  # the other worker commits first
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE tidings_sagas SET version = version + 1, "
                        "data = '{\"reassigned\": 5}' WHERE key = 'r'"
                    )
                )
        raced.append(step.data["reassigned"])
        step.data["renamed"] = task["title"]

    try:
        async with running(app):
            await app.publish(
                TOPIC, {"task_id": "r", "due_in": 3600}, type="task.created", subject="r"
            )
            await eventually(lambda: show_saga(db_url, "r"))  # committed: the race is on
            await app.publish(
                TOPIC, {"task_id": "r", "title": "T"}, type="task.renamed", subject="r"
            )
            await eventually(lambda: len(raced) == 2)
            await eventually(lambda: show_saga(db_url, "r")[0].version == 3)
    finally:
        await saga.close()
    [info] = show_saga(db_url, "r")
    assert raced == [0, 5]  # the second run saw the other worker's state
    assert info.data == {"reassigned": 5, "renamed": "T"}
    assert [h["note"] for h in info.history] == ["start", "step"]


async def test_setting_a_deadline_again_in_one_step_keeps_one(
    app: Tidings, db_url: str, engine: sa.Engine
) -> None:
    saga = app.saga("twice", topic=TOPIC, db=db_url, key="task_id")

    @saga.starts("task.created")
    def start(task: dict[str, Any], step: SagaStep) -> None:
        step.deadline("late", after=3600)
        step.deadline("late", after=7200)

    @saga.on_deadline("late")
    def late(deadline: dict[str, Any], step: SagaStep) -> None:
        step.finish()

    saga.create_tables()
    try:
        async with running(app):
            await app.publish(TOPIC, {"task_id": "d"}, type="task.created", subject="d")
            await eventually(lambda: show_saga(db_url, "d"))
    finally:
        await saga.close()
    [info] = show_saga(db_url, "d")
    [pending] = info.deadlines
    assert pending["due_at"] > info.started_at + timedelta(seconds=7000)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM tidings_outbox")).scalar() == 1


async def test_data_that_is_not_json_is_a_clear_error(app: Tidings, db_url: str) -> None:
    saga = app.saga("dates", topic=TOPIC, db=db_url, key="task_id")
    errors: list[BaseException] = []

    @saga.starts("task.created")
    def start(task: dict[str, Any], step: SagaStep) -> None:
        step.data["when"] = datetime.now(UTC)  # not JSON

    saga.create_tables()
    original = saga.store.insert

    def insert(*args: Any) -> None:
        try:
            original(*args)
        except Exception as exc:
            errors.append(exc)
            raise

    saga.store.insert = insert  # type: ignore[method-assign]
    try:
        async with running(app):
            await app.publish(TOPIC, {"task_id": "j"}, type="task.created", subject="j")
            await eventually(lambda: errors)
    finally:
        await saga.close()
    assert isinstance(errors[0], ConfigError)
    assert "saga dates/j: step.data must hold JSON values" in str(errors[0])
    assert "datetime is not JSON serializable" in str(errors[0])
