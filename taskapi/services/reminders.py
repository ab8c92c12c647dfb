"""The reminders service: a durable timer per task with a due date.

A task created or updated with a due date gets a reminder at ``due - lead`` (at once if
that is already past, none if the task is already overdue); a new due date moves it,
no due date removes it, completion or deletion cancels it. When a reminder is due, the
service emits ``task.reminder_due`` (which the email and push services turn into
notifications), under the correlation id of the request that scheduled it.

Both halves are exactly once, on the service's own SQLite file
(``<data>/reminders.db``):

- the timer table is written through the inbox's session, so a change and the mark
  of the event that caused it commit together: a redelivered event changes nothing;
- a due reminder is deleted in the same transaction that puts its ``reminder_due``
  event in an outbox table of the same file; the outbox relay appends it to the log.

Pending reminders are rows, so they survive restarts; one that fell due while the
service was down fires when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from taskapi.db import make_engine, writer
from taskapi.events import (
    TOPIC,
    ReminderDue,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskUpdated,
)
from taskapi.services import base_app, retry_policy
from taskapi.settings import Settings
from tidings import Context, Inbox, Outbox, Tidings

__all__ = ["POLL", "Clock", "build", "pending", "timers"]

log = logging.getLogger("taskapi.reminders")

# How often the clock looks for due reminders: the bound on how late one fires
# (plus the outbox relay's own 50 ms).
POLL = 0.1

metadata = sa.MetaData()
timers = sa.Table(
    "reminders",
    metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("assignee", sa.String(100)),
    sa.Column("due", sa.Float, nullable=False),  # epoch seconds, UTC
    sa.Column("remind_at", sa.Float, nullable=False, index=True),
    sa.Column("correlation_id", sa.String(128), nullable=False),
    sa.Column("causation_id", sa.String(64), nullable=False),
    sa.Column("scheduled_at", sa.Float, nullable=False),
)

Change = TaskCreated | TaskUpdated | TaskCompleted | TaskDeleted


def _schedule(
    session: Session, event: TaskCreated | TaskUpdated, lead: timedelta, ctx: Context
) -> None:
    at = event.due_at if isinstance(event, TaskCreated) else event.due
    if at is None:
        session.execute(sa.delete(timers).where(timers.c.task_id == event.task_id))
        return
    now = time.time()
    due = at.timestamp()
    if due <= now:
        log.info("task %s is already overdue: no reminder", event.task_id)
        session.execute(sa.delete(timers).where(timers.c.task_id == event.task_id))
        return
    row = {
        "task_id": event.task_id,
        "title": event.title,
        "assignee": event.assignee,
        "due": due,
        "remind_at": max(now, due - lead.total_seconds()),
        "correlation_id": ctx.correlationid,
        "causation_id": ctx.id,
        "scheduled_at": now,
    }
    session.execute(sa.delete(timers).where(timers.c.task_id == event.task_id))
    session.execute(sa.insert(timers), row)


def on_change(session: Session, event: Change, lead: timedelta, ctx: Context) -> None:
    """Apply one task event to the timer table, in ``session``'s transaction."""
    if isinstance(event, TaskCreated):
        _schedule(session, event, lead, ctx)
    elif isinstance(event, TaskUpdated):
        if "due" in event.changed:
            _schedule(session, event, lead, ctx)
        else:
            # A reminder that already fired must not come back because the title
            # changed: only a pending one takes the new title and assignee.
            session.execute(
                sa.update(timers)
                .where(timers.c.task_id == event.task_id)
                .values(title=event.title, assignee=event.assignee)
            )
    else:
        session.execute(sa.delete(timers).where(timers.c.task_id == event.task_id))


def pending(engine: Engine) -> list[dict[str, object]]:
    """The reminders not fired yet, soonest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(timers).order_by(timers.c.remind_at)).mappings()
        return [dict(r) for r in rows]


class Clock:
    """The component that fires due reminders (see the module documentation)."""

    name = "reminders-clock"

    def __init__(self, engine: Engine, outbox: Outbox, *, batch: int = 500) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self.outbox = outbox
        self.batch = batch
        self._any_due = (
            sa.select(timers.c.task_id).where(timers.c.remind_at <= sa.bindparam("now")).limit(1)
        )

    def fire_due(self, now: float | None = None) -> int:
        """Fire the reminders due at ``now``; return how many."""
        now = time.time() if now is None else now
        # A plain read first: most polls find nothing, and need not take the write lock.
        with self.engine.connect() as conn:
            if conn.execute(self._any_due, {"now": now}).first() is None:
                return 0
        # IMMEDIATE on SQLite: the write lock is taken before the rows are read, so no
        # handler's commit can slip in between and fail this transaction on upgrade.
        with Session(self._writer) as session, session.begin():
            rows = (
                session.execute(
                    sa.select(timers)
                    .where(timers.c.remind_at <= now)
                    .order_by(timers.c.remind_at)
                    .limit(self.batch)
                )
                .mappings()
                .all()
            )
            for row in rows:
                self.outbox.add(
                    session,
                    ReminderDue(
                        task_id=row["task_id"],
                        title=row["title"],
                        assignee=row["assignee"],
                        due=datetime.fromtimestamp(row["due"], UTC),
                        remind_at=datetime.fromtimestamp(row["remind_at"], UTC),
                    ),
                    correlation_id=row["correlation_id"],
                    causation_id=row["causation_id"],
                )
            if rows:
                session.execute(
                    sa.delete(timers).where(timers.c.task_id.in_([r["task_id"] for r in rows]))
                )
        for row in rows:
            log.info("reminder due for task %s (%s)", row["task_id"], row["title"])
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                fired = await asyncio.to_thread(self.fire_due)
            except Exception:
                log.exception("firing reminders failed; trying again")
                fired = 0
            if fired < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL)


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    app = base_app("reminders", settings)
    app.publishes(TOPIC, ["task.reminder_due"])  # for its AsyncAPI document
    engine = make_engine(settings.state_db("reminders"))
    stack.callback(engine.dispose)
    metadata.create_all(engine)
    outbox = Outbox(app, engine, topic=TOPIC, table="reminders_outbox")
    outbox.create_table()
    lead = settings.reminder_lead
    box = Inbox(engine)
    stack.push_async_callback(box.close)

    # A plain def with a sync Session: SQLite's sync driver, the timer change and the
    # inbox mark in one transaction.
    @app.subscriber(
        TOPIC,
        group="reminders",
        types=["task.created", "task.updated", "task.completed", "task.deleted"],
        retry=retry_policy(settings),
        inbox=box,
        personal=True,  # the reminder it schedules names the assignee
    )
    def reminders(event: Change, ctx: Context) -> None:
        on_change(ctx.session, event, lead, ctx)

    app.add_component(Clock(engine, outbox))
    app.add_component(outbox.relay())
    return app
