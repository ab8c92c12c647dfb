"""Sagas (process managers): a declarative state machine per business key, moved by
events, with deadlines and compensations, its state in your database.

::

    escalation = app.saga("task-escalation", topic="task-events", db="sqlite:///./app.db",
                          key="task_id", states=["waiting", "escalated", "failed"])

    @escalation.starts("task.created", state="waiting")
    def start(task, step):
        step.data["title"] = task.title
        step.deadline("overdue", at=task.due_at)

    @escalation.on("task.completed")
    def done(task, step):
        step.finish()

    @escalation.on_deadline("overdue", when="waiting")
    def overdue(deadline, step):
        step.send(Escalate(task_id=step.key))
        step.goto("escalated")

    @escalation.compensate("escalated", on="notification.failed")
    def undo(failure, step):
        step.fail("failed")

**One instance per key.** ``key`` names the payload field that holds the business key
(or is a function ``(payload, event) -> key``, e.g. the correlation id). A start event
for a key without an instance starts one; the other events move it; an event with no
step for the instance's state, or for an ended instance, is recorded in its history as
ignored. ``unknown``: what happens to a non-start event for a key without an
instance: ``"ignore"`` (logged; the default) or ``"park"`` (kept, and applied in order
right after the start, in the start's transaction).

**Exactly once, crash or not.** The saga is a group of its own (``group``, default its
name) with an :class:`~tidings.Inbox` on ``db``. A step runs in the handled event's
inbox transaction: the instance's new state and version, its history row, the events
it sends and the deadlines it sets (rows of an :class:`~tidings.Outbox` in ``db``)
commit together with the event's inbox mark, or not at all. A crash before that commit
runs the step again from the state it had; after it, the event is found marked and
passed: no step is lost or repeated, and the outbox's relay publishes each sent event
at least once with one event id (consumers with an inbox see it once).

**Optimistic concurrency.** Every transition writes ``UPDATE ... WHERE version =
:read``; if another delivery (a zombie worker after a rebalance) moved the instance
first, nothing is written and :class:`SagaConflict` sends the event to its retries,
which run it against the state as it is now.

**Deadlines** are outbox rows with a delivery time (``tidings.saga.deadline_reached``
events, keyed like the event that set them), written in the step's transaction, plus a
row in ``tidings_saga_deadlines``. :meth:`SagaStep.cancel`, and ending the instance,
cancel them: the row is marked and the event is taken out of the outbox; one the relay
had already published is ignored when it comes (its row is not pending).

**Tables** (in ``db``, created by :meth:`Saga.create_tables` or the first event; in
:attr:`Saga.metadata` for Alembic): ``tidings_sagas`` (name, key, state, data, version,
status, times), ``tidings_saga_history``, ``tidings_saga_deadlines``,
``tidings_saga_parked``. :func:`list_sagas` and :func:`show_saga` read them
(``tidings sagas list|show``). See ``docs/decisions/0030-sagas.md``.
"""

from tidings.sagas._app import SagaApp
from tidings.sagas._query import SagaInfo, list_sagas, saga_databases, show_saga
from tidings.sagas._saga import Saga, StepFunction
from tidings.sagas._step import DEADLINE_TYPE, SagaStep
from tidings.sagas._store import SagaConflict
from tidings.sagas._tables import DEFAULT_PREFIX

__all__ = [
    "DEADLINE_TYPE",
    "DEFAULT_PREFIX",
    "Saga",
    "SagaApp",
    "SagaConflict",
    "SagaInfo",
    "SagaStep",
    "StepFunction",
    "list_sagas",
    "saga_databases",
    "show_saga",
]
