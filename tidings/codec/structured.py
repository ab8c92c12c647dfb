"""Structured-mode CloudEvents JSON: :class:`~tidings.envelope.Event` <-> bytes.

``encode`` enforces the size limit and refuses, with an :class:`~tidings.errors.EventError`
naming the attribute or the payload field, anything a consumer could not decode.
``decode`` turns any bad input into a :class:`~tidings.errors.DecodeError` whose message
is the reason (it becomes the dead-letter reason), and never raises anything else:
input over the size limit is a :class:`~tidings.errors.RecordTooLarge`, which is both a
``DecodeError`` and an ``EventTooLarge``.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import operator
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel

from tidings.codec.members import ATTRIBUTES
from tidings.codec.refusals import (
    check_zone,
    dataversion,
    from_base64,
    not_json,
    refuse_optional,
    refuse_specversion,
    req_str,
)
from tidings.codec.shapes import learn, shapes
from tidings.envelope import EPOCH, SPECVERSION, Event, checked_event, seen_types, validate_type
from tidings.errors import (
    DecodeError,
    EventError,
    EventTooLarge,
    InvalidEventType,
    RecordTooLarge,
)

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "decode", "encode", "encode_value", "to_dict"]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
"""The largest encoded event, unless ``Tidings(max_event_bytes=...)`` says otherwise."""
_fromisoformat = datetime.fromisoformat
_seen_types = seen_types()  # a set lookup first: validate_type is a call
_shapes = shapes()


def _unknown(doc: dict[str, Any]) -> None:
    """The decoder of a shape not seen before: none."""
    return None


# The four attributes every event has, in one call (KeyError if one is missing).
_REQUIRED: Callable[[dict[str, Any]], tuple[Any, Any, Any, Any]] = operator.itemgetter(
    "specversion", "id", "source", "type"
)


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return orjson.Fragment(value.__pydantic_serializer__.to_json(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_dict(event: Event) -> dict[str, Any]:
    """The event as a CloudEvents structured-mode JSON object (data left as is).

    Raises :class:`~tidings.errors.EventError` naming the attribute if one has a value
    that :func:`decode` would refuse (a subject that is not a string, a dataversion
    below 1, ...): such an event would only ever be a dead letter.
    """
    source, when = event.source, event.time
    if type(source) is not str or not source or event.specversion != SPECVERSION:
        _check_required(event)
    if when.tzinfo is not UTC:
        _check_offset(event, when)
    doc: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": source,
        "type": event.type,
        "time": when,
    }
    # Spelled out rather than looped over getattr: this runs for every event published.
    # Each string attribute's type is checked where it is set (a type() test is cheap).
    value = event.subject
    if value is not None:
        if type(value) is not str:
            _need_str(event, "subject", value)
        doc["subject"] = value
    value = event.datacontenttype
    if value is not None:
        if type(value) is not str:
            _need_str(event, "datacontenttype", value)
        doc["datacontenttype"] = value
    value = event.dataschema
    if value is not None:
        if type(value) is not str:
            _need_str(event, "dataschema", value)
        doc["dataschema"] = value
    value = event.correlationid
    if value is not None:
        if type(value) is not str:
            _need_str(event, "correlationid", value)
        doc["correlationid"] = value
    value = event.causationid
    if value is not None:
        if type(value) is not str:
            _need_str(event, "causationid", value)
        doc["causationid"] = value
    value = event.traceparent
    if value is not None:
        if type(value) is not str:
            _need_str(event, "traceparent", value)
        doc["traceparent"] = value
    value = event.partitionkey
    if value is not None:
        if type(value) is not str:
            _need_str(event, "partitionkey", value)
        doc["partitionkey"] = value
    version = event.dataversion
    if version is not None:
        if type(version) is not int or version < 1:
            _need_version(event, version)
        doc["dataversion"] = version
    if event.extensions:
        doc.update(event.extensions)
    data = event.data
    if isinstance(data, BaseModel):
        # pydantic's own serializer writes the JSON; orjson splices it in as is.
        doc["data"] = orjson.Fragment(data.__pydantic_serializer__.to_json(data))
    elif isinstance(data, bytes | bytearray | memoryview):
        doc["data_base64"] = base64.b64encode(bytes(data)).decode("ascii")
    elif data is not None:
        doc["data"] = data
    return doc


_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def encode_value(value: Any) -> bytes:
    """One value of :func:`to_dict`'s document (the data, the time) as :func:`encode`
    writes it there, byte for byte. Raises TypeError or ValueError if it cannot."""
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def encode(event: Event, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> bytes:
    """Encode ``event`` as one JSON document; raise EventTooLarge over ``max_bytes``."""
    try:
        raw = orjson.dumps(to_dict(event), default=_default, option=_OPTIONS)
    except EventError:
        raise  # an attribute refused by to_dict, with its own message
    except (TypeError, ValueError) as exc:
        # orjson.JSONEncodeError subclasses TypeError; pydantic's
        # PydanticSerializationError (a model field it cannot write) is a ValueError.
        raise EventError(
            f"event {event.type} ({event.id}) cannot be encoded as JSON: {_unencodable(event, exc)}"
        ) from None
    if len(raw) > max_bytes:
        raise EventTooLarge(
            f"event {event.type} ({event.id}) is {len(raw):,} bytes encoded; the limit is "
            f"{max_bytes:,} (raise it with max_event_bytes=..., or store the large part "
            "elsewhere and send a reference)"
        )
    return raw


def decode(raw: bytes | bytearray | memoryview, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Event:
    """Decode one structured-mode JSON event; raise DecodeError with the reason."""
    if len(raw) > max_bytes:
        raise RecordTooLarge(
            f"event is {len(raw):,} bytes; the limit is {max_bytes:,}: its producer allows "
            "larger events than this service; give this service a max_event_bytes of at "
            f"least {len(raw):,} to read it"
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(not_json(raw, exc)) from None
    if type(doc) is not dict:
        raise DecodeError(f"expected a JSON object, got {type(doc).__name__}")
    # A shape seen before: its own decoder (shapes.py); else, or if it gives None, the
    # full lookup, which learns the shape.
    event = _shapes.get(tuple(doc), _unknown)(doc)
    return event if event is not None else from_dict(doc)


def from_dict(doc: dict[str, Any]) -> Event:
    """Build an Event from a structured-mode JSON object; DecodeError if invalid, with
    the precise reason. The full lookup: :func:`decode` takes a document of a shape it
    has seen by the shape's own decoder (shapes.py), which this one's success makes."""
    try:
        specversion, event_id, source, event_type = _REQUIRED(doc)
    except KeyError:
        specversion = event_id = source = event_type = None  # req_str names the missing one
    if not (
        type(specversion) is str and type(event_id) is str and type(source) is str
        and type(event_type) is str and event_id and source
    ):  # fmt: skip
        for name in ("specversion", "id", "source", "type"):
            req_str(doc, name)  # raises with the precise reason
    if specversion != SPECVERSION:
        refuse_specversion(specversion)
    if event_type not in _seen_types:
        _check_type(event_type)
    (
        subject, datacontenttype, dataschema, correlationid, causationid, traceparent, key,
        when, version, data, extensions,
    ) = _optional_attributes(doc)  # fmt: skip
    event = checked_event(
        event_type, source, data, event_id, when, subject, specversion,
        datacontenttype, dataschema, version, correlationid, causationid, traceparent, key,
        extensions,
    )  # fmt: skip
    learn(tuple(doc))
    return event


def _check_type(event_type: str) -> None:
    try:
        validate_type(event_type)
    except InvalidEventType as exc:
        raise DecodeError(f"attribute 'type': {exc}") from None


def _optional_attributes(doc: dict[str, Any]) -> tuple[Any, ...]:
    """The optional attributes of any event, checked: subject, datacontenttype,
    dataschema, correlationid, causationid, traceparent, partitionkey, time,
    dataversion, data, extensions."""
    get = doc.get
    subject, datacontenttype, dataschema, correlationid, causationid, traceparent, key = (
        get("subject"), get("datacontenttype"), get("dataschema"), get("correlationid"),
        get("causationid"), get("traceparent"), get("partitionkey"),
    )  # fmt: skip
    if not (
        (subject is None or type(subject) is str)
        and (datacontenttype is None or type(datacontenttype) is str)
        and (dataschema is None or type(dataschema) is str)
        and (correlationid is None or type(correlationid) is str)
        and (causationid is None or type(causationid) is str)
        and (traceparent is None or type(traceparent) is str)
        and (key is None or type(key) is str)
    ):
        refuse_optional(doc)
    when = _time(get("time"))
    version = get("dataversion")
    if version is not None and (type(version) is not int or version < 1):
        version = dataversion(version)
    data = from_base64(doc["data_base64"]) if "data_base64" in doc else get("data")
    # Extension names cannot clash with the attributes: those are all in ATTRIBUTES.
    known = ATTRIBUTES
    extensions = {} if known.issuperset(doc) else {k: v for k, v in doc.items() if k not in known}
    return (
        subject, datacontenttype, dataschema, correlationid, causationid, traceparent, key,
        when, version, data, extensions,
    )  # fmt: skip


def _time(raw_time: Any) -> datetime:
    """The event's ``time``: RFC 3339 with an offset; absent, the epoch (optional in
    CloudEvents: visibly not a real time)."""
    if raw_time is None:
        return EPOCH
    if type(raw_time) is not str:
        raise DecodeError(f"attribute 'time' must be an RFC 3339 string, got {raw_time!r:.80}")
    try:
        when = _fromisoformat(raw_time)
    except ValueError:
        raise DecodeError(f"attribute 'time' is not RFC 3339: {raw_time!r:.80}") from None
    if when.tzinfo is not UTC:
        check_zone(raw_time, when)
    return when


# -- reasons (encoding) ------------------------------------------------------------


_PUBLISH_OPTION = {
    "partitionkey": "key",
    "correlationid": "correlation_id",
    "causationid": "causation_id",
    "dataversion": "version",
    "subject": "subject",
    "traceparent": "traceparent",
}


def _attr(event: Event, name: str) -> str:
    option = _PUBLISH_OPTION.get(name)
    hint = f" (publish option {option}=)" if option else ""
    return f"event {event.type} ({event.id}): attribute {name!r}{hint}"


def _got(value: Any) -> str:
    """``value`` and its type for a message (a repr that fails is not fatal)."""
    try:
        shown = f"{value!r:.80}"
    except Exception:  # a huge int (past the digit limit), or a __repr__ that raises
        shown = "<no repr>"
    return f"{shown} ({type(value).__name__})"


def _need_str(event: Event, name: str, value: Any) -> None:
    if isinstance(value, str):
        return  # a str subclass (e.g. a StrEnum member) is written as its string
    raise EventError(
        f"{_attr(event, name)} must be a string, got {_got(value)}; pass str(value) if "
        "that is what you mean"
    )


def _need_version(event: Event, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return  # an int subclass (e.g. an IntEnum member) is written as its number
    raise EventError(f"{_attr(event, 'dataversion')} must be an integer >= 1, got {_got(value)}")


def _check_required(event: Event) -> None:
    source = event.source
    if not isinstance(source, str) or not source:
        raise EventError(
            f"{_attr(event, 'source')} must be a non-empty string (the producing service, "
            f"e.g. 'taskapi'), got {_got(source)}"
        )
    if event.specversion != SPECVERSION:
        raise EventError(
            f"{_attr(event, 'specversion')} is {event.specversion!r:.40}; tidings writes "
            f"CloudEvents {SPECVERSION!r} only"
        )


def _check_offset(event: Event, when: datetime) -> None:
    offset = when.utcoffset()
    if offset is not None and (offset.seconds % 60 or offset.microseconds):
        raise EventError(
            f"{_attr(event, 'time')} has the UTC offset {offset}, with seconds, which RFC "
            "3339 cannot write (offsets are whole minutes): pass time.astimezone(UTC)"
        )


# orjson refuses containers nested deeper than this; the envelope is the first level.
_MAX_LEVEL = 254
_BYTES_HINT = (
    "bytes are carried only as the whole payload (data_base64); inside a JSON payload, "
    "base64-encode them into a string"
)
_HINTS: dict[type, str] = {
    set: "use a list",
    frozenset: "use a list",
    Decimal: "use a float, a string, or a pydantic model with a Decimal field",
    bytes: _BYTES_HINT,
    bytearray: _BYTES_HINT,
    memoryview: _BYTES_HINT,
}


def _unencodable(event: Event, exc: Exception) -> str:
    """The reason an event cannot be written: the first value at fault, by its path.

    Runs only after the encoder failed, so it may be slow; it mirrors what orjson
    writes, and falls back to orjson's own message if it finds nothing.
    """
    for name, value in event.extensions.items():
        if not isinstance(name, str):
            return f"extension name {_got(name)} is not a string"
        found = _find(value, f"extension {name!r}", 2)
        if found:
            return found
    data = event.data
    if not isinstance(data, bytes | bytearray | memoryview):
        found = _find(data, "data", 2)
        if found:
            return found
    return f"{exc}; payloads must be pydantic models, JSON values or bytes"


def _at(path: str) -> str:
    """``path`` for a message: a deep one keeps its start and its end."""
    return path if len(path) <= 100 else f"{path[:40]}...{path[-50:]}"


def _find(value: Any, path: str, level: int) -> str | None:
    """The first value under ``path`` that orjson cannot write, as a reason; else None."""
    kind = type(value)
    if value is None or kind is bool or kind is float or isinstance(value, orjson.Fragment):
        return None  # (NaN and infinities are written as null, as JSON has neither)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as bad:
            return (
                f"{_at(path)} is a string with the lone surrogate {value[bad.start]!r} at index "
                f"{bad.start}, which UTF-8 cannot carry"
            )
        return None
    if isinstance(value, int):  # bool is handled above
        if -(2**63) <= value < 2**64:
            return None
        return (
            f"{_at(path)} is an integer of {value.bit_length()} bits, outside the 64-bit "
            "range that JSON readers accept; send it as a string"
        )
    if isinstance(value, dict | list) or kind is tuple:
        if level > _MAX_LEVEL:
            return (
                f"{_at(path)} is nested more than {_MAX_LEVEL - 1} levels deep (or contains "
                "itself); JSON encoders stop there"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{_at(path)} has the key {_got(key)}; JSON object keys must be strings"
                found = _find(item, f"{path}.{key}", level + 1)
                if found:
                    return found
        else:
            for index, item in enumerate(value):
                found = _find(item, f"{path}[{index}]", level + 1)
                if found:
                    return found
        return None
    if isinstance(value, BaseModel):
        try:
            value.__pydantic_serializer__.to_json(value)
        except Exception as bad:  # PydanticSerializationError, or a serializer's own
            return f"{_at(path)} ({kind.__name__}) cannot be written by pydantic: {bad}"
        return None
    if isinstance(value, time) and value.tzinfo is not None:
        return f"{_at(path)} is a time of day with a time zone, which JSON cannot carry"
    if isinstance(value, datetime | date | time | uuid.UUID):
        return None
    if isinstance(value, enum.Enum):
        return _find(value.value, path, level)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            found = _find(getattr(value, field.name, None), f"{path}.{field.name}", level + 1)
            if found:
                return found
        return None
    hint = _HINTS.get(kind, "use a pydantic model, a JSON value or a datetime")
    return f"{_at(path)} is {_got(value)}, which JSON cannot carry: {hint}"
