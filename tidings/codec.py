"""Structured-mode CloudEvents JSON: :class:`~tidings.envelope.Event` <-> bytes.

``encode`` enforces the size limit; ``decode`` turns any bad input into a
:class:`~tidings.errors.DecodeError` whose message is the reason (it becomes the
dead-letter reason), and never raises anything else.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from pydantic import BaseModel

from tidings.envelope import SPECVERSION, Event, validate_type
from tidings.errors import DecodeError, EventError, EventTooLarge, InvalidEventType

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "decode", "encode", "to_dict"]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
_EPOCH = datetime.fromtimestamp(0, UTC)

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
    # Spelled out rather than looped over getattr: this runs for every event published.
    if event.subject is not None:
        doc["subject"] = event.subject
    if event.datacontenttype is not None:
        doc["datacontenttype"] = event.datacontenttype
    if event.dataschema is not None:
        doc["dataschema"] = event.dataschema
    if event.correlationid is not None:
        doc["correlationid"] = event.correlationid
    if event.causationid is not None:
        doc["causationid"] = event.causationid
    if event.traceparent is not None:
        doc["traceparent"] = event.traceparent
    if event.partitionkey is not None:
        doc["partitionkey"] = event.partitionkey
    if event.dataversion is not None:
        doc["dataversion"] = event.dataversion
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
    get = doc.get
    specversion, event_id, source, event_type = (
        get("specversion"), get("id"), get("source"), get("type")
    )  # fmt: skip
    if not (
        type(specversion) is str and type(event_id) is str and type(source) is str
        and type(event_type) is str and event_id and source
    ):  # fmt: skip
        for name in ("specversion", "id", "source", "type"):
            _req_str(doc, name)  # raises with the precise reason
    if specversion != SPECVERSION:
        raise DecodeError(f"specversion {specversion!r} is not supported (only {SPECVERSION!r})")
    try:
        validate_type(cast(str, event_type))
    except InvalidEventType as exc:
        raise DecodeError(str(exc)) from None
    kwargs: dict[str, Any] = {}
    for name in _OPTIONAL_STR:
        value = get(name)
        if value is not None:
            if type(value) is not str:
                raise DecodeError(f"attribute {name!r} must be a string, got {value!r:.80}")
            kwargs[name] = value
    raw_time = get("time")
    if raw_time is None:
        # CloudEvents makes time optional; a missing time reads as "unknown", kept
        # as the epoch so that it is visibly not a real time.
        kwargs["time"] = _EPOCH
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
        if isinstance(version, str) and version.isascii() and version.isdecimal():
            version = int(version[:12]) if len(version) <= 12 else -1
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
    if doc.keys() - _KNOWN:
        kwargs["extensions"] = {k: v for k, v in doc.items() if k not in _KNOWN}
    # Checked above (the fast test or _req_str); cast for the type checker only.
    return Event(
        type=cast(str, event_type),
        source=cast(str, source),
        id=cast(str, event_id),
        specversion=cast(str, specversion),
        **kwargs,
    )
