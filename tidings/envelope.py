"""The event envelope: CloudEvents 1.0 attributes plus tidings' extensions.

An :class:`Event` is frozen. Its attribute names are the CloudEvents names, the same on
the wire, in code, in the CLI and in the docs. Unknown attributes read from the wire
are kept in :attr:`Event.extensions` and written back unchanged.
"""

from __future__ import annotations

import os
import re
import threading
import time as _time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from tidings.errors import InvalidEventType

__all__ = ["SPECVERSION", "Event", "new_id", "validate_type"]

SPECVERSION = "1.0"

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")


def validate_type(event_type: str) -> str:
    """Return ``event_type`` if it is lower-case ``domain.action``, else raise."""
    if not isinstance(event_type, str) or _TYPE_RE.fullmatch(event_type) is None:
        raise InvalidEventType(
            f"event type {event_type!r} is not lower-case 'domain.action' in the past "
            "tense: use letters, digits and '_' in two or more dot-separated parts, "
            "for example 'task.created' or 'billing.invoice.paid'"
        )
    return event_type


# UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a 12-bit counter that keeps ids
# created within one millisecond in order (method 1 of section 6.2), then 62 random
# bits. Python 3.11 has no uuid7; this is the whole of it.
_id_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """A new UUIDv7 as a string: unique, and ordered by creation time."""
    global _last_ms, _counter
    with _id_lock:
        ms = _time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2)) & 0x3FF  # leave room to count up
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            ms = _last_ms
    rand = int.from_bytes(os.urandom(8)) & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """One immutable fact with its CloudEvents metadata.

    ``data`` is the payload: a JSON value, a pydantic model (encoded as JSON), or
    ``bytes`` (carried as ``data_base64``). ``partitionkey`` is set only when the
    partition key differs from ``subject``; :attr:`key` gives the one in force.
    """

    type: str
    source: str
    data: Any = None
    id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=_utcnow)
    subject: str | None = None
    specversion: str = SPECVERSION
    datacontenttype: str | None = "application/json"
    dataschema: str | None = None
    dataversion: int | None = None
    correlationid: str | None = None
    causationid: str | None = None
    traceparent: str | None = None
    partitionkey: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_type(self.type)
        if self.time.tzinfo is None:
            raise ValueError(
                f"event time {self.time.isoformat()} has no time zone: pass an aware "
                "datetime, e.g. datetime.now(UTC)"
            )

    @property
    def key(self) -> str | None:
        """The partition key: ``partitionkey`` if set, else ``subject``."""
        return self.partitionkey if self.partitionkey is not None else self.subject

    def with_(self, **changes: Any) -> Event:
        """A copy with some attributes changed (events are frozen)."""
        return replace(self, **changes)
