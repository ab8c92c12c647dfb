"""The application object: payload contracts, subscribers, publishing, lifecycle."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tidings.codec import DEFAULT_MAX_EVENT_BYTES, encode
from tidings.context import current_scope
from tidings.declarations import Declarations
from tidings.envelope import JSON, SPECVERSION, Event, new_id
from tidings.errors import ConfigError, InvalidPayload
from tidings.middleware.cancellation import publish_cancel
from tidings.publish_options import check_extension_names, due, per_payload_options
from tidings.schema.registry import SchemaRegistry, at_start, check_schemas_setting
from tidings.shredding.erasure import erase, shredder_for, watching
from tidings.shredding.fields import EXTENSION, FORM
from tidings.subscriber import Component, GroupSettings, Subscriber
from tidings.transport import Transport, check_topic_name
from tidings.transports import open_transport

if TYPE_CHECKING:
    from tidings.contracts import Contract
    from tidings.otel import Tracing
    from tidings.projections import Projection
    from tidings.sagas import Saga
    from tidings.scheduler import Scheduler

__all__ = ["DEFAULT_URL", "Component", "GroupSettings", "Subscriber", "Tidings"]

DEFAULT_URL = "sqlite:///./tidings.db"
"""The log without ``$TIDINGS_URL`` or a URL: one SQLite file in the current folder."""


_NO_TYPE = (
    "publishing a plain value needs type=..., e.g. type='task.created'; or register a "
    "pydantic model with @app.event"
)


def default_url() -> str:
    return os.environ.get("TIDINGS_URL") or DEFAULT_URL


class Tidings(Declarations):
    """One service's connection to the event log.

    ``url`` defaults to ``$TIDINGS_URL``, then ``sqlite:///./tidings.db``; ``service``
    becomes the CloudEvents ``source`` of everything it publishes. ``scheduler`` is the
    database where delayed events wait (a SQLAlchemy URL or Engine); default
    ``$TIDINGS_SCHEDULER_URL``, else, on the SQLite log, a table in the log's own file.
    ``schemas``: at start, ``"register"`` the contracts in the log's schema registry, only
    ``"check"`` them, or ``"off"``; a break refuses the start (``SchemaIncompatible``).
    ``tracing``: True for OpenTelemetry spans of its publishes and its worker's handler
    calls (:mod:`tidings.otel`, the ``otel`` extra), or a :class:`tidings.otel.Tracing`.
    ``personal``: where the keys of personal fields are (True: the SQLite log's file; a
    SQLAlchemy URL; a :class:`tidings.shredding.KeyStore`): marked fields are then
    encrypted at publish and erasable (docs/personal-data.md).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        service: str,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        transport: Transport | None = None,
        scheduler: Any = None,
        schemas: str = "register",
        tracing: bool | Tracing = False,
        personal: Any = None,
    ) -> None:
        if not service or not isinstance(service, str):
            raise ConfigError("Tidings(service=...) needs the name of this service, e.g. 'taskapi'")
        if any(c.isspace() or not c.isprintable() for c in service):
            # It becomes the CloudEvents source, a URI reference: no spaces.
            raise ConfigError(
                f"Tidings(service={service!r}): use a name without spaces, e.g. 'task-api' "
                "or a URI such as '/services/task-api'"
            )
        check_schemas_setting(schemas)
        if max_event_bytes < 1024:
            raise ConfigError(f"max_event_bytes must be at least 1024, got {max_event_bytes}")
        self.url = url or (transport.url if transport else default_url())
        self.service = service
        self.max_event_bytes = max_event_bytes
        self.transport = transport or open_transport(self.url)
        Declarations.__init__(self, service)
        self.schemas = schemas
        self.schema_registry = SchemaRegistry(self.transport)
        # Per topic, the events this app has appended to it (publish, publish_many,
        # publish_events; delayed ones once scheduled): tidings_events_sent_total.
        self.sent: dict[str, int] = {}
        self._scheduler_db = scheduler
        self._scheduler: Scheduler | None = None
        self._started = 0
        # OpenTelemetry spans (tidings.otel); None: nothing of it is imported.
        self.tracing: Tracing | None = _tracing(tracing, self.url) if tracing else None
        # Seals personal fields at build, opens them for personal=True subscribers.
        self.shredder = shredder_for(personal, self.url)
        # While started: what drops keys other processes erase from the shredder's cache.
        self._erasures: tuple[asyncio.Event, asyncio.Task[None]] | None = None

    # -- workflows (declared here: they need the whole app) ----------------------

    def projection(
        self, name: str, *, topic: str | Sequence[str], db: Any, tables: Iterable[Any]
    ) -> Projection:
        """A read model ``name`` kept from ``topic`` (or a list of topics) in ``tables``
        of ``db`` (a SQLite file or PostgreSQL URL) by the handlers registered with its
        ``on(...)``; its group is ``name``. See :mod:`tidings.projections`."""
        from tidings.projections import Projection

        if name in self.projections:
            raise ConfigError(f"projection {name!r} is declared twice")
        topics = [topic] if isinstance(topic, str) else list(topic)
        projection = Projection(self, name, topics=topics, db=db, tables=tables)
        self.projections[name] = projection
        return projection

    def saga(self, name: str, *, topic: str, db: Any, key: Any, **options: Any) -> Saga:
        """A saga (process manager) named ``name``: one instance per business ``key``
        moved by the events of ``topic``, its state in ``db`` (a SQLAlchemy URL or
        Engine, SQLite or PostgreSQL); declare its steps with the decorators of
        :class:`tidings.sagas.Saga` (options there)."""
        from tidings.sagas import Saga

        return Saga(self, name, topic=topic, db=db, key=key, **options)

    # -- lifecycle ------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the app is started (``async with app`` or :meth:`start`)."""
        return self._started > 0

    async def start(self) -> None:
        self._started += 1
        if self._started == 1:
            await self.transport.start()
            try:
                for name, settings in self._topics.items():
                    await self.transport.create_topic(name, **settings)
                await at_start(self.schema_registry, self, self.schemas)
                for projection in self.projections.values():  # their tables, if missing
                    await asyncio.to_thread(projection.prepare)
                if self.shredder is not None:
                    self._erasures = await watching(self.transport, self.shredder)
            except BaseException:
                self._started = 0
                await self.transport.close()
                raise

    async def close(self) -> None:
        self._started = max(self._started - 1, 0)
        if self._started == 0:
            if self._erasures is not None:
                stop, task = self._erasures
                self._erasures = None
                stop.set()
                await task
            await self.transport.close()
            if self.shredder is not None:
                self.shredder.close()

    async def __aenter__(self) -> Tidings:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def lifespan(self, _asgi_app: Any = None) -> AsyncIterator[None]:
        """FastAPI/Starlette lifespan: ``FastAPI(lifespan=events.lifespan)``."""
        async with self:
            yield

    # -- publishing -----------------------------------------------------------

    def build(
        self,
        payload: Any,
        *,
        type: str | None = None,
        version: int | None = None,
        subject: str | None = None,
        key: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        time: datetime | None = None,
        traceparent: str | None = None,
        extensions: dict[str, Any] | None = None,
        check: bool = True,
    ) -> Event:
        """The event :meth:`publish` would send, without sending it. A plain value of
        a registered type is validated by the model of the version written (the latest
        without ``version``), and its data is the model's JSON form, unless
        ``check=False`` (:class:`~tidings.errors.InvalidPayload`; decision 0052)."""
        schema = None
        contract: Contract | None = None
        plain: BaseModel | None = None  # a plain value, validated by its model
        if isinstance(payload, BaseModel):
            contract = self.registry.of_payload(payload, type, version)
            type = contract.type
        elif type is None:
            raise ConfigError(_NO_TYPE)
        elif (contract := self.registry.check_publish(type, version)) is not None and check:
            payload = plain = contract.validated(payload)
        else:
            contract = None  # no model, or check=False: the value goes as it is
        if contract is not None:
            type, version, schema = contract.type, contract.version, contract.schema_uri
            if contract.deprecated:
                self.registry.warn_deprecated(contract)
            if subject is None:
                subject = contract.subject_of(payload)
        scope = current_scope()
        event_id = new_id()
        if correlation_id is None:
            correlation_id = scope.correlationid if scope else event_id
        if causation_id is None and scope is not None:
            causation_id = scope.causationid
        if traceparent is None and self.tracing is not None:
            traceparent, extensions = self.tracing.inject(extensions)  # + its tracestate
        if extensions:
            check_extension_names(extensions)
        if self.shredder is not None and schema is not None:
            sealed = self.shredder.seal(event_id, payload)
            if sealed is not None:  # the payload's personal fields, encrypted
                payload, extensions = sealed, {**(extensions or {}), EXTENSION: FORM}
        if plain is not None and payload is plain:  # still a dict: its model's JSON form
            payload = plain.__pydantic_serializer__.to_python(plain, mode="json")
        # Positional: a third cheaper than by keyword, for every event published.
        return Event(
            type, self.service, payload, event_id, time, subject, SPECVERSION, JSON, schema,
            version, correlation_id, causation_id, traceparent,
            key if key != subject else None, extensions,
        )  # fmt: skip

    async def publish(
        self,
        topic: str,
        payload: Any,
        *,
        delay: float | timedelta | None = None,
        deliver_at: datetime | None = None,
        **options: Any,
    ) -> Event:
        """Publish one event durably; return it (with its id) once the log has it.

        ``payload`` is a registered pydantic model, or any JSON value with ``type=``;
        a value of a registered type must match its model (else
        :class:`~tidings.errors.InvalidPayload`, and nothing is published).
        Options: ``subject``, ``key`` (partition key, default the subject),
        ``correlation_id``, ``causation_id``, ``time``, ``traceparent``, ``version``,
        ``extensions``, ``check`` (False: a plain value goes unvalidated, as given).
        ``delay`` (seconds or a timedelta) or ``deliver_at`` (an aware datetime)
        publish it later: it waits, durably, in the scheduler table, and is appended
        once due by whichever worker runs the scheduler (``tidings run``).
        """
        if self.tracing is None:
            return await self._publish(topic, payload, delay, deliver_at, options)
        with self.tracing.send(topic, (payload,)) as span:
            event = await self._publish(topic, payload, delay, deliver_at, options)
            self.tracing.describe(span, (event,))
        return event

    async def _publish(
        self,
        topic: str,
        payload: Any,
        delay: float | timedelta | None,
        deliver_at: datetime | None,
        options: dict[str, Any],
    ) -> Event:
        event = payload if isinstance(payload, Event) else self.build(payload, **options)
        if delay is None and deliver_at is None and self._started:  # publish_events, due now
            await self.transport.append_events(topic, [event], self.max_event_bytes)
            self.sent[topic] = self.sent.get(topic, 0) + 1
        else:
            await self._publish_events(topic, [event], due(delay, deliver_at))
        return event

    async def publish_many(
        self,
        topic: str,
        payloads: Iterable[Any],
        *,
        delay: float | timedelta | None = None,
        deliver_at: datetime | None = None,
        **options: Any,
    ) -> list[Event]:
        """Publish several events in one append (one transaction where the log has them).

        ``payloads`` are registered models (each its own subject, from its model's
        ``subject`` field), plain JSON values (with ``type=``) or built events (from
        :meth:`build`, sent as they are; the options apply to the other payloads).
        ``subject`` and ``key`` take one value for every payload, or a function of the
        payload that returns its own (a string, or None for the default)::

            await app.publish_many("orders", rows, type="order.imported",
                                   subject=lambda row: row["order_id"])

        The other options, ``delay`` and ``deliver_at`` are those of :meth:`publish`.
        Every event is built and checked before the one append: one bad event, and
        none is published.
        """
        if self.tracing is None:
            return await self._publish_many(topic, payloads, due(delay, deliver_at), options)
        payloads = list(payloads)
        with self.tracing.send(topic, payloads) as span:
            events = await self._publish_many(topic, payloads, due(delay, deliver_at), options)
            self.tracing.describe(span, events)
        return events

    async def _publish_many(
        self, topic: str, payloads: Iterable[Any], when: datetime | None, options: dict[str, Any]
    ) -> list[Event]:
        per_payload = per_payload_options(options)
        events = []
        for i, p in enumerate(payloads):
            try:
                events.append(
                    p if isinstance(p, Event) else self.build(p, **options, **per_payload(i, p))
                )
            except InvalidPayload as exc:
                raise exc.at(i) from None
        await self._publish_events(topic, events, when)
        return events

    async def publish_events(
        self, topic: str, events: Sequence[Event], *, deliver_at: datetime | None = None
    ) -> None:
        """Append ready-made events (e.g. from :meth:`build`) to ``topic``."""
        if self.tracing is None or not events:
            await self._publish_events(topic, events, deliver_at)
            return
        with self.tracing.send(topic, events) as span:
            await self._publish_events(topic, events, deliver_at)
            self.tracing.describe(span, events)

    async def _publish_events(
        self, topic: str, events: Sequence[Event], deliver_at: datetime | None
    ) -> None:
        if not events:
            return
        if not self._started:
            raise ConfigError(
                "this Tidings app is not started: use 'async with app:' (or the FastAPI "
                "lifespan app.lifespan) before publishing"
            )
        limit = self.max_event_bytes
        if deliver_at is not None and deliver_at > datetime.now(UTC):
            records = [(e.key, encode(e, limit)) for e in events]  # refused now, not when due
            check_topic_name(topic)
            if self._scheduler_configured() is None and (
                self.transport.capabilities.scheduled_appends
            ):
                await self.transport.append_at(topic, records, int(deliver_at.timestamp() * 1000))
            else:
                await self._schedule(topic, events, deliver_at)
        else:
            await self.transport.append_events(topic, events, limit)
        self.sent[topic] = self.sent.get(topic, 0) + len(events)

    async def cancel(
        self, correlation_id: str | None = None, *, subject: str | None = None, reason: str = ""
    ) -> Event:
        """Cancel a chain of work: the events of ``correlation_id``, or those of
        ``subject`` published until now; return the ``tidings.cancelled`` event. In the
        groups that opt in (``cancellable=True``), workers stop its calls under way and
        skip its later events, as cancelled, not failed (docs/agents.md)."""
        return await publish_cancel(self, correlation_id, subject, reason)

    async def erase(self, subject: str) -> str | None:
        """Erase ``subject``'s personal data: delete its key, so every copy of its
        fields reads as erased, and publish ``tidings.subject_erased`` to
        ``_tidings.erasures``; return the key id (None: it had none)."""
        return await erase(self, subject)

    # -- delayed events ---------------------------------------------------------------

    @property
    def scheduler(self) -> Scheduler | None:
        """Where delayed events wait (:class:`tidings.scheduler.Scheduler`, the table
        ``tidings_scheduled``), or None if none was configured and this transport has
        no default, or holds delayed events itself (NATS: message schedules)."""
        if self._scheduler is None:
            from tidings.scheduler import Scheduler, default_scheduler_db

            db = self._scheduler_configured()
            if db is None and not self.transport.capabilities.scheduled_appends:
                db = default_scheduler_db(self.transport.url)
            if db is None:
                return None
            self._scheduler = Scheduler(self, db)
        return self._scheduler

    def _scheduler_configured(self) -> Any:
        """The scheduler database given to this app or in $TIDINGS_SCHEDULER_URL."""
        return self._scheduler_db or os.environ.get("TIDINGS_SCHEDULER_URL")

    def scheduler_relay(self) -> Component | None:
        """The component that appends delayed events once due (run by workers)."""
        scheduler = self.scheduler
        return scheduler.relay() if scheduler else None

    async def _schedule(self, topic: str, events: Sequence[Event], when: datetime) -> None:
        scheduler = self.scheduler
        if scheduler is None:
            raise ConfigError(
                f"delayed events on {self.transport.url} need a scheduler database: "
                "Tidings(..., scheduler='postgresql+psycopg://...') or "
                "$TIDINGS_SCHEDULER_URL (any SQLAlchemy URL)"
            )
        await scheduler.add(topic, events, when)


def _tracing(tracing: bool | Tracing, url: str) -> Tracing:
    """``Tidings(tracing=...)``: the given Tracing, or one for this log's URL."""
    try:
        from tidings.otel import Tracing
    except ImportError as exc:
        raise ConfigError(f"Tidings(tracing=True): {exc}") from None
    return (tracing if isinstance(tracing, Tracing) else Tracing()).for_log(url)
