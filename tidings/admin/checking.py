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

    def check(
        self, type: str, data: Any, *, subject: str | None = None, version: int | None = None
    ) -> tuple[int | None, str | None]:
        """Check a payload of ``type`` against the registered schema of ``version`` (the
        latest if None); return the event's ``dataversion`` (the version checked) and
        subject (``subject``, else the payload's subject field). An event given whole is
        checked with its own attributes and published as it is.

        Raises :class:`~tidings.errors.EventError` naming every path where the payload
        does not match, or a subject that is not the subject field's value;
        :class:`~tidings.errors.UnknownEventType` for a version the registry does not
        hold (or, if ``strict``, a type).
        """
        if type not in self.state.versions:
            self._unknown(type)
            return version, subject
        entry = self.state.schema(type, version)
        problems = self._validator(entry).errors(data)
        if problems:
            raise EventError(
                f"payload of {entry.type} v{entry.version} does not match its registered "
                f"schema: {len(problems)} error(s): {'; '.join(problems)}"
            )
        subject = _subject(entry, subject, data)
        if entry.deprecated and (entry.type, entry.version) not in self._warned:
            self._warned.add((entry.type, entry.version))
            latest = max(self.state.versions[entry.type])
            notice = deprecation_notice(entry.type, entry.version, entry.sunset, latest)
            self.warnings.append(notice)
        return entry.version, subject

    def _unknown(self, type: str) -> None:
        if self.strict:
            try:
                self.state.schema(type)
            except UnknownEventType as exc:
                raise UnknownEventType(f"{exc}; --strict refuses a type it does not know") from None
        if (type, 0) not in self._warned:
            self._warned.add((type, 0))
            self.warnings.append(
                f"{type} is not in the schema registry of this log, so its payload is not "
                "checked (--strict refuses it)"
            )

    def _validator(self, entry: SchemaVersion) -> PayloadValidator:
        key = (entry.type, entry.version)
        found = self._validators.get(key)
        if found is None:
            try:
                found = self._validators[key] = PayloadValidator(entry.schema)
            except ValueError as exc:
                raise EventError(
                    f"the registered schema of {entry.type} v{entry.version} cannot be "
                    f"read by the validator ({str(exc).splitlines()[0]}); publish with "
                    "--no-check"
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
