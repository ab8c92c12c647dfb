"""What a service says of itself in the schema registry (decision 0022): the groups it
subscribes with (topic, types, the versions each reads and as which), what it declares
publishing (:meth:`tidings.Tidings.publishes`), the contracts it holds (kind, owner,
description, deprecation), and its groups' SLAs.

An app records it at start, next to its schemas, as an entry of its own kind
(``{"kind": "service", ...}``), only when it changed since its last record (compared by
fingerprint), so restarts do not grow the registry. The fold keeps each service's
latest record in log order. Pure (no I/O): :mod:`tidings.schema.registry` writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from tidings.contracts import Registry
from tidings.schema.compat import fingerprint
from tidings.subscriber import GroupSettings, Subscriber

__all__ = [
    "Declarations",
    "Deprecation",
    "Held",
    "Publication",
    "ServiceRecord",
    "Subscription",
    "about",
    "command_conflicts",
    "commands_owned",
    "deprecations",
    "describe",
    "retirement",
]


class Declarations(Protocol):
    """What :func:`describe` reads of an app (:class:`tidings.Tidings` has it all)."""

    service: str
    registry: Registry
    subscribers: list[Subscriber]
    published: dict[str, set[str]]

    def group_settings(self, name: str) -> GroupSettings: ...


@dataclass(frozen=True, slots=True)
class Subscription:
    """A group's subscription to one topic: the types it takes (None: every type) and,
    per type, the versions it can decode, each with the version its handlers get."""

    group: str
    topic: str
    types: tuple[str, ...] | None
    reads: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    handlers: tuple[str, ...] = ()

    def takes(self, type: str) -> bool:
        return self.types is None or type in self.types


@dataclass(frozen=True, slots=True)
class Publication:
    """A declared ``app.publishes(topic, type)``, with the versions of ``type`` whose
    models the service holds (the versions it can publish)."""

    topic: str
    type: str
    versions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Held:
    """A contract a service holds, and what it says of itself."""

    type: str
    version: int
    kind: str = "event"
    owner: str | None = None
    description: str | None = None
    deprecated: bool = False
    sunset: date | None = None
    subject: str | None = None  # the payload field that is the subject (the partition key)


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One service's record in the registry."""

    service: str
    subscriptions: tuple[Subscription, ...] = ()
    publishes: tuple[Publication, ...] = ()
    contracts: tuple[Held, ...] = ()
    slas: Mapping[str, float] = field(default_factory=dict)  # group -> seconds of lag
    host: str | None = None
    at: int = 0  # when it was recorded, in ms since the epoch
    offset: int | None = None

    @property
    def fingerprint(self) -> str:
        """What the record says, not who wrote it when: equal for an unchanged app."""
        return fingerprint(self.body())

    def groups(self) -> list[str]:
        return sorted({s.group for s in self.subscriptions})

    def body(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "subscriptions": [
                {
                    "group": s.group,
                    "topic": s.topic,
                    "types": None if s.types is None else list(s.types),
                    "reads": {t: {str(v): r for v, r in vs.items()} for t, vs in s.reads.items()},
                    "handlers": list(s.handlers),
                }
                for s in self.subscriptions
            ],
            "publishes": [
                {"topic": p.topic, "type": p.type, "versions": list(p.versions)}
                for p in self.publishes
            ],
            "contracts": [_held_json(h) for h in self.contracts],
            "slas": dict(self.slas),
        }

    def entry(self) -> dict[str, Any]:
        """The record as written to the log."""
        return {"kind": "service", **self.body(), "host": self.host, "at": self.at}

    @classmethod
    def from_entry(cls, doc: Mapping[str, Any], offset: int | None = None) -> ServiceRecord:
        """A record as read from the log (KeyError/TypeError/ValueError if malformed)."""
        if not isinstance(doc["service"], str):
            raise TypeError("service")
        subscriptions = tuple(
            Subscription(
                group=str(s["group"]),
                topic=str(s["topic"]),
                types=None if s.get("types") is None else tuple(map(str, s["types"])),
                reads={
                    str(t): {int(v): int(r) for v, r in vs.items()}
                    for t, vs in (s.get("reads") or {}).items()
                },
                handlers=tuple(map(str, s.get("handlers") or ())),
            )
            for s in doc.get("subscriptions") or ()
        )
        publishes = tuple(
            Publication(str(p["topic"]), str(p["type"]), tuple(map(int, p.get("versions") or ())))
            for p in doc.get("publishes") or ()
        )
        return cls(
            service=doc["service"],
            subscriptions=subscriptions,
            publishes=publishes,
            contracts=tuple(_held(h) for h in doc.get("contracts") or ()),
            slas={str(g): float(s) for g, s in (doc.get("slas") or {}).items()},
            host=doc.get("host"),
            at=int(doc.get("at") or 0),
            offset=offset,
        )


def _held_json(h: Held) -> dict[str, Any]:
    return {
        "type": h.type,
        "version": h.version,
        "kind": h.kind,
        "owner": h.owner,
        "description": h.description,
        "deprecated": h.deprecated,
        "sunset": None if h.sunset is None else h.sunset.isoformat(),
        "subject": h.subject,
    }


def _held(doc: Mapping[str, Any]) -> Held:
    version = doc["version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"version {version!r}")
    sunset = doc.get("sunset")
    return Held(
        type=str(doc["type"]),
        version=version,
        kind=str(doc.get("kind") or "event"),
        owner=doc.get("owner"),
        description=doc.get("description"),
        deprecated=bool(doc.get("deprecated")),
        sunset=None if sunset is None else date.fromisoformat(sunset),
        subject=doc.get("subject"),
    )


def retirement(service: str, host: str, at: int) -> dict[str, Any]:
    """The entry that forgets ``service``'s record (``tidings schema forget-service``):
    a record that declares nothing, marked retired, so a reader that does not know the
    mark still sees a service with no subscriptions; the next start records it again."""
    return {**ServiceRecord(service).entry(), "retired": True, "host": host, "at": at}


def commands_owned(app: Declarations) -> dict[str, str]:
    """The command types ``app``'s subscribers name, each with its group (a subscriber
    to every type owns nothing)."""
    mine: dict[str, str] = {}
    for s in app.subscribers:
        for t in s.types or ():
            contract = app.registry.lookup(t, None)
            if contract is not None and contract.kind == "command":
                mine.setdefault(t, s.group)
    return mine


def command_conflicts(app: Declarations, records: Mapping[str, ServiceRecord]) -> list[str]:
    """The commands ``app``'s groups subscribe to that a group of another service also
    subscribes to, by that service's latest record: one line each (empty: none). A
    command has exactly one owning group, across services as within one app."""
    mine = commands_owned(app)
    found = []
    for name, record in sorted(records.items()):
        if name == app.service:
            continue  # its own older record: replaced by this start
        for sub in record.subscriptions:
            for t in sub.types or ():
                group = mine.get(t)
                if group is not None and sub.group != group:
                    found.append(
                        f"command {t} is subscribed to by group {group!r} of {app.service} "
                        f"and by group {sub.group!r} of service {name!r} (its record in the "
                        "registry); a command has exactly one owning group: subscribe to it "
                        f"in one of them; if {name!r} no longer subscribes to it, start it "
                        f"again, or, if it no longer runs, 'tidings schema forget-service "
                        f"{name}'"
                    )
    return found


def describe(app: Declarations) -> ServiceRecord:
    """What ``app`` declares, as its record (not stamped with a host and time)."""
    registry = app.registry
    found: dict[tuple[str, str], list[Subscriber]] = {}
    for s in app.subscribers:
        found.setdefault((s.group, s.topic), []).append(s)
    subscriptions = []
    for (group, topic), subs in sorted(found.items()):
        every = any(s.types is None for s in subs)
        types = None if every else tuple(sorted({t for s in subs for t in s.types or ()}))
        named = sorted({c.type for c in registry.contracts()}) if types is None else types
        reads = {t: registry.readable(t) for t in named if registry.readable(t)}
        handlers = tuple(dict.fromkeys(s.name for s in subs))
        subscriptions.append(Subscription(group, topic, types, reads, handlers))
    publishes = tuple(
        Publication(topic, type, tuple(registry.versions(type)))
        for topic in sorted(app.published)
        for type in sorted(app.published[topic])
    )
    contracts = tuple(
        Held(c.type, c.version, c.kind, c.owner, c.description, c.deprecated, c.sunset, c.subject)
        for c in registry.contracts()
    )
    groups = sorted({s.group for s in app.subscribers})
    slas = {g: float(sla) for g in groups if (sla := app.group_settings(g).sla) is not None}
    return ServiceRecord(app.service, tuple(subscriptions), publishes, contracts, slas)


def about(records: Iterable[ServiceRecord], type: str, version: int) -> Held | None:
    """What the services say of ``type`` ``version``: the owner's word where the owner
    recorded it, else the most recently recorded service's."""
    said = [(r, h) for r in records for h in r.contracts if (h.type, h.version) == (type, version)]
    if not said:
        return None
    owned = [(r, h) for r, h in said if h.owner == r.service]
    return max(owned or said, key=lambda rh: rh[0].at)[1]


@dataclass(frozen=True, slots=True)
class Deprecation:
    """A deprecated version and who still depends on it: services that declare
    publishing its type and hold its model, and groups whose handlers get it as it is
    (not upcast to a later version)."""

    type: str
    version: int
    sunset: date | None
    producers: tuple[str, ...]  # "service (topic)"
    consumers: tuple[str, ...]  # "service/group (topic)"

    def overdue(self, today: date) -> bool:
        return self.sunset is not None and today > self.sunset

    def json(self, today: date) -> dict[str, Any]:
        """The same, for ``--json``."""
        return {
            "type": self.type,
            "version": self.version,
            "sunset": None if self.sunset is None else self.sunset.isoformat(),
            "past_sunset": self.overdue(today),
            "producers": list(self.producers),
            "consumers": list(self.consumers),
        }

    def lines(self, today: date) -> list[str]:
        """The report's lines: the version, its sunset (said loudly once past), who uses it."""
        head = f"{self.type} v{self.version}: deprecated"
        if self.sunset is None:
            head += ", no sunset date"
        elif self.overdue(today):
            days = (today - self.sunset).days
            head += f"; PAST ITS SUNSET {self.sunset.isoformat()} ({days} day(s) ago)"
        else:
            head += f", sunset {self.sunset.isoformat()} (in {(self.sunset - today).days} day(s))"
        lines = [head]
        lines += [f"  still produced by {p}" for p in self.producers]
        lines += [f"  still consumed by {c}" for c in self.consumers]
        if not self.producers and not self.consumers:
            lines.append("  no service records producing or consuming it")
        return lines


def deprecations(records: Iterable[ServiceRecord]) -> list[Deprecation]:
    """Every version some service holds as deprecated (:func:`about` decides), with who
    still produces or consumes it, by type and version."""
    records = list(records)
    versions = sorted({(h.type, h.version) for r in records for h in r.contracts})
    out = []
    for type, version in versions:
        said = about(records, type, version)
        if said is None or not said.deprecated:
            continue
        producers = sorted(
            f"{r.service} ({p.topic})"
            for r in records
            for p in r.publishes
            if p.type == type and version in p.versions
        )
        consumers = sorted(
            f"{r.service}/{s.group} ({s.topic})"
            for r in records
            for s in r.subscriptions
            if s.takes(type) and s.reads.get(type, {}).get(version) == version
        )
        out.append(Deprecation(type, version, said.sunset, tuple(producers), tuple(consumers)))
    return out
