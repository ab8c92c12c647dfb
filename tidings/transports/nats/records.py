"""Events as NATS messages and messages as records: headers, subjects' event types,
the server's timestamps, and either CloudEvents content mode.

Records are the CloudEvents structured-mode JSON the codec wrote, with
``content-type: application/cloudevents+json`` (the NATS binding's content mode) and
the key in a ``tidings-key`` header; reading also accepts binary mode (``ce-``
headers) from other producers.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings.codec.binary import from_binary
from tidings.transport import Record

__all__ = [
    "KEY_HEADER",
    "event_identity",
    "record_value",
    "rfc3339",
    "rfc3339_ms",
    "stored_record",
]

KEY_HEADER = "tidings-key"

_UNSAFE_IN_TOKEN = re.compile(r"[ \t\r\n*>]|\.\.")


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_ms(text: str) -> int:
    """Milliseconds since the epoch of a server timestamp (nanosecond RFC 3339, UTC)."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(seconds) * 1000 + int((frac + "000")[:3])


def event_identity(value: bytes) -> tuple[str | None, str | None]:
    """The ``id`` and ``type`` of an encoded event, or Nones for other bytes.

    The codec writes the attributes before ``data``: the head is parsed alone when it
    can be, which costs a fraction of parsing the whole event."""
    at = value.find(b',"data":')
    doc: Any = None
    if at > 0:
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(value[:at] + b"}")
    if not isinstance(doc, dict) or "id" not in doc:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None, None
    if not isinstance(doc, dict):
        return None, None
    ident, kind = doc.get("id"), doc.get("type")
    return (
        ident if isinstance(ident, str) and ident else None,
        kind if isinstance(kind, str) and _subject_safe(kind) else None,
    )


def _subject_safe(token: str) -> bool:
    return bool(token) and _UNSAFE_IN_TOKEN.search(token) is None


def record_value(data: bytes, headers: Mapping[str, str] | None) -> bytes:
    """The structured-mode bytes of a message written in either CloudEvents mode."""
    if not headers or "ce-specversion" not in headers:
        return data
    return from_binary(data, list(headers.items()), "ce-")


def stored_record(topic: str, partition: int, msg: Any) -> Record:
    """The record of a message a direct get returned (its headers say where it is)."""
    headers = msg.headers or {}
    return Record(
        topic,
        partition,
        int(headers["Nats-Sequence"]) - 1,
        rfc3339_ms(headers["Nats-Time-Stamp"]),
        headers.get(KEY_HEADER),
        record_value(msg.data, headers),
    )
