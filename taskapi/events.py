"""The Task API's events: one topic, ``task-events``, keyed by task id.

Every payload is a versioned pydantic model registered on each service's
:class:`~tidings.Tidings` app by :func:`register`. Events are facts in the past
tense; each carries what its consumers need so that none of them has to call the
API back (a notification service that queries the API would couple the two again).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tidings import Tidings

__all__ = [
    "API_TYPES",
    "TOPIC",
    "TYPES",
    "Priority",
    "ReminderDue",
    "TaskAssigned",
    "TaskCompleted",
    "TaskCreated",
    "TaskDeleted",
    "TaskUpdated",
    "register",
]

TOPIC = "task-events"
PARTITIONS = 4

Priority = Literal["low", "normal", "high", "urgent"]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskCreated(_Payload):
    task_id: str
    title: str
    description: str | None = None
    assignee: str | None = None
    due: datetime | None = None
    priority: Priority = "normal"
    created_at: datetime


class TaskUpdated(_Payload):
    """The task after the change, and which fields changed."""

    task_id: str
    changed: list[str]
    title: str
    description: str | None = None
    assignee: str | None = None
    due: datetime | None = None
    priority: Priority = "normal"
    updated_at: datetime


class TaskAssigned(_Payload):
    task_id: str
    title: str
    assignee: str | None
    previous_assignee: str | None = None
    due: datetime | None = None


class TaskCompleted(_Payload):
    task_id: str
    title: str
    assignee: str | None = None
    completed_at: datetime


class TaskDeleted(_Payload):
    task_id: str
    title: str
    assignee: str | None = None
    deleted_at: datetime


class ReminderDue(_Payload):
    """Emitted by the reminders service ``lead`` before a task's due date."""

    task_id: str
    title: str
    assignee: str | None = None
    due: datetime
    remind_at: datetime


TYPES: dict[str, type[_Payload]] = {
    "task.created": TaskCreated,
    "task.updated": TaskUpdated,
    "task.assigned": TaskAssigned,
    "task.completed": TaskCompleted,
    "task.deleted": TaskDeleted,
    "task.reminder_due": ReminderDue,
}

# What the API publishes (through its outbox); the reminders service publishes the rest.
API_TYPES = ("task.created", "task.updated", "task.assigned", "task.completed", "task.deleted")


def register(app: Tidings) -> Tidings:
    """Declare the topic and register every payload model (version 1) on ``app``."""
    app.topic(TOPIC, partitions=PARTITIONS)
    for type_, model in TYPES.items():
        app.event(type_, version=1, subject="task_id")(model)
    return app
