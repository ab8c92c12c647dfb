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
    "ESCALATION",
    "REMINDERS",
    "TOPIC",
    "TYPES",
    "NotificationFailed",
    "Priority",
    "ReminderDue",
    "TaskAssigned",
    "TaskCompleted",
    "TaskCreated",
    "TaskCreatedV1",
    "TaskDeleted",
    "TaskEscalated",
    "TaskEscalationFailed",
    "TaskUpdated",
    "register",
    "task_created_v1_to_v2",
]

TOPIC = "task-events"
PARTITIONS = 4

# The owners: the services that publish the types (their Tidings service names).
API = "taskapi"
REMINDERS = "taskapi-reminders"
ESCALATION = "taskapi-escalation"

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


class TaskEscalated(_Payload):
    """A task was not completed by its due time: the escalation service escalates it to
    the assignee's ``manager``; the email service mails the manager, the Slack service
    posts it. ``escalated_at`` is when the deadline passed."""

    task_id: str
    title: str
    assignee: str | None = None
    manager: str
    due_at: datetime
    escalated_at: datetime


class NotificationFailed(_Payload):
    """A notification service could not deliver the notice ``event_id`` (of type
    ``about``) for good (the mail server or the webhook refused it): ``channel`` is
    ``email`` or ``slack``. Published by those services; its contract is the
    escalation service's, which compensates a failed escalation notice."""

    task_id: str
    channel: Literal["email", "slack"]
    about: str
    event_id: str
    reason: str


class TaskEscalationFailed(_Payload):
    """The escalation of a task could not be delivered on ``failed_channel``: the
    escalation service gave it up (its compensation) and asks the other channel to tell
    the ``manager`` instead (email if Slack failed, Slack if email failed)."""

    task_id: str
    title: str
    manager: str
    failed_channel: Literal["email", "slack"]
    reason: str


# type -> (the model of its latest version, its owner)
TYPES: dict[str, tuple[type[_Payload], str]] = {
    "task.created": (TaskCreated, API),
    "task.updated": (TaskUpdated, API),
    "task.assigned": (TaskAssigned, API),
    "task.completed": (TaskCompleted, API),
    "task.deleted": (TaskDeleted, API),
    "task.reminder_due": (ReminderDue, REMINDERS),
    "task.escalated": (TaskEscalated, ESCALATION),
    "task.escalation_failed": (TaskEscalationFailed, ESCALATION),
    "notification.failed": (NotificationFailed, ESCALATION),
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
    return app
