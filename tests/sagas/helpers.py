"""The saga of the saga tests (and of the crash child): a task's escalation.

``task.created`` (with ``due_in`` seconds) starts it, ``waiting``, with a deadline
``overdue``; ``task.reassigned`` moves the deadline; ``task.completed`` finishes it; at
the deadline it sends ``task.escalated`` and goes to ``escalated``; there a
``notification.failed`` is compensated: it sends ``task.escalation_failed`` and fails.
A group ``sink`` with an inbox counts every event the saga sent, one ``effects`` row
each (no unique key: a second effect would show).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from tidings import Context, Inbox, Tidings
from tidings.sagas import Saga, SagaStep

TOPIC = "tasks"
PARTITIONS = 2
SENT = ["task.escalated", "task.escalation_failed"]

effects_md = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_md,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
)


def _nothing(step: str) -> None:
    pass


def add_saga(
    app: Tidings, db: str, *, hook: Callable[[str], None] = _nothing, **options: Any
) -> Saga:
    """The saga; ``hook(kind)`` is called at the end of each step, its writes done and
    not committed (the crash child dies there)."""
    saga = app.saga(
        "esc", topic=TOPIC, db=db, key="task_id",
        states=["waiting", "escalated", "done", "failed"], **options,
    )  # fmt: skip

    @saga.starts("task.created", state="waiting")
    def start(task: dict[str, Any], step: SagaStep) -> None:
        step.data["reassigned"] = 0
        step.deadline("overdue", after=task["due_in"])
        hook("start")

    @saga.on("task.reassigned", when="waiting")
    def reassigned(task: dict[str, Any], step: SagaStep) -> None:
        step.data["reassigned"] += 1
        step.deadline("overdue", after=task["due_in"])

    @saga.on("task.completed")
    def completed(task: dict[str, Any], step: SagaStep) -> None:
        step.finish("done")
        hook("step")

    @saga.on_deadline("overdue", when="waiting")
    def overdue(deadline: dict[str, Any], step: SagaStep) -> None:
        step.send({"task_id": step.key}, type="task.escalated", subject=step.key)
        step.goto("escalated")
        hook("deadline")

    @saga.compensate("escalated", on="notification.failed")
    def failed(failure: dict[str, Any], step: SagaStep) -> None:
        step.send({"task_id": step.key}, type="task.escalation_failed", subject=step.key)
        step.fail("failed")
        hook("compensation")

    return saga


def add_sink(app: Tidings, db: str) -> Inbox:
    """Group ``sink``: one effects row per event the saga sent, with its inbox mark."""
    inbox = Inbox(db)

    @app.subscriber(TOPIC, group="sink", types=SENT, inbox=inbox)
    def sink(data: dict[str, Any], ctx: Context) -> None:
        ctx.session.execute(
            effects.insert().values(event_id=ctx.id, key=data["task_id"], type=ctx.type)
        )

    return inbox


def effect_rows(engine: sa.Engine) -> list[tuple[str, str, str]]:
    """(key, type, event_id) of every effect, in commit order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(effects.c.key, effects.c.type, effects.c.event_id).order_by(effects.c.n)
        )
        return [(r[0], r[1], r[2]) for r in rows]
