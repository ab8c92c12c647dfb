"""What a saga's step function gets: the instance (state, data) and the ways to move
it, all written in the transaction of the event being handled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from tidings.envelope import Event, new_id
from tidings.errors import ConfigError
from tidings.outbox import Outbox
from tidings.sagas._store import Store
from tidings.sagas._tables import SagaTables

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["DEADLINE_TYPE", "SagaStep"]

DEADLINE_TYPE = "tidings.saga.deadline_reached"
"""The type of the event a due deadline becomes (payload: saga, key, deadline, id)."""


class Owner(Protocol):
    """What a step needs of its saga (:class:`tidings.sagas.Saga`)."""

    name: str
    topic: str
    outbox: Outbox
    tables: SagaTables
    store: Store

    def check_state(self, state: str) -> None: ...

    def check_deadline(self, name: str) -> None: ...


class SagaStep:
    """One step of one saga instance: the event that moves it and what it does.

    ``state`` is the instance's state (a name; :meth:`goto` changes it), ``data`` its
    JSON data (change it in place). :meth:`send` adds an event to the saga's outbox,
    :meth:`deadline` and :meth:`cancel` set and cancel deadlines, :meth:`finish` and
    :meth:`fail` end the instance. Everything a step does is written in the handled
    event's transaction, with its inbox mark and the instance's new version: it
    happens once, or (a crash, a conflict) not at all and the event comes again.
    """

    __slots__ = (
        "_deadlines",
        "_saga",
        "_session",
        "data",
        "event",
        "key",
        "now",
        "state",
        "status",
        "version",
    )

    def __init__(
        self,
        saga: Owner,
        session: Session,
        key: str,
        state: str,
        data: dict[str, Any],
        event: Event,
        now: datetime,
        version: int = 0,
    ) -> None:
        self._saga = saga
        self._session = session
        self.key = key
        self.state = state
        self.data = data
        self.event = event  # the event handled (a deadline's own event for a deadline)
        self.now = now
        self.status = "active"
        self.version = version  # the instance's, as read (0: being started)
        self._deadlines: list[str] = []  # named deadlines set in this step

    def __repr__(self) -> str:
        return f"SagaStep({self._saga.name}/{self.key} {self.state} on {self.event.type})"

    # -- moving ----------------------------------------------------------------------

    def goto(self, state: str) -> None:
        """Move the instance to ``state`` (one of the saga's declared states)."""
        self._saga.check_state(state)
        self.state = state

    def finish(self, state: str | None = None) -> None:
        """End the instance (status ``finished``), in ``state`` if given; its pending
        deadlines are cancelled."""
        if state is not None:
            self.goto(state)
        self.status = "finished"

    def fail(self, state: str | None = None) -> None:
        """End the instance as ``failed`` (after its compensation), in ``state`` if
        given; its pending deadlines are cancelled."""
        if state is not None:
            self.goto(state)
        self.status = "failed"

    # -- effects ---------------------------------------------------------------------

    def send(self, payload: Any, *, topic: str | None = None, **options: Any) -> Event:
        """Add an event to the saga's outbox (``topic`` default: the saga's), in this
        step's transaction: it is published once the step commits. ``options`` are
        those of :meth:`tidings.Outbox.add`; correlation and causation default to the
        handled event's."""
        options.setdefault("correlation_id", self.event.correlationid or self.event.id)
        options.setdefault("causation_id", self.event.id)
        return self._saga.outbox.add(
            self._session, payload, topic=topic or self._saga.topic, **options
        )

    def deadline(
        self, name: str, *, at: datetime | None = None, after: timedelta | float | None = None
    ) -> datetime:
        """Set deadline ``name`` at ``at`` (an aware datetime) or ``after`` (seconds or
        a timedelta from now); return when it is due. When due, the saga's
        :meth:`~Saga.on_deadline` step for ``name`` runs, unless the deadline was
        cancelled or the instance ended first. Setting a pending deadline again moves it."""
        self._saga.check_deadline(name)
        if (at is None) == (after is None):
            raise ConfigError(f"deadline {name!r}: give at= (a datetime) or after=, not both")
        if after is not None:
            seconds = after.total_seconds() if isinstance(after, timedelta) else float(after)
            at = self.now + timedelta(seconds=seconds)
        assert at is not None
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise ConfigError(f"deadline {name!r}: at= must be an aware datetime, got {at!r}")
        at = at.astimezone(UTC)
        if self.version or name in self._deadlines:  # a new instance has none to replace
            self.cancel(name)
        saga, deadline_id = self._saga, new_id()
        event = saga.outbox.add(
            self._session,
            {"saga": saga.name, "key": self.key, "deadline": name, "id": deadline_id},
            type=DEADLINE_TYPE,
            topic=saga.topic,
            subject=self.key,
            key=self.event.key,  # the partition of the key's events: order kept with them
            deliver_at=at,
            correlation_id=self.event.correlationid or self.event.id,
            causation_id=self.event.id,
        )
        saga.store.add_deadline(
            self._session,
            {
                "id": deadline_id, "name": saga.name, "key": self.key, "deadline": name,
                "due_at": at, "status": "pending", "event_id": event.id, "created_at": self.now,
            },
        )  # fmt: skip
        self._deadlines.append(name)
        return at

    def cancel(self, name: str | None = None) -> int:
        """Cancel the pending deadline ``name`` (None: all of them); return how many.
        Its event is taken out of the outbox if still there; if the relay published it
        already, the saga ignores it when it comes."""
        return self._saga.store.cancel_deadlines(self._session, self.key, name)

    def deadlines(self) -> dict[str, datetime]:
        """The instance's pending deadlines: name -> due time."""
        return self._saga.store.pending_deadlines(self._session, self.key)
