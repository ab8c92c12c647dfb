"""Why a JSON document is not a CloudEvent: the precise reasons :func:`decode`
gives (in :class:`~tidings.errors.DecodeError`), looked for once a quick check failed."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Any, cast

import orjson

from tidings.envelope import SPECVERSION
from tidings.errors import DecodeError

__all__ = [
    "OPTIONAL_STR", "check_zone", "dataversion", "from_base64", "not_json", "refuse_optional",
    "refuse_specversion", "req_str",
]  # fmt: skip

OPTIONAL_STR = (
    "subject", "datacontenttype", "dataschema", "correlationid", "causationid", "traceparent",
    "partitionkey",
)  # fmt: skip


def req_str(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        if value is None:
            raise DecodeError(
                f"required attribute {name!r} is missing (every CloudEvents event has "
                "specversion, id, source and type)"
            )
        raise DecodeError(f"attribute {name!r} must be a non-empty string, got {value!r:.80}")
    return value


def refuse_specversion(specversion: Any) -> None:
    raise DecodeError(
        f"specversion {specversion!r:.40} is not supported (only {SPECVERSION!r}: "
        "CloudEvents 1.0 structured-mode JSON)"
    )


def refuse_optional(doc: dict[str, Any]) -> None:
    """Raise for the first optional string attribute of ``doc`` that is not one."""
    for name in OPTIONAL_STR:
        value = doc.get(name)
        if value is not None and type(value) is not str:
            raise DecodeError(f"attribute {name!r} must be a string, got {value!r:.80}")


def check_zone(raw_time: str, when: datetime) -> None:
    """Refuse a time without an offset, or with an offset RFC 3339 cannot write."""
    if when.tzinfo is None:
        raise DecodeError(f"attribute 'time' has no time zone offset: {raw_time!r:.80}")
    offset = cast(timedelta, when.utcoffset())
    if offset.seconds % 60 or offset.microseconds:
        # Python reads "+01:00:30"; RFC 3339 (and the encoder) has whole minutes.
        raise DecodeError(
            f"attribute 'time' has a UTC offset with seconds: {raw_time!r:.80}; "
            "RFC 3339 offsets are +hh:mm"
        )


def dataversion(version: Any) -> int:
    """A dataversion that is not a plain positive int: a decimal string (some
    producers write extension values as strings, as CloudEvents allows), or an error."""
    if isinstance(version, str) and version.isascii() and version.isdecimal():
        version = int(version[:12]) if len(version) <= 12 else -1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DecodeError(
            f"attribute 'dataversion' must be a positive integer, got {version!r:.80}"
        )
    return version


def from_base64(b64: Any) -> bytes:
    if not isinstance(b64, str):
        raise DecodeError("attribute 'data_base64' must be a base64 string")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("attribute 'data_base64' is not valid base64") from None


def not_json(raw: bytes | bytearray | memoryview, exc: orjson.JSONDecodeError) -> str:
    """Why ``raw`` is not JSON: bad UTF-8 named by its byte, else orjson's position."""
    data = bytes(raw)
    if not data:
        return "not valid UTF-8 JSON: the input is empty (0 bytes)"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"not valid UTF-8 JSON: the bytes are not UTF-8 (byte {data[bad.start]:#04x} at "
            f"offset {bad.start}: {bad.reason}); events must be UTF-8 encoded JSON"
        )
    return f"not valid UTF-8 JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
