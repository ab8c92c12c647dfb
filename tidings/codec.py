"""Structured-mode CloudEvents JSON: :class:`~tidings.envelope.Event` <-> bytes.

``encode`` enforces the size limit; ``decode`` turns any bad input into a
:class:`~tidings.errors.DecodeError` whose message is the reason (it becomes the
dead-letter reason), and never raises anything else.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from tidings.envelope import SPECVERSION, Event, validate_type
from tidings.errors import DecodeError, EventError, EventTooLarge, InvalidEventType

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "decode", "encode", "to_dict"]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024

# Attributes with a fixed meaning; any other top-level member is an extension.
_KNOWN = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
        "dataversion",
        "correlationid",
        "causationid",
        "traceparent",
        "partitionkey",
    }
)
_OPTIONAL_STR = (
    "subject",
    "datacontenttype",
    "dataschema",
    "correlationid",
    "causationid",
    "traceparent",
    "partitionkey",
)


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return orjson.Fragment(value.__pydantic_serializer__.to_json(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_dict(event: Event) -> dict[str, Any]:
    """The event as a CloudEvents structured-mode JSON object (data left as is)."""
    doc: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
    }
    for name in _OPTIONAL_STR:
        value = getattr(event, name)
        if value is not None:
            doc[name] = value
    if event.dataversion is not None:
        doc["dataversion"] = event.dataversion
    if event.extensions:
        doc.update(event.extensions)
    if isinstance(event.data, bytes | bytearray | memoryview):
        doc["data_base64"] = base64.b64encode(bytes(event.data)).decode("ascii")
    elif event.data is not None:
        doc["data"] = event.data
    return doc


def encode(event: Event, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> bytes:
    """Encode ``event`` as one JSON document; raise EventTooLarge over ``max_bytes``."""
    try:
        raw = orjson.dumps(
            to_dict(event), default=_default, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
        )
    except TypeError as exc:  # orjson.JSONEncodeError subclasses TypeError
        raise EventError(
            f"event {event.type} ({event.id}) cannot be encoded as JSON: {exc}; "
            "payloads must be pydantic models, JSON values or bytes"
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
        raise DecodeError(f"event is {len(raw):,} bytes; the limit is {max_bytes:,}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a JSON object, got {type(doc).__name__}")
    return from_dict(doc)


def _req_str(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        if value is None:
            raise DecodeError(f"required attribute {name!r} is missing")
        raise DecodeError(f"attribute {name!r} must be a non-empty string, got {value!r:.80}")
    return value


def from_dict(doc: dict[str, Any]) -> Event:
    """Build an Event from a structured-mode JSON object; DecodeError if invalid."""
    specversion = _req_str(doc, "specversion")
    if specversion != SPECVERSION:
        raise DecodeError(f"specversion {specversion!r} is not supported (only {SPECVERSION!r})")
    event_id = _req_str(doc, "id")
    source = _req_str(doc, "source")
    event_type = _req_str(doc, "type")
    try:
        validate_type(event_type)
    except InvalidEventType as exc:
        raise DecodeError(str(exc)) from None
    kwargs: dict[str, Any] = {}
    for name in _OPTIONAL_STR:
        value = doc.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise DecodeError(f"attribute {name!r} must be a string, got {value!r:.80}")
            kwargs[name] = value
    raw_time = doc.get("time")
    if raw_time is None:
        # CloudEvents makes time optional; a missing time reads as "unknown", kept
        # as the epoch so that it is visibly not a real time.
        kwargs["time"] = datetime.fromtimestamp(0).astimezone()
    else:
        if not isinstance(raw_time, str):
            raise DecodeError(f"attribute 'time' must be an RFC 3339 string, got {raw_time!r:.80}")
        try:
            parsed = datetime.fromisoformat(raw_time)
        except ValueError:
            raise DecodeError(f"attribute 'time' is not RFC 3339: {raw_time!r:.80}") from None
        if parsed.tzinfo is None:
            raise DecodeError(f"attribute 'time' has no time zone offset: {raw_time!r:.80}")
        kwargs["time"] = parsed
    version = doc.get("dataversion")
    if version is not None:
        # Some producers write extension values as strings (CloudEvents allows it).
        if isinstance(version, str) and version.isdigit():
            version = int(version)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DecodeError(
                f"attribute 'dataversion' must be a positive integer, got {version!r:.80}"
            )
        kwargs["dataversion"] = version
    if "data_base64" in doc:
        b64 = doc["data_base64"]
        if not isinstance(b64, str):
            raise DecodeError("attribute 'data_base64' must be a base64 string")
        try:
            kwargs["data"] = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("attribute 'data_base64' is not valid base64") from None
    else:
        kwargs["data"] = doc.get("data")
    extensions = {k: v for k, v in doc.items() if k not in _KNOWN}
    if extensions:
        kwargs["extensions"] = extensions
    return Event(type=event_type, source=source, id=event_id, specversion=specversion, **kwargs)
