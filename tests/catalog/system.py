"""Two services on one log, for the catalog's tests: ``tasks`` publishes task.created
(v1 deprecated, its sunset long past; v2 current); ``reminders`` reads it in two groups
(``reminders``, which answers each with a task.reminder_due, and ``audit``, which
takes every type) and holds both models without an upcaster, so both groups still
consume v1 as it is.

:func:`build` makes both apps on a URL (a test's own log).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from tidings import Context, Tidings


class TaskCreatedV1(BaseModel):
    """A task was created (the first shape: no due date)."""

    task_id: str
    title: str


class TaskCreated(BaseModel):
    """A task was created.

    Its subject, the task id, is its partition key."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"task_id": "t-1", "title": 'Write <docs> & "tests"'}]}
    )

    task_id: str
    title: str
    due: str | None = None


class ReminderDue(BaseModel):
    """A task's reminder is due."""

    task_id: str


@dataclass
class System:
    tasks: Tidings
    reminders: Tidings
    handled: list[str] = field(default_factory=list)  # task ids the reminders group answered
    audited: list[str] = field(default_factory=list)  # event ids the audit group saw


def build(url: str | None = None) -> System:
    """Both apps on ``url`` (default: ``$TIDINGS_URL``)."""
    tasks = Tidings(url, service="tasks")
    tasks.event("task.created", 1, subject="task_id", sunset="2000-01-01")(TaskCreatedV1)
    tasks.event("task.created", 2, subject="task_id")(TaskCreated)
    # One partition each: the events of a topic have one order, so "the newest" of a
    # scan is one event whatever the clock's resolution.
    tasks.topic("task-events", partitions=1)
    tasks.publishes("task-events", ["task.created"])

    reminders = Tidings(url, service="reminders")
    reminders.event("task.created", 1, subject="task_id", owner="tasks")(TaskCreatedV1)
    reminders.event("task.created", 2, subject="task_id", owner="tasks")(TaskCreated)
    reminders.event("task.reminder_due", subject="task_id")(ReminderDue)
    reminders.topic("task-events", partitions=1)
    reminders.topic("reminder-events", partitions=1)
    reminders.publishes("reminder-events", ["task.reminder_due"])
    reminders.group("reminders", sla=30)
    reminders.group("audit", sla=5.5)
    system = System(tasks, reminders)

    @reminders.subscriber("task-events", group="reminders", types=["task.created"])
    async def remind(task: TaskCreatedV1 | TaskCreated) -> None:
        await reminders.publish("reminder-events", ReminderDue(task_id=task.task_id))
        system.handled.append(task.task_id)

    @reminders.subscriber("task-events", group="audit")
    async def audit(event: object, ctx: Context) -> None:
        system.audited.append(ctx.event.id)

    return system
