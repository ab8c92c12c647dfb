"""The Task API's reads and writes, without HTTP: each change is one transaction that
writes the task and adds its events to the outbox.

The event exists exactly when the change does: both commit or neither does, and the
request never waits for the log or any consumer (the relay moves the events later).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from taskapi.api_models import PATCHABLE, TaskCreate, TaskList, TaskOut
from taskapi.db import Status, Task, writer
from taskapi.events import TaskAssigned, TaskCompleted, TaskCreated, TaskDeleted, TaskUpdated
from tidings import new_id
from tidings.outbox import Outbox

__all__ = ["TaskIsCompleted", "TaskNotFound", "TaskStore"]

# Ids are UUIDs; anything else cannot name a task, and is answered 404 without asking
# the database (which may refuse e.g. a NUL in a query parameter with an error).
_ID = re.compile(r"[A-Za-z0-9._~-]{1,64}")


class TaskNotFound(LookupError):
    """No task has this id (HTTP 404)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")


class TaskIsCompleted(Exception):
    """The change is refused because the task is completed (HTTP 409)."""


class TaskStore:
    """Tasks in ``engine``'s database; with an ``outbox``, every change adds its events
    in its own transaction (``outbox=None``: the same writes without events)."""

    def __init__(self, engine: Engine, outbox: Outbox | None) -> None:
        self.engine = engine
        self.outbox = outbox
        self._writer = writer(engine)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        # expire_on_commit=False: the answer is built from the objects as written,
        # without reading them back after the commit.
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    def _emit(self, session: Session, payload: BaseModel) -> None:
        if self.outbox is not None:
            # Looked up on each call (not bound once), so a test can replace it.
            self.outbox.add(session, payload)

    def _locked(self, session: Session, task_id: str) -> Task:
        """The task, locked for the rest of the transaction (FOR UPDATE on PostgreSQL;
        on SQLite the IMMEDIATE transaction already holds the write lock)."""
        if _ID.fullmatch(task_id) is None:
            raise TaskNotFound(task_id)
        task = session.get(Task, task_id, with_for_update=True)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    # -- reads ----------------------------------------------------------------------

    def get(self, task_id: str) -> TaskOut:
        if _ID.fullmatch(task_id) is None:
            raise TaskNotFound(task_id)
        with Session(self.engine) as session:
            task = session.get(Task, task_id)
            if task is None:
                raise TaskNotFound(task_id)
            return TaskOut.model_validate(task)

    def page(
        self, *, status: Status | None, assignee: str | None, limit: int, offset: int
    ) -> TaskList:
        """One page ordered by (created_at, id), and the number of matching tasks."""
        where: list[sa.ColumnElement[bool]] = []
        if status is not None:
            where.append(Task.status == status)
        if assignee is not None:
            where.append(Task.assignee == assignee)
        with Session(self.engine) as session, session.begin():
            if self.engine.dialect.name == "postgresql":
                # One snapshot for both queries, so that the total matches the page
                # (SQLite's read transaction is one snapshot already).
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            total = session.scalar(sa.select(sa.func.count()).select_from(Task).where(*where))
            rows = session.scalars(
                sa.select(Task)
                .where(*where)
                .order_by(Task.created_at, Task.id)
                .limit(limit)
                .offset(offset)
            )
            items = [TaskOut.model_validate(task) for task in rows]
        return TaskList(items=items, total=total or 0, limit=limit, offset=offset)

    # -- changes --------------------------------------------------------------------

    def create(self, body: TaskCreate) -> TaskOut:
        """Insert the task; event ``task.created``."""
        now = datetime.now(UTC)
        task = Task(
            id=new_id(),
            title=body.title,
            description=body.description,
            assignee=body.assignee,
            due=body.due,
            priority=body.priority,
            status="open",
            created_at=now,
            updated_at=now,
        )
        with self._write() as session:
            session.add(task)
            self._emit(
                session,
                TaskCreated(
                    task_id=task.id,
                    title=task.title,
                    description=task.description,
                    assignee=task.assignee,
                    due_at=task.due,
                    priority=task.priority,
                    created_at=now,
                ),
            )
            return TaskOut.model_validate(task)

    def update(self, task_id: str, changes: dict[str, Any]) -> TaskOut:
        """Apply ``changes`` (fields of :data:`PATCHABLE`) to an open task.

        Event ``task.updated`` with the fields that actually changed, and
        ``task.assigned`` too when the assignee did; no write and no event when nothing
        changed.
        """
        with self._write() as session:
            task = self._locked(session, task_id)
            if task.status == "completed":
                raise TaskIsCompleted(f"task {task_id} is completed; it can only be deleted")
            changed = [
                name
                for name in PATCHABLE
                if name in changes and getattr(task, name) != changes[name]
            ]
            if not changed:
                return TaskOut.model_validate(task)
            previous_assignee = task.assignee
            for name in changed:
                setattr(task, name, changes[name])
            task.updated_at = datetime.now(UTC)
            self._emit(
                session,
                TaskUpdated(
                    task_id=task.id,
                    changed=changed,
                    title=task.title,
                    description=task.description,
                    assignee=task.assignee,
                    due=task.due,
                    priority=task.priority,
                    updated_at=task.updated_at,
                ),
            )
            if "assignee" in changed:
                self._emit(
                    session,
                    TaskAssigned(
                        task_id=task.id,
                        title=task.title,
                        assignee=task.assignee,
                        previous_assignee=previous_assignee,
                        due=task.due,
                    ),
                )
            return TaskOut.model_validate(task)

    def complete(self, task_id: str) -> TaskOut:
        """Mark an open task completed; event ``task.completed``."""
        with self._write() as session:
            task = self._locked(session, task_id)
            if task.status == "completed":
                raise TaskIsCompleted(f"task {task_id} is already completed")
            now = datetime.now(UTC)
            task.status = "completed"
            task.completed_at = now
            task.updated_at = now
            self._emit(
                session,
                TaskCompleted(
                    task_id=task.id, title=task.title, assignee=task.assignee, completed_at=now
                ),
            )
            return TaskOut.model_validate(task)

    def delete(self, task_id: str) -> None:
        """Delete the task, open or completed; event ``task.deleted``."""
        with self._write() as session:
            task = self._locked(session, task_id)
            session.delete(task)
            self._emit(
                session,
                TaskDeleted(
                    task_id=task.id,
                    title=task.title,
                    assignee=task.assignee,
                    deleted_at=datetime.now(UTC),
                ),
            )
