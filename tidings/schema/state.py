"""The schema registry's state: the fold of its log, and the one rule that admits a new
version into it.

The registry is a log of four kinds of entries, each a JSON object: a *registration*
(``{"kind": "schema", "type", "version", "schema", "fingerprint", "breaking",
"subject", "deprecated", "sunset", "service", "host", "at"}``), a *mode change*
(``{"kind": "mode", "type", "mode", ...}``), a *note* on a registered version
(``{"kind": "about", "type", "version", "subject", "deprecated", "sunset", ...}``:
what its contract now says of it, decision 0021) and a *service record*
(``{"kind": "service", ...}``: what a service subscribes to and publishes,
:mod:`tidings.schema.services`; the latest per service counts). Folding them in log
order gives, per event type, its versions and its compatibility mode. Registrations
written before ``subject``, ``deprecated`` and ``sunset`` were recorded read as no
subject field, not deprecated. A registration is admitted by the fold only if :func:`admit` finds
nothing wrong with it at its place in the log, so every reader of the log agrees on
what is registered: of two apps that register the same version at once with different
schemas, the first in log order wins, whatever either of them saw before writing.

Pure (no I/O): :mod:`tidings.schema.registry` reads and writes the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from tidings.errors import ConfigError, UnknownEventType
from tidings.schema.compat import Break, Change, Mode, check, diff, fingerprint
from tidings.schema.nodes import JsonSchema
from tidings.schema.rules import Policy, Rule
from tidings.schema.services import ServiceRecord

__all__ = [
    "DEFAULT_MODE",
    "Conflict",
    "Problem",
    "RegistryState",
    "SchemaVersion",
    "parse_mode",
    "parse_policy",
]

DEFAULT_MODE = Mode.BACKWARD
"""A type's compatibility mode until ``set-mode`` changes it (Confluent's default)."""
DEFAULT_POLICY = Policy.LENIENT
"""A type's policy until ``set-mode --policy`` changes it: tidings producers serialize
their pydantic models, which emit only declared fields (decision 0018)."""
ANNOTATIONS = frozenset({Rule.TITLE_CHANGED, Rule.DESCRIPTION_CHANGED})
"""Changes that leave a version what it is: a renamed model class or a new docstring
offers the registered version again, not another schema for it."""


def parse_mode(name: object) -> Mode:
    """``name`` (a :class:`Mode` or its name, any case) as a Mode, else ConfigError."""
    if isinstance(name, Mode):
        return name
    try:
        return Mode(str(name).upper().replace("-", "_"))
    except ValueError:
        raise ConfigError(
            f"{name!r} is not a compatibility mode: use one of {', '.join(m.value for m in Mode)}"
        ) from None


def parse_policy(name: object) -> Policy:
    """``name`` (a :class:`Policy` or its name, any case) as a Policy, else ConfigError."""
    if isinstance(name, Policy):
        return name
    try:
        return Policy(str(name).upper())
    except ValueError:
        raise ConfigError(
            f"{name!r} is not a compatibility policy: use one of "
            f"{', '.join(p.value for p in Policy)}"
        ) from None


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One registered version of an event type's payload schema."""

    type: str
    version: int
    schema: JsonSchema
    fingerprint: str
    breaking: bool = False  # declared as a new major version: not checked against earlier
    service: str | None = None  # who registered it
    host: str | None = None
    at: int = 0  # when, in ms since the epoch
    offset: int | None = None  # its place in the registry's log
    # What the contract says of the version (decision 0021), not part of its identity:
    # the payload field that is the event's subject, and deprecation.
    subject: str | None = None
    deprecated: bool = False
    sunset: date | None = None

    @property
    def registered_at(self) -> datetime:
        return datetime.fromtimestamp(self.at / 1000, UTC)

    @property
    def registered_by(self) -> str:
        return f"{self.service or '?'}@{self.host or '?'}"

    def entry(self) -> dict[str, Any]:
        """The registration as written to the log."""
        return {
            "kind": "schema",
            "type": self.type,
            "version": self.version,
            "breaking": self.breaking,
            "fingerprint": self.fingerprint,
            "service": self.service,
            "host": self.host,
            "at": self.at,
            **self.about(),
            "schema": self.schema,
        }

    def about(self) -> dict[str, Any]:
        """What the contract says of this version, as the log holds it (``subject``,
        ``deprecated``, ``sunset`` as ISO or None); a note entry carries the same keys."""
        sunset = None if self.sunset is None else self.sunset.isoformat()
        return {"subject": self.subject, "deprecated": self.deprecated, "sunset": sunset}

    def noted(self, subject: str | None, deprecated: bool, sunset: date | None) -> SchemaVersion:
        """This version with a note folded in. A note adds (a subject field, deprecation,
        a sunset) and never takes back: an older release starting again cannot undo
        what a newer one recorded (decision 0021)."""
        return dataclasses.replace(
            self,
            subject=subject or self.subject,
            deprecated=self.deprecated or deprecated or sunset is not None,
            sunset=sunset or self.sunset,
        )

    @classmethod
    def from_entry(cls, doc: Mapping[str, Any], offset: int | None = None) -> SchemaVersion:
        """A registration as read from the log (KeyError/TypeError/ValueError if malformed)."""
        version = doc["version"]
        schema = doc["schema"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version {version!r}")
        if not isinstance(schema, dict) or not isinstance(doc["type"], str):
            raise TypeError("type or schema")
        return cls(
            type=doc["type"],
            version=version,
            schema=schema,
            fingerprint=fingerprint(schema),
            breaking=bool(doc.get("breaking", False)),
            service=doc.get("service"),
            host=doc.get("host"),
            at=int(doc.get("at", 0)),
            offset=offset,
            **_about(doc),
        )


def _about(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``subject``, ``deprecated`` and ``sunset`` of an entry; absent in entries
    written before they were recorded (TypeError/ValueError if malformed)."""
    subject, sunset = doc.get("subject"), doc.get("sunset")
    if not isinstance(subject, str | None) or not isinstance(sunset, str | None):
        raise TypeError("subject or sunset")
    day = None if sunset is None else date.fromisoformat(sunset)
    return {"subject": subject, "deprecated": bool(doc.get("deprecated")), "sunset": day}


@dataclass(frozen=True, slots=True)
class Conflict:
    """A version registered with another schema than the one offered for it."""

    type: str
    version: int
    registered: SchemaVersion
    offered: str  # the offered schema's fingerprint
    changes: tuple[Change, ...] = ()  # from the registered schema to the offered one

    def __str__(self) -> str:
        r = self.registered
        when = r.registered_at.isoformat(timespec="seconds").replace("+00:00", "Z")
        lines = [
            f"v{self.version} is registered with another schema (fingerprint "
            f"{r.fingerprint[:16]}, by {r.registered_by} at {when}); this one has "
            f"fingerprint {self.offered[:16]}; a registered version never changes: give "
            "the new schema a new version",
            *(f"  {c}" for c in self.changes if c.rule not in ANNOTATIONS),
        ]
        return "\n  ".join(lines)


Problem = Break | Conflict
"""What keeps a version out of the registry: a compatibility break, or a conflict."""


@dataclass
class RegistryState:
    """The registry as of the entries applied: per type, its versions and its mode."""

    versions: dict[str, dict[int, SchemaVersion]] = field(default_factory=dict)
    modes: dict[str, Mode] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    # offset -> why the fold left that registration out (a conflict or a break)
    refused: dict[int, list[Problem]] = field(default_factory=dict)
    # service -> its latest record in log order (tidings.schema.services)
    services: dict[str, ServiceRecord] = field(default_factory=dict)

    def copy(self) -> RegistryState:
        return RegistryState(
            {t: dict(v) for t, v in self.versions.items()},
            dict(self.modes),
            dict(self.policies),
            dict(self.refused),
            dict(self.services),
        )

    def types(self) -> list[str]:
        return sorted(self.versions.keys() | self.modes.keys())

    def mode(self, type: str) -> Mode:
        return self.modes.get(type, DEFAULT_MODE)

    def policy(self, type: str) -> Policy:
        return self.policies.get(type, DEFAULT_POLICY)

    def apply(self, doc: Mapping[str, Any], offset: int | None = None) -> None:
        """Fold one entry of the log (raises KeyError/TypeError/ValueError if malformed)."""
        kind = doc["kind"]
        if kind == "mode":
            if not isinstance(doc["type"], str):
                raise TypeError("type")
            self.modes[doc["type"]] = Mode(doc["mode"])
            if doc.get("policy") is not None:
                self.policies[doc["type"]] = Policy(doc["policy"])
        elif kind == "about":
            registered = self.versions.get(doc["type"], {}).get(doc["version"])
            if registered is not None:  # a note on a version never registered: nothing
                self.versions[doc["type"]][doc["version"]] = registered.noted(**_about(doc))
        elif kind == "schema":
            entry = SchemaVersion.from_entry(doc, offset)
            problems = self.admit(entry)
            if problems:
                if offset is not None:
                    self.refused[offset] = problems
            else:
                self.add(entry)
        elif kind == "service":
            record = ServiceRecord.from_entry(doc, offset)
            if doc.get("retired") is True:  # tidings schema forget-service
                self.services.pop(record.service, None)
            else:
                self.services[record.service] = record
        else:
            raise ValueError(f"kind {kind!r}")

    def schema(self, type: str, version: int | None = None) -> SchemaVersion:
        """Version ``version`` of ``type`` (default: the latest); UnknownEventType, naming
        what is registered, if the registry does not hold it."""
        known = self.versions.get(type)
        if not known:
            names = ", ".join(sorted(self.versions)) or "none"
            raise UnknownEventType(
                f"{type} is not in the schema registry; registered types: {names}"
            )
        found = known.get(max(known) if version is None else version)
        if found is None:
            raise UnknownEventType(
                f"{type} has no version {version} in the schema registry; registered: "
                + ", ".join(f"v{v}" for v in sorted(known))
            )
        return found

    def add(self, entry: SchemaVersion) -> None:
        """Record ``entry`` as registered (the caller has admitted it)."""
        self.versions.setdefault(entry.type, {}).setdefault(entry.version, entry)

    def admit(self, entry: SchemaVersion) -> list[Problem]:
        """What keeps ``entry`` out of the registry as it stands; empty: it may go in
        (or is there already, with the same schema).

        A version already registered must have the same schema (a :class:`Conflict`
        otherwise). A new version is checked under its type's mode and policy against the earlier
        versions since the latest major one (declared ``breaking``); a version declared
        ``breaking`` is checked against none: it starts a new major line.
        """
        known = self.versions.get(entry.type, {})
        registered = known.get(entry.version)
        if registered is not None:
            if registered.fingerprint == entry.fingerprint:
                return []
            changes = diff(registered.schema, entry.schema)
            if all(c.rule in ANNOTATIONS for c in changes):
                return []
            return [
                Conflict(entry.type, entry.version, registered, entry.fingerprint, tuple(changes))
            ]
        if entry.breaking:
            return []
        earlier = {v: s for v, s in known.items() if v < entry.version}
        majors = [v for v, s in earlier.items() if s.breaking]
        if majors:
            earlier = {v: s for v, s in earlier.items() if v >= max(majors)}
        if not earlier:
            return []
        previous = {v: s.schema for v, s in earlier.items()}
        found = check(entry.schema, previous, self.mode(entry.type), policy=self.policy(entry.type))
        return [dataclasses.replace(b, new_version=entry.version) for b in found]

    def knows(self, entry: SchemaVersion) -> bool:
        """Whether ``entry``'s version is registered with this schema (or one that
        differs only in :data:`ANNOTATIONS`)."""
        registered = self.versions.get(entry.type, {}).get(entry.version)
        return registered is not None and not self.admit(entry)

    def trial(self, entries: Iterable[SchemaVersion]) -> dict[str, dict[int, list[Problem]]]:
        """The problems of registering ``entries`` in order (each against the registry
        and the ones before it), per type and version; empty: all may go in. The state
        itself does not change."""
        scratch = self.copy()
        found: dict[str, dict[int, list[Problem]]] = {}
        for entry in entries:
            problems = scratch.admit(entry)
            if problems:
                found.setdefault(entry.type, {})[entry.version] = problems
            else:
                scratch.add(entry)
        return found
