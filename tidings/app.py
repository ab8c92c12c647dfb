"""The application object: payload contracts, subscribers, publishing, lifecycle."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from tidings.codec import DEFAULT_MAX_EVENT_BYTES, encode
from tidings.context import current_scope
from tidings.contracts import Registry, Upcaster
from tidings.envelope import JSON, SPECVERSION, Event, new_id, validate_type
from tidings.errors import ConfigError
from tidings.middleware.cancellation import publish_cancel
from tidings.middleware.retry import Retry
from tidings.publish_options import check_extension_names, due, per_payload_options
from tidings.schema.registry import SchemaRegistry, at_start, check_schemas_setting
from tidings.subscriber import Component, GroupSettings, Subscriber, handler_shape, slow_settings
from tidings.transport import StartFrom, Transport, check_group_name, check_topic_name
from tidings.transports import open_transport

if TYPE_CHECKING:
    from tidings.otel import Tracing
    from tidings.projections import Projection
    from tidings.sagas import Saga
    from tidings.scheduler import Scheduler

__all__ = ["DEFAULT_URL", "Component", "GroupSettings", "Subscriber", "Tidings"]

DEFAULT_URL = "sqlite:///./tidings.db"
"""The log without ``$TIDINGS_URL`` or a URL: one SQLite file in the current folder."""

H = TypeVar("H", bound=Callable[..., Any])
M = TypeVar("M", bound=type[BaseModel])
U = TypeVar("U", bound=Upcaster)


def default_url() -> str:
    return os.environ.get("TIDINGS_URL") or DEFAULT_URL


class Tidings:
    """One service's connection to the event log.

    ``url`` defaults to ``$TIDINGS_URL``, then ``sqlite:///./tidings.db``; ``service``
    becomes the CloudEvents ``source`` of everything it publishes. ``scheduler`` is the
    database where delayed events wait (a SQLAlchemy URL or Engine); default
    ``$TIDINGS_SCHEDULER_URL``, else, on the SQLite log, a table in the log's own file.
    ``schemas``: at start, ``"register"`` the contracts in the log's schema registry, only
    ``"check"`` them, or ``"off"``; a break refuses the start (``SchemaIncompatible``).
    ``tracing``: True for OpenTelemetry spans of its publishes and its worker's handler
    calls (:mod:`tidings.otel`, the ``otel`` extra), or a :class:`tidings.otel.Tracing`.
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
        self.registry = Registry()
        self.schemas = schemas
        self.schema_registry = SchemaRegistry(self.transport)
        self.subscribers: list[Subscriber] = []
        self._topics: dict[str, dict[str, Any]] = {}
        self.published: dict[str, set[str]] = {}  # topic -> the types declared published there
        self._groups: dict[str, GroupSettings] = {}
        self.components: list[Component] = []
        self.projections: dict[str, Projection] = {}
        # Per topic, the events this app has appended to it (publish, publish_many,
        # publish_events; delayed ones once scheduled): tidings_events_sent_total.
        self.sent: dict[str, int] = {}
        self._scheduler_db = scheduler
        self._scheduler: Scheduler | None = None
        self._started = 0
        # OpenTelemetry spans (tidings.otel); None: nothing of it is imported.
        self.tracing: Tracing | None = _tracing(tracing, self.url) if tracing else None

    # -- declarations -------------------------------------------------------

    def event(
        self, type: str, version: int = 1, *, subject: str | None = None, **about: Any
    ) -> Callable[[M], M]:
        """Class decorator: register a pydantic model as the payload of ``type``/``version``.

        ``subject`` names a field whose value becomes the event's subject (and so its
        partition key) when none is passed to :meth:`publish`. ``about``: ``kind``
        ("event" or "command"), ``owner`` (default: this service), ``description``,
        ``deprecated``, ``sunset``, ``name_check``, ``breaking`` (a new major version,
        registered without a compatibility check) (:meth:`Registry.register`).
        """
        about.setdefault("owner", self.service)
        return self.registry.decorator(type, version, subject=subject, **about)

    def command(self, type: str, version: int = 1, **about: Any) -> Callable[[M], M]:
        """:meth:`event` for a command: a request named in the imperative
        (``task.assign``), subscribed to by exactly one group."""
        return self.event(type, version, kind="command", **about)

    def upcaster(self, type: str, from_version: int) -> Callable[[U], U]:
        """Decorator: a function that turns a ``from_version`` payload (a dict) of
        ``type`` into the next version's; handlers then get such events as that
        version (chains compose; decision 0020)."""
        return self.registry.upcaster(type, from_version)

    def topic(
        self,
        name: str,
        *,
        partitions: int | None = None,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> None:
        """Declare a topic's settings; it is created with them on start if missing.

        ``keep_unread``: retention never deletes a record a live group has not
        committed (the SQLite and memory logs; Kafka and NATS refuse it)."""
        check_topic_name(name)
        self._topics[name] = {
            "partitions": partitions,
            "retention_ms": retention_ms,
            "retention_bytes": retention_bytes,
        }
        if keep_unread:
            self._topics[name]["keep_unread"] = True

    def topic_settings(self) -> dict[str, dict[str, Any]]:
        """The declared topics' settings (those given to :meth:`topic`), by name."""
        return {name: dict(settings) for name, settings in self._topics.items()}

    def publishes(self, topic: str, types: Iterable[str]) -> None:
        """Declare that this app publishes events of ``types`` on ``topic`` (kept in
        :attr:`published`): the send operations of its AsyncAPI document
        (:func:`tidings.asyncapi.document`). Publishing is not limited to them."""
        check_topic_name(topic)
        types = [types] if isinstance(types, str) else types
        self.published.setdefault(topic, set()).update(validate_type(t) for t in types)

    def group(
        self,
        name: str,
        *,
        sequenced: bool = False,
        sla: float | None = None,
        cancellable: bool = False,
    ) -> None:
        """Settings of group ``name``: ``sequenced``, ``sla``, the lag in seconds it
        must stay under, and ``cancellable`` (its subscribers stop a cancelled chain:
        :meth:`cancel`); see :class:`GroupSettings`."""
        check_group_name(name)
        self._groups[name] = GroupSettings(sequenced=sequenced, sla=sla, cancellable=cancellable)

    def group_settings(self, name: str) -> GroupSettings:
        return self._groups.get(name) or GroupSettings()

    def add_component(self, component: Component) -> None:
        """Run ``component`` beside the worker's groups (``tidings run``, ``Worker.serve``)."""
        self.components.append(component)

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

    def subscriber(
        self,
        topic: str,
        *,
        group: str,
        types: Iterable[str] | None = None,
        start_from: StartFrom = "earliest",
        retry: Retry | None = None,
        inbox: Any = None,
        timeout: float | None = None,
        cancellable: bool = False,
        progress_every: float = 1.0,
        progress_topic: str | None = None,
    ) -> Callable[[H], H]:
        """Decorator: run the handler for events of ``types`` on ``topic`` in ``group``.

        The handler takes the payload (its registered model, or the raw JSON data) and,
        optionally, a :class:`~tidings.context.Context`. It may be sync or async.
        ``retry`` is this handler's retry policy (default: the worker's); ``inbox`` a
        :class:`tidings.inbox.Inbox` that makes redelivered events have no second effect.
        ``timeout``, ``cancellable``, ``progress_every``, ``progress_topic``: for slow
        handlers, see :class:`~tidings.subscriber.Subscriber` and docs/agents.md.
        """
        check_topic_name(topic)
        if not group:
            raise ConfigError("subscriber(group=...) needs a group name, e.g. group='email'")
        check_group_name(group)
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError(f"subscriber(retry=...) takes a tidings.Retry, got {retry!r}")
        if start_from not in ("earliest", "latest"):
            raise ConfigError(f"start_from must be 'earliest' or 'latest', got {start_from!r}")
        wanted = None if types is None else frozenset(validate_type(t) for t in types)
        slow = slow_settings(timeout, cancellable, progress_every, progress_topic)

        def wrap(handler: H) -> H:
            takes_context, is_async = handler_shape(handler)
            self._check_start(group, start_from)
            subscriber = Subscriber(
                topic=topic,
                group=group,
                handler=handler,
                types=wanted,
                start_from=start_from,
                is_async=is_async,
                takes_context=takes_context,
                retry=retry,
                inbox=inbox,
                **slow,
            )
            if inbox is not None:
                claim = getattr(inbox, "claim", None)
                if claim is None:
                    raise ConfigError(f"subscriber(inbox=...) takes a tidings.Inbox, got {inbox!r}")
                claim(subscriber)
            self.subscribers.append(subscriber)
            return handler

        return wrap

    def _check_start(self, group: str, start_from: StartFrom) -> None:
        for other in self.subscribers:
            if other.group == group and other.start_from != start_from:
                raise ConfigError(
                    f"group {group!r} has subscribers with start_from "
                    f"{other.start_from!r} and {start_from!r}; a group starts in one place"
                )

    def groups(self) -> list[str]:
        return sorted({s.group for s in self.subscribers})

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
            except BaseException:
                self._started = 0
                await self.transport.close()
                raise

    async def close(self) -> None:
        self._started = max(self._started - 1, 0)
        if self._started == 0:
            await self.transport.close()

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
    ) -> Event:
        """The event :meth:`publish` would send, without sending it."""
        schema = None
        if isinstance(payload, BaseModel):
            contract = self.registry.for_model(payload.__class__)
            if type is not None and type != contract.type:
                raise ConfigError(
                    f"{payload.__class__.__name__} is registered as {contract.type}, not {type}"
                )
            if version is not None and version != contract.version:
                raise ConfigError(
                    f"{payload.__class__.__name__} is version {contract.version} of "
                    f"{contract.type}, not {version}; publish the model of that version"
                )
            type, version, schema = contract.type, contract.version, contract.schema_uri
            if contract.deprecated:
                self.registry.warn_deprecated(contract)
            if subject is None:
                subject = contract.subject_of(payload)
        elif type is None:
            raise ConfigError(
                "publishing a plain value needs type=..., e.g. type='task.created'; or "
                "register a pydantic model with @app.event"
            )
        else:
            self.registry.check_publish(type, version)
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

        ``payload`` is a registered pydantic model, or any JSON value with ``type=``.
        Options: ``subject``, ``key`` (partition key, default the subject),
        ``correlation_id``, ``causation_id``, ``time``, ``traceparent``, ``version``,
        ``extensions``. ``delay`` (seconds or a timedelta) or ``deliver_at`` (an aware
        datetime) publish it later: it waits, durably, in the scheduler table, and is
        appended once due by whichever worker runs the scheduler (``tidings run``).
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
        events = [
            p if isinstance(p, Event) else self.build(p, **options, **per_payload(i, p))
            for i, p in enumerate(payloads)
        ]
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
