"""The escalation service: a saga per task with a due time (``tidings.sagas``).

A task created with a due time starts it (``waiting``, with a deadline ``overdue`` at
that time); a new due time moves the deadline, none cancels it. Completing, deleting or
reassigning the task ends the saga and cancels the deadline (``completed``,
``deleted``, ``reassigned``). If the deadline passes first, the saga publishes
``task.escalated`` to the assignee's manager (``TASKAPI_MANAGERS``): the email service
mails the manager, the Slack service posts it (``escalated``). If either notice cannot
be delivered for good, that service publishes ``notification.failed``; the saga's
compensation gives the escalation up (``failed``) and publishes
``task.escalation_failed``, which the other channel delivers instead: Slack if the mail
was refused, a mail if Slack refused.

The saga's state, history and deadlines, its inbox marks and its outbox live in the
service's own SQLite file (``<data>/escalation.db``): each step commits with the mark
of the event that caused it and the events it publishes, so a crash neither loses nor
repeats one. ``tidings sagas show TASK_ID --db sqlite:///<data>/escalation.db`` shows a
task's escalation.

The notices themselves are composed here (:func:`mail`, :func:`post`), next to the
saga that asks for them; the email and Slack services send them.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Literal

from taskapi.events import (
    TOPIC,
    NotificationFailed,
    TaskAssigned,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskEscalated,
    TaskEscalationFailed,
    TaskUpdated,
)
from taskapi.services import base_app, mail_message, retry_policy
from taskapi.settings import Settings
from tidings import Context, Tidings
from tidings.sagas import Saga, SagaStep

__all__ = ["NAME", "STATES", "build", "declare", "failure", "mail", "post"]

NAME = "task-escalation"
STATES = ["waiting", "escalated", "completed", "deleted", "reassigned", "failed", "no_due_date"]
Notice = TaskEscalated | TaskEscalationFailed


def declare(app: Tidings, settings: Settings, db: str) -> Saga:
    """The escalation saga on ``app`` (group ``escalation``), its state in ``db``."""
    saga = app.saga(
        NAME, topic=TOPIC, db=db, key="task_id", states=STATES, group="escalation",
        retry=retry_policy(settings), personal=True,  # the assignee finds the manager
    )  # fmt: skip

    @saga.starts("task.created", state="waiting")
    def created(task: TaskCreated, step: SagaStep) -> None:
        step.data.update(title=task.title, assignee=task.assignee, due_at=None)
        if task.due_at is None:
            step.finish("no_due_date")
        else:
            _due(step, task.due_at)

    @saga.on("task.updated", when="waiting")
    def updated(task: TaskUpdated, step: SagaStep) -> None:
        step.data.update(title=task.title, assignee=task.assignee)
        if "due" in task.changed:
            if task.due is None:
                step.cancel("overdue")
                step.data["due_at"] = None
            else:
                _due(step, task.due)

    @saga.on("task.assigned", when="waiting")
    def reassigned(task: TaskAssigned, step: SagaStep) -> None:
        step.finish("reassigned")

    @saga.on("task.completed")
    def completed(task: TaskCompleted, step: SagaStep) -> None:
        step.finish("completed")

    @saga.on("task.deleted")
    def deleted(task: TaskDeleted, step: SagaStep) -> None:
        step.finish("deleted")

    @saga.on_deadline("overdue", when="waiting")
    def overdue(deadline: dict[str, Any], step: SagaStep) -> None:
        d = step.data
        d["manager"] = settings.manager_of(d["assignee"])
        step.send(
            TaskEscalated(
                task_id=step.key, title=d["title"], assignee=d["assignee"],
                manager=d["manager"], due_at=d["due_at"], escalated_at=step.now,
            )
        )  # fmt: skip
        step.goto("escalated")

    @saga.compensate("escalated", on="notification.failed")
    def undeliverable(failure: NotificationFailed, step: SagaStep) -> None:
        if failure.about != "task.escalated":
            return  # another notice of this task: not the escalation's business
        d = step.data
        step.send(
            TaskEscalationFailed(
                task_id=step.key, title=d["title"], manager=d["manager"],
                failed_channel=failure.channel, reason=failure.reason,
            )
        )  # fmt: skip
        step.fail("failed")

    return saga


def _due(step: SagaStep, at: datetime) -> None:
    step.data["due_at"] = at.isoformat()
    step.deadline("overdue", at=at)


def mail(event: Notice, settings: Settings, ctx: Context) -> EmailMessage | None:
    """The manager's mail about an escalation (or about one Slack could not post)."""
    if isinstance(event, TaskEscalationFailed):
        if event.failed_channel != "slack":
            return None  # the mail itself failed: Slack tells the manager
        subject = f"Overdue (Slack failed): {event.title}"
        lines = [f"The task {event.title!r} is overdue; Slack could not tell you: {event.reason}"]
    else:
        subject = f"Overdue: {event.title}"
        who = event.assignee or "nobody"
        lines = [f"The task {event.title!r}, assigned to {who}, was due at "
                 f"{event.due_at.isoformat()} and is not completed."]  # fmt: skip
    to = settings.address(event.manager)
    return mail_message(settings, ctx, to, subject, lines, event.task_id)


def post(event: Notice) -> dict[str, Any] | None:
    """The Slack message about an escalation (or about one the mail could not carry)."""
    if isinstance(event, TaskEscalationFailed):
        if event.failed_channel != "email":
            return None  # Slack itself failed: the mail tells the manager
        text = f"Overdue task {event.title!r}: the mail to {event.manager} failed ({event.reason})"
    else:
        text = f"Overdue task {event.title!r} (assigned to {event.assignee or 'nobody'}), "
        text += f"escalated to {event.manager}"
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def failure(
    event: Notice, channel: Literal["email", "slack"], ctx: Context, error: Exception
) -> NotificationFailed:
    """What a notifier publishes when an escalation notice is refused for good."""
    return NotificationFailed(
        task_id=event.task_id, channel=channel, about=ctx.type, event_id=ctx.id,
        reason=str(error)[:500],
    )  # fmt: skip


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    app = base_app("escalation", settings)
    app.publishes(TOPIC, ["task.escalated", "task.escalation_failed"])
    saga = declare(app, settings, settings.state_db("escalation"))
    saga.create_tables()
    stack.push_async_callback(saga.close)
    return app
