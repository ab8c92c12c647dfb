"""A saga's declaration (:class:`Saga`: its start, its steps, deadlines and
compensations) and the handler that runs them on the log's events."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from tidings._sql import make_engine, safe_url, with_psycopg
from tidings.codec import decode, encode
from tidings.envelope import Event, validate_type
from tidings.errors import ConfigError
from tidings.inbox import Inbox
from tidings.outbox import Outbox
from tidings.sagas._app import SagaApp
from tidings.sagas._step import DEADLINE_TYPE, SagaStep
from tidings.sagas._store import Instance, Store
from tidings.sagas._tables import DEFAULT_PREFIX, create, define
from tidings.shredding.fields import EXTENSION, shown

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from tidings.context import Context

__all__ = ["Saga", "StepFunction"]

log = logging.getLogger("tidings.sagas")

StepFunction = Callable[[Any, SagaStep], Any]
"""A step: ``def step(payload, step: SagaStep) -> None`` (a plain ``def``: it runs in
the handled event's database transaction)."""
F = TypeVar("F", bound=StepFunction)

UNKNOWN = ("ignore", "park")


def _states(when: str | Iterable[str] | None) -> tuple[str | None, ...]:
    if when is None:
        return (None,)
    return (when,) if isinstance(when, str) else tuple(when)


class Saga:
    """A process manager: one instance per business key, moved by the events of
    ``topic`` (made by :meth:`tidings.Tidings.saga`; see :mod:`tidings.sagas`).

    ``db``: the database of its state, a SQLAlchemy URL or sync Engine (SQLite or
    PostgreSQL). ``key``: the payload field of the business key, or a function
    ``(payload, event) -> key``. ``states``: the state names, checked when declared and
    on :meth:`SagaStep.goto` (None: any). ``outbox``: where steps' events and deadlines
    go, an :class:`~tidings.Outbox` in ``db`` whose relay you run (default: one in
    ``db``'s ``tidings_outbox``, its relay added to the app's components). ``inbox``:
    an :class:`~tidings.Inbox` on ``db`` (default: a new one). ``group``: its consumer
    group (default: ``name``). ``unknown``: ``"ignore"`` or ``"park"`` a non-start event
    for a key without an instance. ``retry``: its :class:`~tidings.Retry` policy.
    ``table_prefix`` and ``metadata``: where its tables are declared. ``personal``: its
    steps get personal fields in clear (the app's key store; docs/personal-data.md), and
    its state then holds them in clear, in its own database.
    """

    def __init__(
        self,
        app: SagaApp,
        name: str,
        *,
        topic: str,
        db: str | Engine,
        key: str | Callable[[Any, Event], Any],
        states: Iterable[str] | None = None,
        outbox: Outbox | None = None,
        inbox: Inbox | None = None,
        group: str | None = None,
        unknown: str = "ignore",
        retry: Any = None,
        table_prefix: str = DEFAULT_PREFIX,
        metadata: sa.MetaData | None = None,
        personal: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ConfigError(f"saga name must be a non-empty string of <= 200, got {name!r}")
        if not (isinstance(key, str) and key) and not callable(key):
            raise ConfigError(
                f"saga {name!r}: key= names the payload field of the business key (e.g. "
                f"key='task_id') or is a function (payload, event) -> key; got {key!r}"
            )
        if unknown not in UNKNOWN:
            raise ConfigError(
                f"saga {name!r}: unknown= must be 'ignore' or 'park', got {unknown!r}"
            )
        self.app = app
        self.name = name
        self.topic = topic
        self.group = group or name
        self.key = key
        self.unknown = unknown
        self.states: tuple[str, ...] | None = None if states is None else tuple(states)
        self._owns_engine = not isinstance(db, sa.Engine)
        self.engine = self._engine(db)
        self.outbox = outbox if outbox is not None else Outbox(app, self.engine, topic=topic)
        if outbox is not None and safe_url(outbox.engine) != safe_url(self.engine):
            raise ConfigError(
                f"saga {name!r}: its outbox must be in its database {safe_url(self.engine)} "
                f"(a step's events commit with its state), not in {outbox.url}"
            )
        self.inbox = inbox if inbox is not None else Inbox(db)
        self.metadata = metadata if metadata is not None else sa.MetaData()
        self.tables = define(self.metadata, table_prefix)
        self.store = Store(name, self.tables, self.outbox)
        self._starts: dict[str, tuple[StepFunction, str]] = {}
        self._steps: dict[tuple[str, str | None], tuple[StepFunction, str]] = {}
        self._deadline_steps: dict[tuple[str, str | None], StepFunction] = {}
        self._ready = False
        self._handler = self._make_handler()
        self._subscriber: Any = None
        self._retry = retry
        self.personal = bool(personal)  # its steps get personal fields in clear
        if outbox is None:
            app.add_component(self.outbox.relay())

    def _engine(self, db: str | Engine) -> Engine:
        if isinstance(db, sa.Engine):
            return db
        if not isinstance(db, str):
            raise ConfigError(
                f"saga {self.name!r}: db= takes a database URL or a SQLAlchemy Engine, got "
                f"{type(db).__name__}"
            )
        try:
            engine: Engine = make_engine(with_psycopg(sa.make_url(db)), is_async=False)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise ConfigError(
                f"saga {self.name!r}: cannot open the database {db!r}: {exc}"
            ) from None
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(f"sagas support SQLite and PostgreSQL, not {engine.dialect.name}")
        return engine

    def __repr__(self) -> str:
        where = safe_url(self.engine)
        return f"Saga({self.name!r} on {self.topic!r}, group {self.group!r}, in {where})"

    # -- declaring ------------------------------------------------------------------

    def starts(self, *types: str, state: str = "started") -> Callable[[F], F]:
        """Decorator: the step that starts an instance on an event of ``types`` for a
        key that has none; the instance begins in ``state``."""
        self.check_state(state)
        checked = self._types(types, "starts")

        def wrap(fn: F) -> F:
            for t in checked:
                self._starts[t] = (fn, state)
            self._subscribe()
            return fn

        return wrap

    def on(self, *types: str, when: str | Iterable[str] | None = None) -> Callable[[F], F]:
        """Decorator: the step run on an event of ``types`` while the instance is in a
        state of ``when`` (None: any state). An event with no step for the instance's
        state is recorded in its history as ignored."""
        return self._on(types, when, "step")

    def compensate(self, when: str | Iterable[str], *, on: str | Iterable[str]) -> Callable[[F], F]:
        """Decorator: the compensating step run when an event of ``on`` (a failure
        reported by another service) comes while the instance is in ``when``; it
        undoes or works around what the earlier steps did (recorded as a compensation)."""
        return self._on((on,) if isinstance(on, str) else tuple(on), when, "compensation")

    def on_deadline(
        self, name: str, *, when: str | Iterable[str] | None = None
    ) -> Callable[[F], F]:
        """Decorator: the step run when deadline ``name`` (set by
        :meth:`SagaStep.deadline`) is due and still pending; its payload is the
        deadline's (``saga``, ``key``, ``deadline``, ``id``)."""
        if not isinstance(name, str) or not name or len(name) > 100:
            raise ConfigError(f"saga {self.name!r}: a deadline name must be a short string")
        states = _states(when)
        for s in states:
            if s is not None:
                self.check_state(s)

        def wrap(fn: F) -> F:
            for s in states:
                self._deadline_steps[(name, s)] = fn
            self._subscribe()
            return fn

        return wrap

    def _on(self, types: Iterable[str], when: Any, label: str) -> Callable[[F], F]:
        states = _states(when)
        for s in states:
            if s is not None:
                self.check_state(s)
        checked = self._types(types, "on")

        def wrap(fn: F) -> F:
            for t in checked:
                for s in states:
                    if (t, s) in self._steps:
                        raise ConfigError(
                            f"saga {self.name!r} has two steps for {t} in state {s or 'any'}"
                        )
                    self._steps[(t, s)] = (fn, label)
            self._subscribe()
            return fn

        return wrap

    def _types(self, types: Iterable[str], what: str) -> list[str]:
        found = [validate_type(t) for t in types]
        if not found:
            raise ConfigError(f"saga {self.name!r}: {what}() needs at least one event type")
        if DEADLINE_TYPE in found:
            raise ConfigError(f"saga {self.name!r}: use on_deadline() for deadlines")
        return found

    def check_state(self, state: str) -> None:
        if not isinstance(state, str) or not state or len(state) > 100:
            raise ConfigError(f"saga {self.name!r}: a state is a short name, got {state!r}")
        if self.states is not None and state not in self.states:
            raise ConfigError(
                f"saga {self.name!r} has no state {state!r}; its states: {', '.join(self.states)}"
            )

    def check_deadline(self, name: str) -> None:
        if not any(n == name for n, _ in self._deadline_steps):
            raise ConfigError(
                f"saga {self.name!r} has no step for deadline {name!r}: declare one with "
                f"@saga.on_deadline({name!r})"
            )

    def _subscribe(self) -> None:
        """Subscribe the saga's handler to the types it has steps for (again, with the
        new set, each time a step is declared)."""
        types = frozenset(self._starts) | {t for t, _ in self._steps} | {DEADLINE_TYPE}
        app = self.app
        if self._subscriber is None:
            app.subscriber(
                self.topic, group=self.group, types=sorted(types), inbox=self.inbox,
                retry=self._retry, personal=self.personal,
            )(self._handler)  # fmt: skip
            self._subscriber = app.subscribers[-1]
            return
        i = app.subscribers.index(self._subscriber)
        self._subscriber = app.subscribers[i] = dataclasses.replace(self._subscriber, types=types)

    # -- the tables -------------------------------------------------------------------

    def create_tables(self) -> None:
        """Create the saga's tables and its outbox's if missing (the first event does
        it too; Alembic users: the tables are in :attr:`metadata`)."""
        with self.engine.begin() as conn:
            self._create(conn)
        self._ready = True

    def _create(self, conn: Any) -> None:
        create(conn, self.tables)
        self.outbox._create(conn)  # the same database: created alike, in one go

    async def close(self) -> None:
        """Close the inbox and dispose of the engine made from a URL."""
        await self.inbox.close()
        await self.outbox.dispose()
        if self._owns_engine:
            self.engine.dispose()

    # -- handling ------------------------------------------------------------------------

    def _make_handler(self) -> Callable[[Any, Context], None]:
        def handle(payload: Any, ctx: Context) -> None:
            session = ctx.session
            if session is None:  # pragma: no cover - the inbox always gives one
                raise ConfigError(f"saga {self.name!r} runs without its inbox's session")
            try:
                if not self._ready:
                    self._create(session.connection())
                    self._ready = True
                self._dispatch(session, payload, ctx.event, datetime.now(UTC))
            except (sa.exc.OperationalError, sa.exc.ProgrammingError):
                self._ready = False  # a table missing after all: look again next time
                raise

        # The inbox names a handler by module and qualname: one name per saga.
        handle.__qualname__ = f"Saga[{self.name}]"
        handle.__module__ = __name__
        handle.saga = self  # type: ignore[attr-defined]  # for 'tidings sagas --app'
        return handle

    def key_of(self, payload: Any, event: Event) -> str:
        """The business key of an event's payload."""
        key = self.key
        if callable(key):
            value = key(payload, event)
        elif isinstance(payload, dict):
            value = payload.get(key)
        else:
            value = getattr(payload, key, None)
        if value is None or value == "":
            raise ConfigError(f"saga {self.name!r}: {event.type} {event.id} has no key ({key!r})")
        return str(value)

    def _dispatch(self, session: Session, payload: Any, event: Event, now: datetime) -> None:
        if event.type == DEADLINE_TYPE:
            self._deadline(session, payload, event, now)
        else:
            self._apply(session, self.key_of(payload, event), payload, event, now)

    def _apply(self, session: Session, key: str, payload: Any, event: Event, now: datetime) -> None:
        store = self.store
        inst = store.load(session, key)
        if inst is None:
            start = self._starts.get(event.type)
            if start is not None:
                self._start(session, key, start, payload, event, now)
            elif self.unknown == "park":
                data = encode(event, 2**31)
                store.park(session, key, event.id, event.type, data, now)
                store.note(session, key, event.id, event.type, (None, None, None), "parked", now)
            else:
                log.info(
                    "saga %s: %s %s for %r, which has no instance: ignored",
                    self.name, event.type, event.id, key,
                )  # fmt: skip
            return
        found = self._steps.get((event.type, inst.state)) or self._steps.get((event.type, None))
        if inst.status != "active" or found is None:
            if inst.status != "active":
                why = f"saga {inst.status}"
            elif event.type in self._starts:
                why = "started already"
            else:
                why = f"no step in {inst.state}"
            self._ignored(session, key, inst, event, f"ignored: {why}", now)
            return
        self._step(session, key, inst, found, payload, event, now)

    def _start(
        self,
        session: Session,
        key: str,
        start: tuple[StepFunction, str],
        payload: Any,
        event: Event,
        now: datetime,
    ) -> None:
        fn, state = start
        step = SagaStep(self, session, key, state, {}, event, now)
        fn(payload, step)
        new = Instance(step.state, step.data, 1, step.status)
        self.store.insert(session, key, new, now)
        if step.status != "active":
            self.store.cancel_deadlines(session, key, None)
        self.store.note(session, key, event.id, event.type, (None, step.state, 1), "start", now)
        for raw in self.store.unpark(session, key) if self.unknown == "park" else ():
            parked = decode(raw)
            raw_data = parked.data  # personal fields as the saga's subscriber has them
            if EXTENSION in parked.extensions:
                keys = getattr(self.app, "shredder", None) if self.personal else None
                raw_data = shown(parked.id, raw_data, keys)
            data = self.app.registry.decode_payload(parked.type, parked.dataversion, raw_data)
            self._apply(session, key, data, parked, now)

    def _step(
        self,
        session: Session,
        key: str,
        inst: Instance,
        found: tuple[StepFunction, str],
        payload: Any,
        event: Event,
        now: datetime,
        label: str | None = None,
    ) -> None:
        fn, kind = found
        step = SagaStep(self, session, key, inst.state, inst.data, event, now, inst.version)
        fn(payload, step)
        new = Instance(step.state, step.data, inst.version + 1, step.status)
        self.store.update(session, key, inst.version, new, now)
        if step.status != "active":
            self.store.cancel_deadlines(session, key, None)
        note = label or kind
        if step.status != "active":
            note += f"; {step.status}"
        moved = (inst.state, step.state, new.version)
        self.store.note(session, key, event.id, event.type, moved, note, now)

    def _deadline(self, session: Session, payload: Any, event: Event, now: datetime) -> None:
        if not isinstance(payload, dict) or payload.get("saga") != self.name:
            return  # another saga's deadline on this topic
        key, name, deadline_id = str(payload["key"]), str(payload["deadline"]), payload["id"]
        found = self.store.deadline(session, deadline_id)
        inst = self.store.load(session, key)
        if found is None or found[2] != "pending" or inst is None or inst.status != "active":
            status = "unknown" if found is None else found[2]
            log.info("saga %s/%s: deadline %s is %s: ignored", self.name, key, name, status)
            self._ignored(session, key, inst, event, f"deadline {name} {status}: ignored", now)
            return
        self.store.fired(session, deadline_id)
        fn = self._deadline_steps.get((name, inst.state)) or self._deadline_steps.get((name, None))
        if fn is None:
            self._ignored(
                session, key, inst, event, f"deadline {name}: no step in {inst.state}", now
            )
            return
        self._step(session, key, inst, (fn, "deadline"), payload, event, now, f"deadline {name}")

    def _ignored(
        self,
        session: Session,
        key: str,
        inst: Instance | None,
        event: Event,
        note: str,
        now: datetime,
    ) -> None:
        """A history row for an event that did not move the instance."""
        moved = (None, None, None) if inst is None else (inst.state, inst.state, inst.version)
        self.store.note(session, key, event.id, event.type, moved, note, now)
