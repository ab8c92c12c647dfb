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

import copy
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, create_model

from tidings import Tidings
from tidings.personal import Personal

__all__ = [
    "API",
    "API_TYPES",
    "AUDIT",
    "CHECKPOINTS",
    "ESCALATION",
    "ESCALATION_TYPES",
    "REMINDERS",
    "TOPIC",
    "TYPES",
    "UNMARKED",
    "AuditCheckpointed",
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
    "same_payload",
    "task_created_v1_to_v2",
    "unmarked",
]

TOPIC = "task-events"
PARTITIONS = 4

# The owners: the services that publish the types (their Tidings service names).
API = "taskapi"
REMINDERS = "taskapi-reminders"
AUDIT = "taskapi-audit"

# The audit service's checkpoints (decision 0032): one partition, one order.
CHECKPOINTS = "audit-checkpoints"

ESCALATION = "taskapi-escalation"

Priority = Literal["low", "normal", "high", "urgent"]
# An assignee's name is personal data about that assignee (decision 0032).
Assignee = Annotated[str | None, Personal(subject="assignee")]
# A manager's name, on escalations: personal data about that manager.
Manager = Annotated[str, Personal(subject="manager")]


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
    the instant it is due (UTC), if any; ``created_at`` when it was created. Version 3:
    the assignee is marked as personal data."""

    task_id: str
    title: str
    description: str | None = None
    assignee: Assignee = None
    due_at: datetime | None = None
    priority: Priority = "normal"
    created_at: datetime


class TaskUpdated(_Payload):
    """A task was changed (PATCH /tasks/{id}): the task after the change, and in
    ``changed`` the fields whose value changed. Not published when nothing changed.
    Version 2: the assignee is marked as personal data."""

    task_id: str
    changed: list[str]
    title: str
    description: str | None = None
    assignee: Assignee = None
    due: datetime | None = None
    priority: Priority = "normal"
    updated_at: datetime


class TaskAssigned(_Payload):
    """A task's assignee changed (with its ``task.updated``): the new assignee (None:
    unassigned) and the previous one. Version 2: both are marked as personal data."""

    task_id: str
    title: str
    assignee: Assignee
    previous_assignee: Annotated[str | None, Personal(subject="previous_assignee")] = None
    due: datetime | None = None


class TaskCompleted(_Payload):
    """A task was completed (POST /tasks/{id}/complete); it can then only be deleted.
    Version 2: the assignee is marked as personal data."""

    task_id: str
    title: str
    assignee: Assignee = None
    completed_at: datetime


class TaskDeleted(_Payload):
    """A task was deleted (DELETE /tasks/{id}), open or completed; its pending reminder
    is cancelled. Version 2: the assignee is marked as personal data."""

    task_id: str
    title: str
    assignee: Assignee = None
    deleted_at: datetime


class ReminderDue(_Payload):
    """A task is due soon: the reminders service's timer fired ``TASKAPI_REMINDER_LEAD``
    before its due date (at once if that had passed), under the correlation id of the
    request that set the due date. Version 2: the assignee is marked as personal data."""

    task_id: str
    title: str
    assignee: Assignee = None
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


class TaskEscalated(_Payload):
    """A task was not completed by its due time: the escalation service escalates it to
    the assignee's ``manager``; the email service mails the manager, the Slack service
    posts it. ``escalated_at`` is when the deadline passed."""

    task_id: str
    title: str
    assignee: Assignee = None
    manager: Manager
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
    manager: Manager
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
# Each type's version with its personal-data marks (decision 0032), registered as a new
# major version (breaking=True): the check reports a field becoming personal as a break.
# The escalation's types came after the marks: their first version has them.
ESCALATION_TYPES = ("task.escalated", "task.escalation_failed", "notification.failed")
VERSIONS = {
    "task.created": 3,
    **{t: 2 for t in TYPES if t != "task.created" and t not in ESCALATION_TYPES},
    **dict.fromkeys(ESCALATION_TYPES, 1),
}

# What the API publishes (through its outbox); the reminders service publishes the rest.
API_TYPES = tuple(t for t, (_, owner) in TYPES.items() if owner == API)


def task_created_v1_to_v2(v1: dict[str, Any]) -> dict[str, Any]:
    """``task.created`` v1 -> v2: ``due`` is named ``due_at``, as the payload's other
    instant (``created_at``) is. Nothing else changed."""
    v2 = dict(v1)
    v2["due_at"] = v2.pop("due", None)
    return v2


def unmarked(model: type[_Payload]) -> type[_Payload]:
    """``model`` as its version before the personal-data marks: the same fields, without
    :class:`~tidings.personal.Personal` (its class is named ``<model>Unmarked``; the
    registry takes a renamed, redescribed model as the same version)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        plain = copy.copy(info)
        plain.metadata = [m for m in info.metadata if not isinstance(m, Personal)]
        fields[name] = (info.annotation, plain)
    doc = (
        f"{model.__name__} as published before its personal-data marks (decision 0032): "
        "the same fields. Read as the marked version by every service."
    )
    return create_model(f"{model.__name__}Unmarked", __base__=_Payload, __doc__=doc, **fields)


def same_payload(data: dict[str, Any]) -> dict[str, Any]:
    """The upcaster from a version before the personal-data marks to the one with them:
    the payload is the same; the mark only says what its fields are."""
    return data


# Each type's version before the marks, derived from its marked model (the same fields).
UNMARKED = {t: unmarked(model) for t, (model, _) in TYPES.items() if VERSIONS[t] > 1}


def register(app: Tidings) -> Tidings:
    """Declare the topic on ``app`` and register every payload model, each version, with
    its owner, and the upcasters: every service reads each type at its latest version
    (``task.created`` v1 and v2 as v3, the others' v1 as v2; the escalation's types have
    one version)."""
    app.topic(TOPIC, partitions=PARTITIONS)
    # The earlier versions stay registered, deprecated: their events stay in the log, and
    # the previous release publishes them until it is replaced.
    app.event("task.created", version=1, subject="task_id", owner=API, deprecated=True)(
        TaskCreatedV1
    )
    app.upcaster("task.created", from_version=1)(task_created_v1_to_v2)
    for type_, (model, owner) in TYPES.items():
        latest = VERSIONS[type_]
        if latest == 1:  # marked from its first version
            app.event(type_, subject="task_id", owner=owner)(model)
            continue
        app.event(type_, latest - 1, subject="task_id", owner=owner, deprecated=True)(
            UNMARKED[type_]
        )
        app.upcaster(type_, from_version=latest - 1)(same_payload)
        app.event(type_, latest, subject="task_id", owner=owner, breaking=True)(model)
    app.topic(CHECKPOINTS, partitions=1)
    app.event("audit.checkpointed", subject="day", owner=AUDIT)(AuditCheckpointed)
    return app
