"""The Task API's events: one topic, ``task-events``, keyed by task id.

Every payload is a versioned pydantic model; :func:`register` puts them all on a
service's :class:`~tidings.Tidings` app with their owner (the service that publishes
the type), the upcaster of ``task.created`` v1 and the topic. Events are facts in the
past tense; each carries what its consumers need so that none of them has to call the
API back (a notification service that queries the API would couple the two again).
Each model's docstring is its contract's description (the AsyncAPI document, the
event catalog).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tidings import Tidings

__all__ = [
    "API",
    "API_TYPES",
    "AUDIT",
    "CHECKPOINTS",
    "REMINDERS",
    "TOPIC",
    "TYPES",
    "AuditCheckpointed",
    "Priority",
    "ReminderDue",
    "TaskAssigned",
    "TaskCompleted",
    "TaskCreated",
    "TaskCreatedV1",
    "TaskDeleted",
    "TaskUpdated",
    "register",
    "task_created_v1_to_v2",
]

TOPIC = "task-events"
PARTITIONS = 4

# The owners: the services that publish the types (their Tidings service names).
API = "taskapi"
REMINDERS = "taskapi-reminders"
AUDIT = "taskapi-audit"

# The audit service's checkpoints (decision 0032): one partition, one order.
CHECKPOINTS = "audit-checkpoints"

Priority = Literal["low", "normal", "high", "urgent"]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskCreatedV1(_Payload):
    """A task was created (POST /tasks), as published until version 2: its due date is
    ``due``. Read as version 2 by every service (the upcaster renames it)."""

    task_id: str
    title: str
    description: str | None = None
    assignee: str | None = None
    due: datetime | None = None
    priority: Priority = "normal"
    created_at: datetime


class TaskCreated(_Payload):
    """A task was created (POST /tasks): everything it was created with. ``due_at`` is
    the instant it is due (UTC), if any; ``created_at`` when it was created."""

    task_id: str
    title: str
    description: str | None = None
    assignee: str | None = None
    due_at: datetime | None = None
    priority: Priority = "normal"
    created_at: datetime


class TaskUpdated(_Payload):
    """A task was changed (PATCH /tasks/{id}): the task after the change, and in
    ``changed`` the fields whose value changed. Not published when nothing changed."""

    task_id: str
    changed: list[str]
    title: str
    description: str | None = None
    assignee: str | None = None
    due: datetime | None = None
    priority: Priority = "normal"
    updated_at: datetime


class TaskAssigned(_Payload):
    """A task's assignee changed (with its ``task.updated``): the new assignee (None:
    unassigned) and the previous one."""

    task_id: str
    title: str
    assignee: str | None
    previous_assignee: str | None = None
    due: datetime | None = None


class TaskCompleted(_Payload):
    """A task was completed (POST /tasks/{id}/complete); it can then only be deleted."""

    task_id: str
    title: str
    assignee: str | None = None
    completed_at: datetime


class TaskDeleted(_Payload):
    """A task was deleted (DELETE /tasks/{id}), open or completed; its pending reminder
    is cancelled."""

    task_id: str
    title: str
    assignee: str | None = None
    deleted_at: datetime


class ReminderDue(_Payload):
    """A task is due soon: the reminders service's timer fired ``TASKAPI_REMINDER_LEAD``
    before its due date (at once if that had passed), under the correlation id of the
    request that set the due date."""

    task_id: str
    title: str
    assignee: str | None = None
    due: datetime
    remind_at: datetime


class AuditCheckpointed(_Payload):
    """The audit service anchored the head of one UTC day's audit file in the log: the
    file then had ``lines`` lines and the newest one's MAC was ``mac`` (key id ``kid``).
    Published every ``TASKAPI_AUDIT_CHECKPOINT`` lines of a day, when the day rolls over
    and when the service stops; ``taskapi audit verify`` holds the files to them."""

    day: str
    lines: int
    mac: str
    kid: str


# type -> (the model of its latest version, its owner)
TYPES: dict[str, tuple[type[_Payload], str]] = {
    "task.created": (TaskCreated, API),
    "task.updated": (TaskUpdated, API),
    "task.assigned": (TaskAssigned, API),
    "task.completed": (TaskCompleted, API),
    "task.deleted": (TaskDeleted, API),
    "task.reminder_due": (ReminderDue, REMINDERS),
}
VERSIONS = {"task.created": 2}  # the types past version 1

# What the API publishes (through its outbox); the reminders service publishes the rest.
API_TYPES = tuple(t for t, (_, owner) in TYPES.items() if owner == API)


def task_created_v1_to_v2(v1: dict[str, Any]) -> dict[str, Any]:
    """``task.created`` v1 -> v2: ``due`` is named ``due_at``, as the payload's other
    instant (``created_at``) is. Nothing else changed."""
    v2 = dict(v1)
    v2["due_at"] = v2.pop("due", None)
    return v2


def register(app: Tidings) -> Tidings:
    """Declare the topic on ``app`` and register every payload model, each version, with
    its owner, and the upcasters: every service reads ``task.created`` as version 2."""
    app.topic(TOPIC, partitions=PARTITIONS)
    # Version 1 stays registered, deprecated: its events stay in the log, and the API of
    # the previous release publishes it until it is replaced. They are read as version 2.
    app.event("task.created", version=1, subject="task_id", owner=API, deprecated=True)(
        TaskCreatedV1
    )
    app.upcaster("task.created", from_version=1)(task_created_v1_to_v2)
    for type_, (model, owner) in TYPES.items():
        app.event(type_, version=VERSIONS.get(type_, 1), subject="task_id", owner=owner)(model)
    app.topic(CHECKPOINTS, partitions=1)
    app.event("audit.checkpointed", subject="day", owner=AUDIT)(AuditCheckpointed)
    return app
