"""The schema registry that lives with the log: one internal topic, on every transport.

Like Confluent's ``_schemas`` topic, the registry is a log: the topic
:data:`SCHEMAS_TOPIC` (one partition, so one order, kept for ever) holds registrations
and mode changes (:mod:`tidings.schema.state`), written and read through the
:class:`~tidings.transport.Transport` protocol, so the SQLite log, Kafka, NATS and the
memory log all hold it the same way. :class:`SchemaRegistry` folds it::

    registry = SchemaRegistry(app.transport)
    await registry.register(app.registry.contracts(), service="billing")
    await registry.schema("order.placed", 2)   # a SchemaVersion: schema, fingerprint, ...

An app registers its contracts at start (``Tidings(..., schemas="register")``);
``tidings schema`` lists, shows, diffs and checks them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from pydantic.errors import PydanticInvalidForJsonSchema

from tidings.contracts import Contract
from tidings.errors import ConfigError, SchemaIncompatible, TopicNotFound
from tidings.schema.compat import Mode, fingerprint
from tidings.schema.rules import Policy
from tidings.schema.services import (
    Declarations,
    ServiceRecord,
    command_conflicts,
    commands_owned,
    describe,
    retirement,
)
from tidings.schema.state import (
    Conflict,
    Problem,
    RegistryState,
    SchemaVersion,
    parse_mode,
    parse_policy,
)
from tidings.transport import FOREVER, Transport

__all__ = [
    "SCHEMAS",
    "SCHEMAS_TOPIC",
    "SchemaRegistry",
    "at_start",
    "check_schemas_setting",
    "offered",
    "offers",
    "report",
]

log = logging.getLogger("tidings.schema")

SCHEMAS_TOPIC = "_tidings.schemas"
"""The registry's topic: one partition, never expired, never compacted (a compaction
keeps the last entry of a key, and the registry keeps the first)."""
READ_BATCH = 256
SCHEMAS = ("register", "check", "off")
"""What an app does with the registry at start (``Tidings(schemas=...)``)."""

Findings = dict[str, dict[int, list[Problem]]]
"""Problems per type, then per version (what :meth:`SchemaRegistry.check` returns)."""


def offered(contract: Contract) -> SchemaVersion:
    """What registering ``contract`` offers: its model's validation JSON Schema
    (``model_json_schema()``), its fingerprint, whether it is declared breaking, and
    what the contract says of the version (subject field, deprecation)."""
    schema = contract.model.model_json_schema()
    return SchemaVersion(
        type=contract.type,
        version=contract.version,
        schema=schema,
        fingerprint=fingerprint(schema),
        breaking=contract.breaking,
        subject=contract.subject,
        deprecated=contract.deprecated,
        sunset=contract.sunset,
    )


def report(findings: Findings, modes: dict[str, Mode] | None = None) -> str:
    """The report of ``findings`` as ``tidings schema check`` prints it (and a refused
    start raises it): per type and version, each problem on its own line, then what to
    do about it."""
    lines: list[str] = []
    for type in sorted(findings):
        for version, problems in sorted(findings[type].items()):
            breaks = [p for p in problems if not isinstance(p, Conflict)]
            mode = (modes or {}).get(type, Mode.BACKWARD)
            head = f"{type} v{version}"
            lines.append(f"{head}: breaks {mode.value}" if breaks else f"{head}: conflict")
            lines.extend(f"  {p}" for p in problems)
            if breaks:
                lines.append(
                    f"  to ship it anyway, declare a new major version: "
                    f"@app.event({type!r}, version={version}, breaking=True); or change "
                    f"the mode: tidings schema set-mode {type} MODE"
                )
    return "\n".join(lines)


class SchemaRegistry:
    """The registry in ``transport``'s :data:`SCHEMAS_TOPIC`, folded as far as read.

    Every query reads what was appended since the last one first (a few records at
    most: registrations are rare), so it answers from the log as it is now.
    """

    def __init__(self, transport: Transport, *, topic: str = SCHEMAS_TOPIC) -> None:
        self.transport = transport
        self.topic = topic
        self.state = RegistryState()
        self._position = 0
        self._created = False
        self._lock = asyncio.Lock()

    # -- reading -------------------------------------------------------------------

    async def refresh(self) -> RegistryState:
        """Fold what was appended since the last refresh; return the state."""
        async with self._lock:
            while True:
                try:
                    records = await self.transport.read(self.topic, 0, self._position, READ_BATCH)
                except TopicNotFound:
                    return self.state  # nothing registered yet
                if not records:
                    return self.state
                for record in records:
                    try:
                        self.state.apply(orjson.loads(record.value), record.offset)
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                        log.warning(
                            "%s@%d is not a schema registry entry, ignored: %r",
                            self.topic, record.offset, exc,
                        )  # fmt: skip
                    self._position = record.offset + 1

    async def types(self) -> list[str]:
        """The registered event types (and those with a mode set), sorted."""
        return (await self.refresh()).types()

    async def versions(self, type: str) -> list[SchemaVersion]:
        """The registered versions of ``type``, lowest first; UnknownEventType if none."""
        state = await self.refresh()
        state.schema(type)  # UnknownEventType, naming the registered types
        known = state.versions[type]
        return [known[v] for v in sorted(known)]

    async def schema(self, type: str, version: int | None = None) -> SchemaVersion:
        """Version ``version`` of ``type`` (default: the latest); UnknownEventType if the
        registry does not hold it."""
        return (await self.refresh()).schema(type, version)

    async def lookup(self, type: str, version: int) -> SchemaVersion | None:
        """Version ``version`` of ``type``, or None: for a worker that meets a version
        it has no model for. Reads the log only if the version is not known yet."""
        found = self.state.versions.get(type, {}).get(version)
        if found is None:
            found = (await self.refresh()).versions.get(type, {}).get(version)
        return found

    async def mode(self, type: str) -> Mode:
        """``type``'s compatibility mode (``BACKWARD`` until set)."""
        return (await self.refresh()).mode(type)

    async def check(self, contracts: Iterable[Contract]) -> Findings:
        """What registering ``contracts`` would meet: per type and version, its breaks
        and conflicts (empty: they may all be registered). Nothing is written."""
        state = await self.refresh()
        return state.trial(offers(contracts))

    # -- writing -------------------------------------------------------------------

    async def set_mode(
        self, type: str, mode: Mode | str, *, service: str, policy: Policy | str | None = None
    ) -> Mode:
        """Set ``type``'s compatibility mode (it judges the versions registered from now
        on), and its policy if given (default ``LENIENT``). ``type`` must be
        registered; a bad mode or policy name is a ConfigError."""
        chosen = parse_mode(mode)
        rule = None if policy is None else parse_policy(policy)
        (await self.refresh()).schema(type)  # UnknownEventType if not registered
        at = self.transport.clock.time_ms()
        await self._append([(f"{type}:mode", _mode_entry(type, chosen, rule, service, at))])
        await self.refresh()
        return chosen

    async def register(self, contracts: Iterable[Contract], *, service: str) -> list[SchemaVersion]:
        """Register ``contracts``: each version not registered yet is appended (an
        identical one is not written again). Returns the versions written.

        Raises :class:`~tidings.errors.SchemaIncompatible` with the report of
        :meth:`check`, writing nothing, if any contract breaks the registry; or, after
        writing, if another writer registered one of these versions first with another
        schema (the first in log order wins).
        """
        entries = offers(contracts)
        state = await self.refresh()
        findings = state.trial(entries)
        if findings:
            raise SchemaIncompatible(report(findings, state.modes))
        new = [e for e in entries if not state.knows(e)]
        noted = [e for e in entries if state.knows(e) and _adds_to(state, e)]
        if not new and not noted:
            return []
        host, at = socket.gethostname(), self.transport.clock.time_ms()
        new = [_stamped(e, service, host, at) for e in new]
        placed = await self._append(
            [(f"{e.type}:{e.version}", orjson.dumps(e.entry())) for e in new]
            + [(f"{e.type}:{e.version}:about", _note(e, service, host, at)) for e in noted]
        )
        state = await self.refresh()
        lost: Findings = {}
        for entry, (_, offset) in zip(new, placed[: len(new)], strict=True):
            problems = state.refused.get(offset, [])
            if not problems and not state.knows(entry):  # not read back: judge it now
                problems = state.trial([entry]).get(entry.type, {}).get(entry.version, [])
            if problems:
                lost.setdefault(entry.type, {})[entry.version] = problems
        if lost:
            raise SchemaIncompatible(report(lost, state.modes))
        for entry in new:
            log.info(
                "registered %s v%d (fingerprint %s%s)", entry.type, entry.version,
                entry.fingerprint[:12], ", breaking" if entry.breaking else "",
            )  # fmt: skip
        for entry in noted:
            log.info("noted %s v%d: %s", entry.type, entry.version, entry.about())
        return [state.versions[e.type][e.version] for e in new]

    async def record_service(self, record: ServiceRecord) -> ServiceRecord | None:
        """Record what a service declares (:func:`tidings.schema.services.describe`),
        stamped with this host and the time; nothing is written when its latest record
        says the same (equal fingerprints). Returns the record written, or None."""
        state = await self.refresh()
        known = state.services.get(record.service)
        if known is not None and known.fingerprint == record.fingerprint:
            return None
        stamped = dataclasses.replace(
            record, host=socket.gethostname(), at=self.transport.clock.time_ms(), offset=None
        )
        await self._append([(f"{record.service}:service", orjson.dumps(stamped.entry()))])
        await self.refresh()
        log.info("recorded service %s (fingerprint %s)", record.service, record.fingerprint[:12])
        return stamped

    async def forget_service(self, service: str) -> ServiceRecord:
        """Forget ``service``'s record (a service that no longer runs: its subscriptions
        no longer count, e.g. as a command's owner); its next start records it again.
        Returns the record forgotten; ConfigError, naming the recorded services, if
        there is none."""
        state = await self.refresh()
        known = state.services.get(service)
        if known is None:
            names = ", ".join(sorted(state.services)) or "none"
            raise ConfigError(
                f"no service {service!r} is recorded in the registry (recorded: {names})"
            )
        entry = retirement(service, socket.gethostname(), self.transport.clock.time_ms())
        await self._append([(f"{service}:service", orjson.dumps(entry))])
        await self.refresh()
        log.info("forgot service %s", service)
        return known

    async def services(self) -> dict[str, ServiceRecord]:
        """Each service's latest record, by name."""
        return dict((await self.refresh()).services)

    async def _append(self, records: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        if not self._created:
            await self.transport.create_topic(
                self.topic, 1, retention_ms=FOREVER, retention_bytes=FOREVER
            )
            self._created = True
        return await self.transport.append(self.topic, list(records))


def offers(contracts: Iterable[Contract]) -> list[SchemaVersion]:
    """What registering ``contracts`` offers, in the order they are registered. A model
    pydantic cannot describe in JSON Schema (a field of an arbitrary class) is left
    out, with a warning: the registry cannot check what it cannot read."""
    out = []
    for contract in sorted(contracts, key=lambda c: (c.type, c.version)):
        try:
            out.append(offered(contract))
        except PydanticInvalidForJsonSchema as exc:
            log.warning(
                "%s v%d (%s) has no JSON Schema, so the schema registry leaves it out: %s",
                contract.type, contract.version, contract.model.__name__,
                str(exc).splitlines()[0],
            )  # fmt: skip
    return out


def _stamped(entry: SchemaVersion, service: str, host: str, at: int) -> SchemaVersion:
    return dataclasses.replace(entry, service=service, host=host, at=at)


def _adds_to(state: RegistryState, entry: SchemaVersion) -> bool:
    """Whether ``entry``'s contract says more of its registered version than the log."""
    registered = state.versions[entry.type][entry.version]
    return registered.noted(entry.subject, entry.deprecated, entry.sunset) != registered


def _note(entry: SchemaVersion, service: str, host: str, at: int) -> bytes:
    """An ``about`` entry: what ``entry``'s contract now says of its registered version."""
    doc = {"kind": "about", "type": entry.type, "version": entry.version, **entry.about()}
    return orjson.dumps({**doc, "service": service, "host": host, "at": at})


def _mode_entry(type: str, mode: Mode, policy: Policy | None, service: str, at: int) -> bytes:
    doc: dict[str, Any] = {
        "kind": "mode",
        "type": type,
        "mode": mode.value,
        "policy": None if policy is None else policy.value,
        "service": service,
        "host": socket.gethostname(),
        "at": at,
    }
    return orjson.dumps(doc)


def check_schemas_setting(setting: object) -> None:
    """Raise ConfigError unless ``setting`` is one of :data:`SCHEMAS`."""
    if setting not in SCHEMAS:
        raise ConfigError(f"Tidings(schemas={setting!r}): use one of {', '.join(SCHEMAS)}")


async def at_start(registry: SchemaRegistry, app: Declarations, setting: str) -> None:
    """What ``Tidings.start()`` does with the registry: with ``"register"`` register the
    app's contracts, then record what it subscribes to and publishes (if it declares
    anything, and only when that changed); with ``"check"`` only check the contracts;
    either raises :class:`~tidings.errors.SchemaIncompatible` with the report. Nothing
    for ``"off"``. Either refuses (ConfigError) a command that a group of another
    service already subscribes to, by that service's record."""
    contracts = app.registry.contracts()
    if setting == "off":
        return
    if commands_owned(app):  # no read of the registry for the others
        conflicts = command_conflicts(app, (await registry.refresh()).services)
        if conflicts:
            raise ConfigError("\n".join(conflicts))
    if setting == "register":
        if contracts:
            await registry.register(contracts, service=app.service)
        if contracts or app.subscribers or app.published:
            await registry.record_service(describe(app))
        return
    if not contracts:
        return
    findings = await registry.check(contracts)
    if findings:
        raise SchemaIncompatible(report(findings, registry.state.modes))
