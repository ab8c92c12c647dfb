"""The saga store's statements, run in the handled event's session: load an instance,
write it under optimistic concurrency, its history, deadlines and parked events."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from tidings.errors import TidingsError
from tidings.sagas._tables import SagaTables

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tidings.outbox import Outbox

__all__ = ["Instance", "SagaConflict", "Store"]


class SagaConflict(TidingsError):
    """Another delivery moved the saga instance first (its version changed since it was
    read): nothing of this step was written; the event is retried and then finds the
    instance as it is now."""


class Instance(NamedTuple):
    state: str
    data: dict[str, Any]
    version: int
    status: str


class Store:
    """The statements of saga ``name`` on ``tables``; deadlines' events in ``outbox``."""

    def __init__(self, name: str, tables: SagaTables, outbox: Outbox) -> None:
        self.name = name
        self.tables = tables
        self.outbox = outbox
        s = tables.sagas
        self._load = sa.select(s.c.state, s.c.data, s.c.version, s.c.status).where(
            s.c.name == name, s.c.key == sa.bindparam("k")
        )

    def load(self, session: Session, key: str) -> Instance | None:
        row = session.execute(self._load, {"k": key}).first()
        return None if row is None else Instance(row[0], dict(row[1] or {}), row[2], row[3])

    def insert(self, session: Session, key: str, new: Instance, now: datetime) -> None:
        """The first version of an instance; a SagaConflict if another delivery wrote it."""
        s = self.tables.sagas
        values = {
            "name": self.name, "key": key, "state": new.state, "data": new.data,
            "version": new.version, "status": new.status, "started_at": now, "updated_at": now,
        }  # fmt: skip
        try:
            with session.begin_nested():  # a duplicate key rolls back this insert only
                session.execute(sa.insert(s).values(values))
        except sa.exc.IntegrityError:
            raise SagaConflict(f"saga {self.name}/{key} was started by another delivery") from None

    def update(self, session: Session, key: str, read: int, new: Instance, now: datetime) -> None:
        """Write ``new`` over version ``read``; a SagaConflict if that is not the current one."""
        s = self.tables.sagas
        done = session.execute(
            sa.update(s)
            .where(s.c.name == self.name, s.c.key == key, s.c.version == read)
            .values(
                state=new.state, data=new.data, version=new.version, status=new.status,
                updated_at=now,
            )
        )  # fmt: skip
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise SagaConflict(
                f"saga {self.name}/{key}: version {read} was moved on by another delivery"
            )

    def note(
        self,
        session: Session,
        key: str,
        event_id: str,
        type_: str,
        moved: tuple[str | None, str | None, int | None],
        note: str,
        now: datetime,
    ) -> None:
        """A history row: what ``event_id`` did to the instance (``moved``: from, to,
        the version after)."""
        h = self.tables.history
        session.execute(
            sa.insert(h).values(
                name=self.name, key=key, event_id=event_id, type=type_, from_state=moved[0],
                to_state=moved[1], version=moved[2], note=note, at=now,
            )
        )  # fmt: skip

    # -- deadlines --------------------------------------------------------------------

    def deadline(self, session: Session, deadline_id: str) -> tuple[str, str, str] | None:
        """(key, name, status) of a deadline of this saga, or None."""
        d = self.tables.deadlines
        row = session.execute(
            sa.select(d.c.key, d.c.deadline, d.c.status).where(
                d.c.id == deadline_id, d.c.name == self.name
            )
        ).first()
        return None if row is None else (row[0], row[1], row[2])

    def fired(self, session: Session, deadline_id: str) -> None:
        d = self.tables.deadlines
        session.execute(sa.update(d).where(d.c.id == deadline_id).values(status="fired"))

    def cancel_deadlines(self, session: Session, key: str, name: str | None) -> int:
        """Cancel pending deadlines of ``key`` (``name``, or all), and take their events
        out of the outbox where the relay has not published them yet."""
        d = self.tables.deadlines
        where = [d.c.name == self.name, d.c.key == key, d.c.status == "pending"]
        if name is not None:
            where.append(d.c.deadline == name)
        events = [r[0] for r in session.execute(sa.select(d.c.event_id).where(*where))]
        if not events:
            return 0
        session.execute(sa.update(d).where(*where).values(status="cancelled"))
        o = self.outbox.table
        session.execute(sa.delete(o).where(o.c.event_id.in_(events)))
        return len(events)

    def pending_deadlines(self, session: Session, key: str) -> dict[str, datetime]:
        d = self.tables.deadlines
        rows = session.execute(
            sa.select(d.c.deadline, d.c.due_at).where(
                d.c.name == self.name, d.c.key == key, d.c.status == "pending"
            )
        )
        return {r[0]: r[1] for r in rows}

    # -- events that came before the instance ---------------------------------------------

    def park(
        self, session: Session, key: str, event_id: str, type_: str, data: bytes, now: datetime
    ) -> None:
        p = self.tables.parked
        session.execute(
            sa.insert(p).values(
                name=self.name, key=key, event_id=event_id, type=type_, event=data, at=now
            )
        )

    def unpark(self, session: Session, key: str) -> list[bytes]:
        """The events parked for ``key``, in the order they came; deleted."""
        p = self.tables.parked
        where = (p.c.name == self.name, p.c.key == key)
        rows = session.execute(sa.select(p.c.event).where(*where).order_by(p.c.seq)).all()
        if rows:
            session.execute(sa.delete(p).where(*where))
        return [r[0] for r in rows]
