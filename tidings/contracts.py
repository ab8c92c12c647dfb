"""Payload contracts: pydantic models registered per (event type, version)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from tidings.envelope import validate_type
from tidings.errors import ConfigError, DecodeError, UnknownEventType, UnsupportedVersion

__all__ = ["Contract", "Registry"]

M = TypeVar("M", bound=type[BaseModel])


@dataclass(frozen=True, slots=True)
class Contract:
    """One registered payload model."""

    type: str
    version: int
    model: builtins.type[BaseModel]
    subject: str | None = None  # the payload field whose value is the event's subject

    @property
    def schema_uri(self) -> str:
        return f"urn:tidings:schema:{self.type}:{self.version}"

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

    def register(
        self, model: type[BaseModel], type: str, version: int = 1, *, subject: str | None = None
    ) -> Contract:
        validate_type(type)
        if not (isinstance(model, builtins.type) and issubclass(model, BaseModel)):
            raise ConfigError(f"{model!r} is not a pydantic model class")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"{type}: version must be an integer >= 1, got {version!r}")
        if subject is not None and subject not in model.model_fields:
            raise ConfigError(
                f"{model.__name__} has no field {subject!r} to use as the subject; "
                f"fields: {', '.join(model.model_fields)}"
            )
        contract = Contract(type, version, model, subject)
        existing = self._by_key.get((type, version))
        if existing is not None and existing.model is not model:
            raise ConfigError(
                f"{type} version {version} is already registered to "
                f"{existing.model.__name__}; register {model.__name__} as version "
                f"{self.latest_version(type) + 1}"
            )
        self._by_key[(type, version)] = contract
        self._by_model[model] = contract
        latest = self._latest.get(type)
        if latest is None or version > latest.version:
            self._latest[type] = contract
        return contract

    def decorator(
        self, type: str, version: int = 1, *, subject: str | None = None
    ) -> Callable[[M], M]:
        def wrap(model: M) -> M:
            self.register(model, type, version, subject=subject)
            return model

        return wrap

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

    def check_publish(self, type: str, version: int | None) -> None:
        """Refuse to publish a plain value as a version of ``type`` that this registry
        lacks: a consumer with the same contracts could only dead-letter it.

        Types with no registered model are not checked (any version goes), nor is a
        value published without a version (consumers read it with the latest model).
        """
        validate_type(type)
        if version is None:
            return
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(
                f"{type}: version must be an integer >= 1, got {version!r:.40} "
                f"({builtins.type(version).__name__})"
            )
        if (type, version) in self._by_key or not self.knows(type):
            return
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
            errors = exc.errors(include_url=False)
            shown = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                for e in errors[:_MAX_SHOWN]
            )
            if len(errors) > _MAX_SHOWN:
                shown += f"; and {len(errors) - _MAX_SHOWN} more"
            raise DecodeError(
                f"payload of {type} v{contract.version} does not match "
                f"{contract.model.__name__}: {len(errors)} error(s): {shown}"
            ) from None

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
            f"version={version})) in this service, then replay the dead letter"
        )


_MAX_SHOWN = 10  # validation errors spelled out in a DecodeError (a dead-letter reason)


def _span(versions: list[int]) -> str:
    """``versions 1..3`` for a run, ``versions 1, 3`` otherwise, ``version 1`` alone."""
    if len(versions) == 1:
        return f"version {versions[0]}"
    if versions == list(range(versions[0], versions[-1] + 1)):
        return f"versions {versions[0]}..{versions[-1]}"
    return "versions " + ", ".join(map(str, versions))
