"""What ``tidings publish`` knows of a type: its contract in the log's schema registry.

The command has no app, so no models: what it knows of a type is what the log's
registry holds (:mod:`tidings.schema.registry`): each version's JSON Schema, the payload
field that is the subject, and deprecation (decision 0021). A :class:`PublishCheck`
refuses a payload the registered schema does not admit, naming every failing path (so
it is refused at publish, not dead-lettered in every group), sets ``dataversion`` to
the version checked, and takes the subject (the partition key) from the subject field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.contracts import deprecation_notice
from tidings.envelope import Event
from tidings.errors import EventError, UnknownEventType
from tidings.schema.payloads import PayloadValidator
from tidings.schema.state import RegistryState, SchemaVersion

if TYPE_CHECKING:
    from tidings.app import Tidings


@dataclass
class PublishCheck:
    """Checks events against a log's schema registry (``state``, as read once).

    ``strict``: refuse a type the registry does not know (default: publish it unchecked,
    with a warning). ``warnings``: what to tell before publishing (a type unknown to the
    registry, a deprecated version), once per type or version; a caller shows them once
    every event is checked, since a refused batch publishes nothing.
    """

    state: RegistryState
    strict: bool = False
    warnings: list[str] = field(default_factory=list)
    _validators: dict[tuple[str, int], PayloadValidator] = field(default_factory=dict, repr=False)
    _warned: set[tuple[str, int]] = field(default_factory=set, repr=False)

    def event(self, event: Event, *, as_is: bool = False) -> Event:
        """``event`` checked against the registered schema of its ``dataversion`` (the
        latest if it has none), with that version as its ``dataversion`` and the
        payload's subject field as its subject if it has none. With ``as_is`` (an event
        given whole, to publish as it is) it is checked and never changed.

        Raises :class:`~tidings.errors.EventError` naming every path where the payload
        does not match, or a subject that is not the subject field's value;
        :class:`~tidings.errors.UnknownEventType` for a version the registry does not
        hold (or, if ``strict``, a type).
        """
        if event.type not in self.state.versions:
            return self._unknown(event)
        entry = self.state.schema(event.type, event.dataversion)
        problems = self._validator(entry).errors(event.data)
        if problems:
            raise EventError(
                f"payload of {entry.type} v{entry.version} does not match its registered "
                f"schema: {len(problems)} error(s): {'; '.join(problems)}"
            )
        subject = _subject(entry, event.subject, event.data)
        if entry.deprecated and (entry.type, entry.version) not in self._warned:
            self._warned.add((entry.type, entry.version))
            latest = max(self.state.versions[entry.type])
            self.warnings.append(
                deprecation_notice(entry.type, entry.version, entry.sunset, latest)
            )
        if as_is or (event.dataversion, event.subject) == (entry.version, subject):
            return event
        return event.with_(dataversion=entry.version, subject=subject)

    def _unknown(self, event: Event) -> Event:
        if self.strict:
            try:
                self.state.schema(event.type)
            except UnknownEventType as exc:
                raise UnknownEventType(f"{exc}; --strict refuses a type it does not know") from None
        if (event.type, 0) not in self._warned:
            self._warned.add((event.type, 0))
            self.warnings.append(
                f"{event.type} is not in the schema registry of this log, so its payload is "
                "not checked (--strict refuses it)"
            )
        return event

    def _validator(self, entry: SchemaVersion) -> PayloadValidator:
        key = (entry.type, entry.version)
        found = self._validators.get(key)
        if found is None:
            try:
                found = self._validators[key] = PayloadValidator(entry.schema)
            except ValueError as exc:
                raise EventError(
                    f"the registered schema of {entry.type} v{entry.version} cannot be "
                    f"read by the validator ({exc}); publish with --no-check"
                ) from None
        return found


def _subject(entry: SchemaVersion, subject: str | None, data: Any) -> str | None:
    """The subject: the payload's subject field (as the model's ``subject_of`` reads
    it); an EventError if ``subject`` is given and differs."""
    name = entry.subject
    value = data.get(name) if name is not None and isinstance(data, dict) else None
    if value is None:
        return subject
    own = str(value)
    if subject is not None and subject != own:
        raise EventError(
            f"subject {subject!r} is not the payload's {name} {own!r} ({name} is the "
            f"subject field of {entry.type} v{entry.version}); give the same subject, or "
            "none to take it from the payload"
        )
    return own


async def publish_check(app: Tidings, *, strict: bool = False) -> PublishCheck:
    """A :class:`PublishCheck` on the schema registry of ``app``'s log, as it is now."""
    return PublishCheck(await app.schema_registry.refresh(), strict=strict)
