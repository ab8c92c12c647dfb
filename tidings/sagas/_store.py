"""The saga store's statements, run in the handled event's session: load an instance,
write it under optimistic concurrency, its history, deadlines and parked events."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from tidings.errors import ConfigError, TidingsError
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
    """The statements of saga ``name`` on ``tables``; deadlines' events in ``outbox``.

    Built once, executed with parameters: building a statement per step (``.values()``
    with literals) cost more than running it (measured: ``bench/fig_saga.py``)."""

    def __init__(self, name: str, tables: SagaTables, outbox: Outbox) -> None:
        self.name = name
        self.tables = tables
        self.outbox = outbox
        s, h, d, p = tables
        b = sa.bindparam  # names other than the columns': an UPDATE reserves those
        mine = s.c.name == name
        self._load = sa.select(s.c.state, s.c.data, s.c.version, s.c.status).where(
            mine, s.c.key == b("k")
        )
        self._insert = sa.insert(s)
        self._update = (
            sa.update(s)
            .where(mine, s.c.key == b("k"), s.c.version == b("read"))
            .values(
                state=b("new_state"), data=b("new_data", type_=s.c.data.type),
                version=b("new_version"), status=b("new_status"), updated_at=b("now"),
            )
        )  # fmt: skip
        self._note = sa.insert(h)
        self._deadline = sa.select(d.c.key, d.c.deadline, d.c.status).where(
            d.c.id == b("did"), d.c.name == name
        )
        self._add_deadline = sa.insert(d)
        self._fired = sa.update(d).where(d.c.id == b("did")).values(status="fired")
        pending = (d.c.name == name, d.c.key == b("k"), d.c.status == "pending")
        self._pending = sa.select(d.c.deadline, d.c.due_at).where(*pending)
        self._cancel = {
            named: (
                sa.update(d).where(*where).values(status="cancelled"),
                sa.select(d.c.event_id).where(*where),
            )
            for named, where in (
                (False, pending),
                (True, (*pending, d.c.deadline == b("dname"))),
            )
        }
        self._forget = sa.delete(outbox.table).where(
            outbox.table.c.event_id.in_(b("events", expanding=True))
        )
        self._park = sa.insert(p)
        parked = (p.c.name == name, p.c.key == b("k"))
        self._parked = sa.select(p.c.event).where(*parked).order_by(p.c.seq)
        self._unpark = sa.delete(p).where(*parked)

    def load(self, session: Session, key: str) -> Instance | None:
        row = session.execute(self._load, {"k": key}).first()
        return None if row is None else Instance(row[0], dict(row[1] or {}), row[2], row[3])

    def insert(self, session: Session, key: str, new: Instance, now: datetime) -> None:
        """The first version of an instance; a SagaConflict if another delivery wrote it."""
        values = {
            "name": self.name, "key": key, "state": new.state, "data": new.data,
            "version": new.version, "status": new.status, "started_at": now, "updated_at": now,
        }  # fmt: skip
        try:
            # No savepoint of its own: the conflict fails the whole step, whose event's
            # savepoint (or transaction) the inbox rolls back before the retry.
            session.execute(self._insert, values)
        except sa.exc.IntegrityError:
            raise SagaConflict(f"saga {self.name}/{key} was started by another delivery") from None
        except sa.exc.StatementError as exc:
            raise self._not_json(key, exc) from None

    def update(self, session: Session, key: str, read: int, new: Instance, now: datetime) -> None:
        """Write ``new`` over version ``read``; a SagaConflict if that is not the current one."""
        try:
            done = session.execute(
                self._update,
                {
                    "k": key, "read": read, "new_state": new.state, "new_data": new.data,
                    "new_version": new.version, "new_status": new.status, "now": now,
                },
            )  # fmt: skip
        except sa.exc.StatementError as exc:
            raise self._not_json(key, exc) from None
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise SagaConflict(
                f"saga {self.name}/{key}: version {read} was moved on by another delivery"
            )

    def _not_json(self, key: str, exc: sa.exc.StatementError) -> Exception:
        """``step.data`` that JSON cannot hold: a ConfigError that says so."""
        if isinstance(exc, sa.exc.DBAPIError) or not isinstance(exc.orig, TypeError | ValueError):
            return exc
        return ConfigError(
            f"saga {self.name}/{key}: step.data must hold JSON values (str, int, float, "
            f"bool, None, lists and dicts of them; a datetime as .isoformat()): {exc.orig}"
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
        session.execute(
            self._note,
            {
                "name": self.name, "key": key, "event_id": event_id, "type": type_,
                "from_state": moved[0], "to_state": moved[1], "version": moved[2],
                "note": note, "at": now,
            },
        )  # fmt: skip

    # -- deadlines --------------------------------------------------------------------

    def add_deadline(self, session: Session, row: dict[str, Any]) -> None:
        session.execute(self._add_deadline, row)

    def deadline(self, session: Session, deadline_id: str) -> tuple[str, str, str] | None:
        """(key, name, status) of a deadline of this saga, or None."""
        row = session.execute(self._deadline, {"did": deadline_id}).first()
        return None if row is None else (row[0], row[1], row[2])

    def fired(self, session: Session, deadline_id: str) -> None:
        session.execute(self._fired, {"did": deadline_id})

    def cancel_deadlines(self, session: Session, key: str, name: str | None) -> int:
        """Cancel pending deadlines of ``key`` (``name``, or all), and take their events
        out of the outbox where the relay has not published them yet."""
        cancel, look = self._cancel[name is not None]
        params = {"k": key} if name is None else {"k": key, "dname": name}
        d = self.tables.deadlines
        if session.get_bind().dialect.update_returning:  # SQLite >= 3.35, PostgreSQL
            events = [r[0] for r in session.execute(cancel.returning(d.c.event_id), params)]
        else:
            events = [r[0] for r in session.execute(look, params)]
            if events:
                session.execute(cancel, params)
        if events:
            session.execute(self._forget, {"events": events})
        return len(events)

    def pending_deadlines(self, session: Session, key: str) -> dict[str, datetime]:
        return {r[0]: r[1] for r in session.execute(self._pending, {"k": key})}

    # -- events that came before the instance ---------------------------------------------

    def park(
        self, session: Session, key: str, event_id: str, type_: str, data: bytes, now: datetime
    ) -> None:
        session.execute(
            self._park,
            {"name": self.name, "key": key, "event_id": event_id, "type": type_,
             "event": data, "at": now},
        )  # fmt: skip

    def unpark(self, session: Session, key: str) -> list[bytes]:
        """The events parked for ``key``, in the order they came; deleted."""
        rows = session.execute(self._parked, {"k": key}).all()
        if rows:
            session.execute(self._unpark, {"k": key})
        return [r[0] for r in rows]
