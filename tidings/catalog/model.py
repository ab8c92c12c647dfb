"""The event catalog: every event type with its versions, owner, producers, consumers,
topics, partition key, examples and the flows between types (decision 0022).

:func:`build_catalog` reads the schema registry (schemas, modes and what each service
recorded at start), an app's own declarations if given (they replace what its service
recorded), and the newest events of every topic (:mod:`tidings.catalog.scan`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from tidings.admin import group_rows, partition_lag
from tidings.catalog.scan import DEFAULT_SCAN, Kept, Observed, scan
from tidings.personal import PersonalField, personal_fields
from tidings.schema.compat import Change, diff
from tidings.schema.registry import SchemaRegistry, offers
from tidings.schema.services import (
    Declarations,
    Deprecation,
    Held,
    ServiceRecord,
    about,
    deprecations,
    describe,
)
from tidings.schema.state import RegistryState, SchemaVersion
from tidings.transport import Transport

__all__ = [
    "Catalog",
    "Consumer",
    "EventInfo",
    "Flow",
    "Producer",
    "VersionInfo",
    "build_catalog",
]


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of an event type: its schema (if registered or held by the app
    given), the changes from the version before it, deprecation, and an example."""

    version: int
    schema: dict[str, Any] | None = None
    fingerprint: str | None = None
    registered_by: str | None = None
    registered_at: datetime | None = None
    breaking: bool = False
    deprecated: bool = False
    sunset: date | None = None
    # from the previous version with a schema, judged under the type's policy
    changes: tuple[Change, ...] = ()
    previous: int | None = None  # that version
    example: Any = None
    example_from: str | None = None  # "model" (its JSON Schema's examples) or "log"

    @property
    def personal(self) -> tuple[PersonalField, ...]:
        """The fields its schema marks as personal data, with their subjects."""
        return tuple(personal_fields(self.schema)) if self.schema is not None else ()


@dataclass(frozen=True, slots=True)
class Producer:
    """A service that publishes a type on a topic: declared (``app.publishes``), seen
    in the log, or both."""

    service: str
    topic: str
    versions: tuple[int, ...]
    declared: bool
    seen: int = 0  # events of the scan
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class Consumer:
    """A group that subscribes to a type on a topic; ``reads``: each version it
    decodes and the version its handlers get; ``sla``: the lag in seconds it must stay
    under, and ``lag_seconds`` the group's lag on the topic when the catalog was made
    (the age of its oldest unhandled event, the worst partition's; None: no SLA, or the
    group has no offsets there yet)."""

    service: str
    group: str
    topic: str
    reads: dict[int, int]
    every_type: bool = False
    sla: float | None = None
    lag_seconds: float | None = None

    @property
    def over_sla(self) -> bool:
        """Whether its lag is past its SLA."""
        return self.sla is not None and self.lag_seconds is not None and self.lag_seconds > self.sla


@dataclass(frozen=True, slots=True)
class Flow:
    """Events of ``cause`` caused ``count`` events of ``effect`` (their causationid)."""

    cause: str
    effect: str
    count: int


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One event type in the catalog."""

    type: str
    kind: str
    owner: str | None
    description: str | None
    subject: str | None  # the payload field that is the subject, the default partition key
    mode: str
    policy: str
    versions: tuple[VersionInfo, ...]
    producers: tuple[Producer, ...]
    consumers: tuple[Consumer, ...]
    topics: tuple[str, ...]

    def version(self, number: int) -> VersionInfo | None:
        return next((v for v in self.versions if v.version == number), None)


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every event type, every service's record, and the flows seen in the log."""

    url: str
    generated_at: datetime
    events: tuple[EventInfo, ...]
    services: tuple[ServiceRecord, ...]
    flows: tuple[Flow, ...]
    scanned: dict[str, int]  # topic -> events read

    def event(self, type: str) -> EventInfo | None:
        return next((e for e in self.events if e.type == type), None)

    def causes(self, type: str) -> list[Flow]:
        return [f for f in self.flows if f.effect == type]

    def effects(self, type: str) -> list[Flow]:
        return [f for f in self.flows if f.cause == type]

    def deprecations(self) -> list[Deprecation]:
        """The deprecated versions and who still uses them
        (:func:`tidings.schema.services.deprecations`)."""
        return deprecations(self.services)


async def build_catalog(
    transport: Transport,
    *,
    app: Declarations | None = None,
    scan_limit: int = DEFAULT_SCAN,
    kept: Kept | None = None,
) -> Catalog:
    """The catalog of the log ``transport`` holds (started), with ``app``'s own
    declarations if given, from the newest ``scan_limit`` events of each topic (0: no
    scan); ``kept``: what the previous builds read, for this one to read only what is
    new (:class:`~tidings.catalog.scan.Kept`)."""
    state = await SchemaRegistry(transport).refresh()
    now = transport.clock.time_ms()
    records = dict(state.services)
    held: dict[tuple[str, int], SchemaVersion] = {}
    if app is not None:  # what the app declares now wins over what its service recorded
        records[app.service] = replace(describe(app), at=now + 1)
        held = {(o.type, o.version): o for o in offers(app.registry.contracts())}
    observed = await scan(transport, limit=scan_limit, kept=kept) if scan_limit > 0 else Observed()
    services = tuple(sorted(records.values(), key=lambda r: r.service))
    types = sorted(
        set(state.versions)
        | {h.type for r in services for h in r.contracts}
        | {p.type for r in services for p in r.publishes}
        | {t for t, _ in observed.examples}
    )
    events = tuple(_event(t, state, services, held, observed) for t in types)
    events = await _with_lag(transport, events, now / 1000)
    flows = tuple(
        Flow(cause, effect, count) for (cause, effect), count in sorted(observed.flows.items())
    )
    at = datetime.fromtimestamp(now / 1000, UTC)
    return Catalog(transport.url, at, events, services, flows, dict(observed.scanned))


async def _with_lag(
    transport: Transport, events: tuple[EventInfo, ...], now: float
) -> tuple[EventInfo, ...]:
    """``events`` with each consumer that has an SLA given its group's lag in seconds
    on its topic (tidings.admin's, as the metrics read it): one read per lagging
    partition of those groups only."""
    wanted = {(c.group, c.topic) for e in events for c in e.consumers if c.sla is not None}
    if not wanted:
        return events
    lags: dict[tuple[str, str], float] = {}
    for row in await group_rows(transport):
        if (row.group, row.topic) in wanted:
            lag = await partition_lag(transport, row, now)
            key = (row.group, row.topic)
            lags[key] = max(lags.get(key, 0.0), lag.seconds)
    return tuple(
        replace(e, consumers=tuple(replace(c, lag_seconds=lags.get((c.group, c.topic)))
                                   if c.sla is not None else c for c in e.consumers))
        for e in events
    )  # fmt: skip


def _event(
    type: str,
    state: RegistryState,
    services: tuple[ServiceRecord, ...],
    held: dict[tuple[str, int], SchemaVersion],
    observed: Observed,
) -> EventInfo:
    numbers = sorted(
        set(state.versions.get(type, {}))
        | {v for t, v in held if t == type}
        | {h.version for r in services for h in r.contracts if h.type == type}
        | {v for t, v in observed.examples if t == type and v is not None}
    )
    said = [s for v in reversed(numbers) if (s := about(services, type, v)) is not None]
    latest = said[0] if said else Held(type, 0)
    producers = _producers(type, services, observed)
    topics = {p.topic for p in producers} | {
        s.topic for r in services for s in r.subscriptions if s.types and type in s.types
    }
    consumers = _consumers(type, services, topics)
    versions = _versions(type, numbers, state, services, held, observed)
    return EventInfo(
        type=type,
        kind=latest.kind,
        owner=latest.owner,
        description=latest.description or _schema_description(versions),
        subject=next((s.subject for s in said if s.subject), None),
        mode=state.mode(type).value,
        policy=state.policy(type).value,
        versions=versions,
        producers=producers,
        consumers=consumers,
        topics=tuple(sorted(topics)),
    )


def _versions(
    type: str,
    numbers: list[int],
    state: RegistryState,
    services: tuple[ServiceRecord, ...],
    held: dict[tuple[str, int], SchemaVersion],
    observed: Observed,
) -> tuple[VersionInfo, ...]:
    out: list[VersionInfo] = []
    previous: VersionInfo | None = None
    for number in numbers:
        registered = state.versions.get(type, {}).get(number)
        schema_of = registered or held.get((type, number))
        said = about(services, type, number)
        info = VersionInfo(
            version=number,
            schema=_schema(schema_of),
            fingerprint=schema_of.fingerprint if schema_of else None,
            registered_by=registered.registered_by if registered else None,
            registered_at=registered.registered_at if registered else None,
            breaking=bool(schema_of and schema_of.breaking),
            deprecated=bool(said and said.deprecated),
            sunset=said.sunset if said else None,
        )
        if info.schema is not None and previous is not None and previous.schema is not None:
            changes = tuple(diff(previous.schema, info.schema, policy=state.policy(type)))
            info = replace(info, changes=changes, previous=previous.version)
        info = _with_example(info, observed, type)
        out.append(info)
        if info.schema is not None:
            previous = info
    return tuple(out)


def _schema_description(versions: tuple[VersionInfo, ...]) -> str | None:
    """The latest schema's ``description`` (its model's docstring), for a type no
    service record describes (registered by a release before decision 0022)."""
    for v in reversed(versions):
        text = (v.schema or {}).get("description")
        if isinstance(text, str):
            return text
    return None


def _schema(found: SchemaVersion | None) -> dict[str, Any] | None:
    if found is None:
        return None
    schema = found.schema
    return dict(schema) if not isinstance(schema, bool) else {"not": {}} if not schema else {}


def _with_example(info: VersionInfo, observed: Observed, type: str) -> VersionInfo:
    """An example payload: the first of its JSON Schema's ``examples`` (pydantic's
    ``json_schema_extra``), else the newest event of that version in the scan."""
    examples = (info.schema or {}).get("examples")
    if isinstance(examples, list) and examples:
        return replace(info, example=examples[0], example_from="model")
    event = observed.examples.get((type, info.version))
    if event is None:
        return info
    data = event.data
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    return replace(info, example=data, example_from="log")


def _producers(
    type: str, services: Iterable[ServiceRecord], observed: Observed
) -> tuple[Producer, ...]:
    found: dict[tuple[str, str], Producer] = {}
    for r in services:
        for p in r.publishes:
            if p.type == type:
                found[(r.service, p.topic)] = Producer(r.service, p.topic, p.versions, True)
    for (t, source, topic), seen in observed.producers.items():
        if t != type:
            continue
        known = found.get((source, topic))
        versions = tuple(sorted(set(known.versions if known else ()) | seen.versions))
        found[(source, topic)] = Producer(
            source, topic, versions, known is not None, seen.count, seen.last
        )
    return tuple(found[k] for k in sorted(found))


def _consumers(
    type: str, services: Iterable[ServiceRecord], topics: set[str]
) -> tuple[Consumer, ...]:
    """The groups naming ``type``, and those taking every type of a topic it is on."""
    out = []
    for r in services:
        for s in r.subscriptions:
            every = s.types is None
            if (every and s.topic in topics) or (s.types and type in s.types):
                reads = dict(s.reads.get(type, {}))
                sla = r.slas.get(s.group)
                out.append(Consumer(r.service, s.group, s.topic, reads, every, sla))
    return tuple(sorted(out, key=lambda c: (c.service, c.group, c.topic)))
