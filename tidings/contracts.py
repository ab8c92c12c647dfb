"""Payload contracts: pydantic models registered per (event type, version)."""

from __future__ import annotations

import builtins
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from tidings.envelope import validate_type
from tidings.errors import (
    ConfigError,
    DecodeError,
    InvalidPayload,
    UnknownEventType,
    UnsupportedVersion,
)
from tidings.naming import KINDS, check_name
from tidings.personal import check_subjects

__all__ = ["Contract", "Registry", "Upcaster"]

M = TypeVar("M", bound=type[BaseModel])
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the payload of one version of a type into the payload of the next."""
U = TypeVar("U", bound=Upcaster)

log = logging.getLogger("tidings.contracts")
_warned: set[tuple[str, int]] = set()  # deprecated (type, version)s published, per process


@dataclass(frozen=True, slots=True)
class Contract:
    """One registered payload model, and what it says of itself (decision 0020):
    ``kind`` (``event``: a fact; ``command``: a request, handled by one group) and
    ``owner`` (the service that owns the type), the same for every version;
    ``description`` (default: the model's docstring); ``deprecated`` and ``sunset``
    (the date after which it may no longer be published), per version."""

    type: str
    version: int
    model: builtins.type[BaseModel]
    subject: str | None = None  # the payload field whose value is the event's subject
    kind: str = "event"
    owner: str | None = None
    description: str | None = None
    deprecated: bool = False
    sunset: date | None = None
    # Declared as a new major version: the schema registry records it without checking
    # it against the earlier versions (tidings.schema.registry).
    breaking: bool = False

    @property
    def schema_uri(self) -> str:
        return f"urn:tidings:schema:{self.type}:{self.version}"

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of this version's payload, as pydantic writes it for
        validation (nested models in ``$defs``, referred to as ``#/$defs/<name>``)."""
        return self.model.model_json_schema()

    def validated(self, data: Any) -> BaseModel:
        """A plain value published as this version, as the model a consumer reads; if
        refused, :class:`InvalidPayload` naming the fields and the fix (decision 0052)."""
        try:
            return self.model.__pydantic_validator__.validate_python(data)  # type: ignore[no-any-return]
        except ValidationError as exc:
            errors, name = exc.errors(include_url=False), self.model.__name__
            raise InvalidPayload(
                f"cannot publish {self.type} v{self.version}: the payload does not match "
                f"{name}: {_listed(errors, got=True)}; fix the field(s), or publish a "
                f"{name} instance (checked where it is built)",
                errors,
            ) from None

    def subject_of(self, payload: BaseModel) -> str | None:
        if self.subject is None:
            return None
        value = getattr(payload, self.subject)
        return None if value is None else str(value)


class Registry:
    """Which model carries which (type, version), and back."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, int], Contract] = {}
        self._by_model: dict[type[BaseModel], Contract] = {}
        self._latest: dict[str, Contract] = {}  # type -> its highest registered version
        self._upcasters: dict[tuple[str, int], Upcaster] = {}  # (type, from version) ->
        # (type, version) -> the upcasters its events go through and the version read as
        self._paths: dict[tuple[str, int], tuple[list[Upcaster], int]] = {}

    def register(
        self,
        model: type[BaseModel],
        type: str,
        version: int = 1,
        *,
        subject: str | None = None,
        kind: str = "event",
        owner: str | None = None,
        description: str | None = None,
        deprecated: bool = False,
        sunset: date | str | None = None,
        name_check: bool = True,
        breaking: bool = False,
    ) -> Contract:
        """Register ``model`` as the payload of ``type``/``version``. ``kind``: "event"
        (named in the past tense) or "command" (in the imperative); a name that does
        not read so is refused with the right form (:func:`tidings.naming.check_name`)
        unless ``name_check=False``. ``sunset`` (a date or "YYYY-MM-DD") implies
        ``deprecated``."""
        validate_type(type)
        if not (isinstance(model, builtins.type) and issubclass(model, BaseModel)):
            raise ConfigError(f"{model!r} is not a pydantic model class")
        _check_version(type, version)
        if subject is not None and subject not in model.model_fields:
            raise ConfigError(
                f"{model.__name__} has no field {subject!r} to use as the subject; "
                f"fields: {', '.join(model.model_fields)}"
            )
        if kind not in KINDS:
            raise ConfigError(f"{type}: kind must be 'event' or 'command', got {kind!r}")
        check_subjects(model, f"{type} v{version}")
        problem = check_name(type, kind) if name_check else None
        if problem is not None:
            raise ConfigError(f"{type}: {problem}")
        if description is None and model.__doc__:
            description = inspect.cleandoc(model.__doc__)
        day = _sunset(type, sunset)
        contract = Contract(
            type,
            version,
            model,
            subject,
            kind,
            owner,
            description,
            deprecated or bool(day),
            day,
            bool(breaking),
        )
        self._check_same_type(contract)
        self._by_key[(type, version)] = contract
        self._by_model[model] = contract
        latest = self._latest.get(type)
        if latest is None or version >= latest.version:
            self._latest[type] = contract
        self._paths.clear()
        return contract

    def _check_same_type(self, contract: Contract) -> None:
        """Refuse a second model for a version, or a version whose kind or owner differs
        from the type's other versions'."""
        type, version, model = contract.type, contract.version, contract.model
        existing = self._by_key.get((type, version))
        if existing is not None and existing.model is not model:
            raise ConfigError(
                f"{type} version {version} is already registered to "
                f"{existing.model.__name__}; register {model.__name__} as version "
                f"{self.latest_version(type) + 1}"
            )
        for other in self._by_key.values():
            if other.type != type or other.version == version:
                continue
            for field in ("kind", "owner"):
                if getattr(other, field) != getattr(contract, field):
                    raise ConfigError(
                        f"{type} version {version} has {field} {getattr(contract, field)!r}"
                        f", version {other.version} {getattr(other, field)!r}: a type has "
                        f"one {field} for all its versions"
                    )

    def decorator(self, type: str, version: int = 1, **options: Any) -> Callable[[M], M]:
        """A class decorator: :meth:`register` the model with these arguments."""

        def wrap(model: M) -> M:
            self.register(model, type, version, **options)
            return model

        return wrap

    def add_upcaster(self, type: str, from_version: int, function: Upcaster) -> None:
        """Read events of ``type`` at ``from_version`` as ``from_version + 1``: their
        payload (a dict) goes through ``function``, which returns the next version's.
        Upcasters chain (1 to 2 to 3); decoding follows them as far as they go, and the
        version reached must have a model (decision 0020)."""
        validate_type(type)
        _check_version(type, from_version, "from_version")
        if not callable(function):
            raise ConfigError(f"upcaster for {type} v{from_version} is not callable")
        existing = self._upcasters.get((type, from_version))
        if existing is not None and existing is not function:
            raise ConfigError(
                f"{type} already has an upcaster from version {from_version}: "
                f"{_name(existing)}; one version has one upcaster"
            )
        self._upcasters[(type, from_version)] = function
        self._paths.clear()

    def upcaster(self, type: str, from_version: int) -> Callable[[U], U]:
        """Decorator form of :meth:`add_upcaster`."""

        def wrap(function: U) -> U:
            self.add_upcaster(type, from_version, function)
            return function

        return wrap

    def of_payload(self, payload: BaseModel, type: str | None, version: int | None) -> Contract:
        """The contract of a model instance published with ``type``/``version`` (None:
        its own); a ConfigError if the model is unregistered or they differ."""
        contract = self._by_model.get(payload.__class__) or self.for_model(payload.__class__)
        if type is not None and type != contract.type:
            raise ConfigError(
                f"{payload.__class__.__name__} is registered as {contract.type}, not {type}"
            )
        if version is not None and version != contract.version:
            raise ConfigError(
                f"{payload.__class__.__name__} is version {contract.version} of "
                f"{contract.type}, not {version}; publish the model of that version"
            )
        return contract

    def for_model(self, model: type[BaseModel]) -> Contract:
        try:
            return self._by_model[model]
        except KeyError:
            raise ConfigError(
                f"{model.__name__} is not registered as an event payload; decorate it with "
                "@app.event('domain.action') or pass type=... to publish"
            ) from None

    def lookup(self, type: str, version: int | None) -> Contract | None:
        if version is None:
            return self._latest.get(type)
        return self._by_key.get((type, version))

    def knows(self, type: str) -> bool:
        return type in self._latest

    def latest_version(self, type: str) -> int:
        latest = self._latest.get(type)
        return 0 if latest is None else latest.version

    def contracts(self) -> list[Contract]:
        return sorted(self._by_key.values(), key=lambda c: (c.type, c.version))

    def versions(self, type: str) -> list[int]:
        """The registered versions of ``type``, lowest first (empty if unknown)."""
        return sorted(v for t, v in self._by_key if t == type)

    def readable(self, type: str) -> dict[int, int]:
        """The versions of ``type`` this registry can decode, each with the version it
        is read as (itself, or where its upcasters lead): the versions a subscriber of
        ``type`` consumes."""
        written = {v for t, v in self._by_key if t == type}
        written |= {v for t, v in self._upcasters if t == type}
        return {v: self.read_version(type, v) or v for v in sorted(written)}

    def check_publish(self, type: str, version: int | None) -> Contract | None:
        """Refuse to publish a plain value as a version of ``type`` that this registry
        lacks: a consumer with the same contracts could only dead-letter it. Return
        the contract the value is written as (``version``'s, the latest's if None), or
        None where there is none: a type with no registered model (any version goes),
        or a version read through an upcaster. A deprecated version is published with
        a warning (:meth:`warn_deprecated`).
        """
        validate_type(type)
        if version is None:
            return self._latest.get(type)
        _check_version(type, version)
        contract = self._by_key.get((type, version))
        if contract is not None:
            if contract.deprecated:
                self.warn_deprecated(contract)
            return contract
        if not self.knows(type) or (type, version) in self._upcasters:
            return None  # an upcaster reads it as a later version
        known = self.versions(type)
        if version > known[-1]:
            raise UnsupportedVersion(
                f"cannot publish version {version} of {type}: this service registers "
                f"{_span(known)}; register its model first with @app.event({type!r}, "
                f"version={version}), or publish version {known[-1]}"
            )
        raise UnknownEventType(
            f"cannot publish version {version} of {type}: this service registers "
            f"{_span(known)}, not {version}; register its model with "
            f"@app.event({type!r}, version={version}), or publish a registered version"
        )

    def decode_payload(
        self, type: str, version: int | None, data: Any, *, shared: bool = True
    ) -> Any:
        """The typed payload of an event: its model if registered, else the raw data.

        An event of a type with no registered model gives its data as it is, for
        subscribers that take every type: a copy if ``shared`` (someone else may see
        ``data`` after the caller: another handler, a later attempt), else ``data``
        itself. A registered type at a version with no model raises
        :class:`UnknownEventType` (:class:`UnsupportedVersion` if the version is newer
        than every registered one); a payload that does not match its model raises
        :class:`DecodeError` naming the fields.
        """
        if self._upcasters and version is not None and (type, version) in self._upcasters:
            return self._upcast(type, version, data, shared)
        # lookup() and knows(), inline: this runs for every handler call.
        contract = self._latest.get(type) if version is None else self._by_key.get((type, version))
        if contract is None:
            if type in self._latest:
                raise self._unknown_version(type, version)
            if shared and isinstance(data, dict | list):
                # A copy of its own for the handler: it may change what it is given, and
                # the others must see the event as published. A JSON round trip is the
                # quickest deep copy of JSON.
                return orjson.loads(orjson.dumps(data))
            return data
        try:
            return contract.model.__pydantic_validator__.validate_python(data)
        except ValidationError as exc:
            raise _mismatch(contract, exc) from None

    def passes_raw(self, type: str, version: int | None) -> bool:
        """Whether :meth:`decode_payload` gives an event of ``type`` at ``version`` its
        data as it is when not ``shared`` (no model and no upcaster for it), so that a
        caller that knows it may skip the call."""
        return type not in self._latest and (
            version is None or (type, version) not in self._upcasters
        )

    def read_version(self, type: str, version: int | None) -> int | None:
        """The version an event of ``type`` written as ``version`` is read as: the end
        of its upcasters' path, else ``version`` itself."""
        if not self._upcasters or version is None or (type, version) not in self._upcasters:
            return version
        return self._path(type, version)[1]

    def _path(self, type: str, version: int) -> tuple[list[Upcaster], int]:
        path = self._paths.get((type, version))
        if path is None:
            chain, reached = [], version
            while (function := self._upcasters.get((type, reached))) is not None:
                chain.append(function)
                reached += 1
            path = self._paths[(type, version)] = (chain, reached)
        return path

    def _upcast(self, type: str, version: int, data: Any, shared: bool) -> Any:
        """Run the upcasters from ``version`` on; validate with the model reached. An
        upcaster's exception, or a result that is not a dict, is a DecodeError (a
        poison dead letter) naming it."""
        chain, reached = self._path(type, version)
        contract = self._by_key.get((type, reached))
        if contract is None:
            raise UnknownEventType(
                f"version {version} of {type} is upcast to version {reached}, which has "
                f"neither a model nor an upcaster in this service; register one "
                f"(@app.event({type!r}, version={reached}) or @app.upcaster({type!r}, "
                f"from_version={reached})), then replay the dead letter"
            )
        if shared and isinstance(data, dict | list):
            data = orjson.loads(orjson.dumps(data))  # the upcasters may change it
        for step, function in enumerate(chain):
            where = (
                f"upcaster {_name(function)} ({type} v{version + step} -> v{version + step + 1})"
            )
            try:
                data = function(data)
            except Exception as exc:
                raise DecodeError(f"{where} raised {builtins.type(exc).__name__}: {exc}") from exc
            if not isinstance(data, dict):
                raise DecodeError(f"{where} returned {builtins.type(data).__name__}, not a dict")
        try:
            return contract.model.__pydantic_validator__.validate_python(data)
        except ValidationError as exc:
            raise _mismatch(contract, exc) from None

    def warn_deprecated(self, contract: Contract) -> None:
        """Log (logger ``tidings.contracts``, level WARNING) that a deprecated version is
        being published: once per type and version in a process."""
        key = (contract.type, contract.version)
        if key in _warned:
            return
        _warned.add(key)
        latest = self.latest_version(contract.type)
        log.warning(deprecation_notice(contract.type, contract.version, contract.sunset, latest))

    def check_command_owners(self, subscriptions: Iterable[tuple[str, Any]]) -> None:
        """Refuse a command type that subscribers of two groups name: a command has
        exactly one owning group. ``subscriptions``: (group, the types it names, or
        None for every type) per subscriber; a subscriber to every type owns nothing."""
        owners: dict[str, str] = {}
        for group, types in subscriptions:
            for t in sorted(types or ()):
                contract = self._latest.get(t)
                if contract is None or contract.kind != "command":
                    continue
                first = owners.setdefault(t, group)
                if first != group:
                    raise ConfigError(
                        f"command {t} is subscribed to by groups {first!r} and {group!r}; "
                        f"a command has exactly one owning group: keep one subscription "
                        "(the other group may subscribe to the events it causes)"
                    )

    def _unknown_version(self, type: str, version: int | None) -> UnknownEventType:
        known = self.versions(type)
        if version is not None and version > known[-1]:
            return UnsupportedVersion(
                f"version {version} of {type} is newer than this service knows "
                f"({_span(known)}); deploy the new model (@app.event({type!r}, "
                f"version={version})) to this service, then replay the dead letter"
            )
        return UnknownEventType(
            f"version {version} of {type} is not registered in this service (it knows "
            f"{_span(known)}); register its model (@app.event({type!r}, "
            f"version={version})) or an upcaster from it (@app.upcaster({type!r}, "
            f"from_version={version})) in this service, then replay the dead letter"
        )


def deprecation_notice(type: str, version: int, sunset: date | None, latest: int) -> str:
    """What publishing a deprecated version warns, in process (:meth:`Registry.
    warn_deprecated`) or from the command line (``tidings publish``)."""
    when = f"sunset {sunset.isoformat()}" if sunset else "no sunset date"
    return (
        f"publishing {type} version {version}, which is deprecated ({when}); the latest "
        f"is version {latest}"
    )


_MAX_SHOWN = 10  # validation errors spelled out in a DecodeError (a dead-letter reason)


def _mismatch(contract: Contract, exc: ValidationError) -> DecodeError:
    """The DecodeError of a payload that ``contract``'s model refused, naming the fields
    (validation stays inline in the callers: no extra call per decoded event)."""
    return DecodeError(
        f"payload of {contract.type} v{contract.version} does not match "
        f"{contract.model.__name__}: {_listed(exc.errors(include_url=False))}"
    )


def _listed(errors: list[Any], *, got: bool = False) -> str:
    """``N error(s): field: what is wrong; ...`` (the first ten), with the type of the
    value given if ``got`` (its type only: the value may be personal data)."""
    shown = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
        + (f" (got {builtins.type(e['input']).__name__})" if got and e["type"] != "missing" else "")
        for e in errors[:_MAX_SHOWN]
    )
    if len(errors) > _MAX_SHOWN:
        shown += f"; and {len(errors) - _MAX_SHOWN} more"
    return f"{len(errors)} error(s): {shown}"


def _check_version(type: str, version: Any, name: str = "version") -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(
            f"{type}: {name} must be an integer >= 1, got {version!r:.40} "
            f"({builtins.type(version).__name__})"
        )


def _sunset(type: str, sunset: date | str | None) -> date | None:
    if sunset is None:
        return None
    if isinstance(sunset, datetime):
        return sunset.date()
    if isinstance(sunset, date):
        return sunset
    try:
        return date.fromisoformat(str(sunset))
    except ValueError:
        raise ConfigError(
            f"{type}: sunset must be a date or 'YYYY-MM-DD', got {sunset!r}"
        ) from None


def _name(function: Any) -> str:
    return str(getattr(function, "__qualname__", None) or repr(function))


def _span(versions: list[int]) -> str:
    """``versions 1..3`` for a run, ``versions 1, 3`` otherwise, ``version 1`` alone."""
    if len(versions) == 1:
        return f"version {versions[0]}"
    if versions == list(range(versions[0], versions[-1] + 1)):
        return f"versions {versions[0]}..{versions[-1]}"
    return "versions " + ", ".join(map(str, versions))
