"""One dead-letter entry, the marks that change its state, and the group's two topics."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from tidings.codec import decode
from tidings.envelope import new_id
from tidings.errors import DecodeError, EventError, RetriesExhausted
from tidings.transport import Record, Transport

__all__ = [
    "DeadLetter",
    "Reason",
    "State",
    "dlq_topic",
    "new_entry",
    "replay_key",
    "retry_topic",
    "value_limit",
]

Reason = Literal["failed", "poison", "parked"]
"""Why an event is a dead letter: its handler gave up, it could not be read, or it
waits behind an earlier dead letter of its key (a sequenced group)."""
State = Literal["dead", "replayed", "resolved", "purged"]
"""Where a dead letter stands: waiting (``dead``), sent back to its group
(``replayed``), done with (``resolved``: its replay was handled, or failed again as a
new entry), or ``purged``."""
UNRESOLVED: frozenset[str] = frozenset({"dead", "replayed"})
MARKS: frozenset[str] = frozenset({"replayed", "resolved", "purged"})
TRACEBACK_LIMIT = 16_384  # characters kept of a traceback, and of an error message
# Bytes of the original an entry keeps; None: as much as the log takes (value_limit).
VALUE_LIMIT: int | None = None
ENTRY_ROOM = 64 * 1024  # an entry's bytes for all but the original: error, traceback, fields
REFUSED_TEXT_LIMIT = 4_096  # characters of traceback and message kept when an entry is refused
# Partitions of a new ``<group>.dlq``: no group consumes it (every refresh reads it all,
# partition by partition), so one keeps its entries and marks in one order and costs
# one read per refresh. The retry topic is sized from the topics the group reads.
DLQ_PARTITIONS = 1


def dlq_topic(group: str) -> str:
    """The topic holding ``group``'s dead letters."""
    return f"{group}.dlq"


def retry_topic(group: str) -> str:
    """The topic only ``group`` reads, where its dead letters are replayed."""
    return f"{group}.retry"


def replay_key(entry: DeadLetter) -> str:
    """The key a replay of ``entry`` is sent to the retry topic with: the original key,
    or for a keyless event its topic. A sequenced group parks a key's later events (and
    a topic's keyless ones) behind the first dead letter, and needs their replays in
    their original order: one key, one retry partition, whatever the partition count
    (keyless records would otherwise rotate over the partitions)."""
    return entry.topic if entry.key is None else entry.key


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def type_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter entry. ``value`` is the original record, byte for byte, unless
    ``truncated``: then it is only the original's first bytes (none if the log refused
    even those), ``value_size`` and ``value_sha256`` identify the original, and the
    entry cannot be replayed. Entries written before these fields read as not truncated,
    with ``value_size`` and ``value_sha256`` None.

    ``event_id``, ``type`` and ``correlationid`` are None when the record could not be
    decoded. ``dlq_partition``/``dlq_offset`` say where the entry itself is stored.
    """

    entry: str
    group: str
    reason: Reason
    topic: str
    partition: int
    offset: int
    timestamp: int  # the original record's append time, ms
    key: str | None
    value: bytes
    error_type: str
    error_message: str
    traceback: str | None
    attempts: int
    first_failure: float  # Unix seconds
    last_failure: float
    dead_at: float
    event_id: str | None = None
    type: str | None = None
    correlationid: str | None = None
    handler: str | None = None
    parked_behind: str | None = None  # the entry this one waits behind (sequenced groups)
    replay_of: str | None = None  # the entry whose replay failed again
    truncated: bool = False
    value_size: int | None = None  # the original's size in bytes
    value_sha256: str | None = None  # the original's SHA-256, hex
    dlq_partition: int = -1
    dlq_offset: int = -1

    @property
    def replayable(self) -> bool:
        """Whether a replay can send the original (it was not truncated)."""
        return not self.truncated

    def to_json(self) -> dict[str, Any]:
        """The documented JSON form (``value`` base64-encoded)."""
        doc: dict[str, Any] = {
            "kind": "entry",
            "entry": self.entry,
            "group": self.group,
            "reason": self.reason,
            "event_id": self.event_id,
            "type": self.type,
            "correlationid": self.correlationid,
            "handler": self.handler,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": self.key,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
            "dead_at": self.dead_at,
            "parked_behind": self.parked_behind,
            "replay_of": self.replay_of,
            "truncated": self.truncated,
            "value_size": self.value_size,
            "value_sha256": self.value_sha256,
            "value": base64.b64encode(self.value).decode("ascii"),
        }
        return doc

    def summary(self, state: str) -> dict[str, Any]:
        """The entry as an operator lists it: its JSON form and ``state``, without the
        original and the traceback."""
        doc = self.to_json()
        del doc["kind"], doc["value"], doc["traceback"]
        doc["state"] = state
        return doc

    def detail(self, state: str) -> dict[str, Any]:
        """The entry as an operator inspects it: its JSON form and ``state``, and the
        original as ``event`` (the CloudEvents document) if it is a whole event, else as
        ``value_text``."""
        doc = self.to_json()
        del doc["kind"]
        doc["state"] = state
        event = None
        if not self.truncated:
            try:
                decode(self.value)
                event = orjson.loads(self.value)
            except (EventError, orjson.JSONDecodeError):
                event = None
        doc["event"] = event
        if event is None:
            doc["value_text"] = self.value.decode("utf-8", "replace")
        return doc

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, partition: int = -1, offset: int = -1) -> DeadLetter:
        """Parse an entry; DecodeError if it is not one."""
        try:
            return cls(
                entry=str(doc["entry"]),
                group=str(doc["group"]),
                reason=doc["reason"],
                topic=str(doc["topic"]),
                partition=int(doc["partition"]),
                offset=int(doc["offset"]),
                timestamp=int(doc["timestamp"]),
                key=doc.get("key"),
                value=base64.b64decode(doc["value"], validate=True),
                error_type=str(doc["error_type"]),
                error_message=str(doc["error_message"]),
                traceback=doc.get("traceback"),
                attempts=int(doc["attempts"]),
                first_failure=float(doc["first_failure"]),
                last_failure=float(doc["last_failure"]),
                dead_at=float(doc["dead_at"]),
                event_id=doc.get("event_id"),
                type=doc.get("type"),
                correlationid=doc.get("correlationid"),
                handler=doc.get("handler"),
                parked_behind=doc.get("parked_behind"),
                replay_of=doc.get("replay_of"),
                truncated=bool(doc.get("truncated", False)),
                value_size=None if doc.get("value_size") is None else int(doc["value_size"]),
                value_sha256=doc.get("value_sha256"),
                dlq_partition=partition,
                dlq_offset=offset,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise DecodeError(f"not a dead-letter entry: {exc!r}") from None

    @classmethod
    def from_bytes(cls, value: bytes, *, partition: int = -1, offset: int = -1) -> DeadLetter:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not a dead-letter entry: {exc}") from None
        if not isinstance(doc, dict) or doc.get("kind") != "entry":
            raise DecodeError("not a dead-letter entry: no 'kind': 'entry'")
        return cls.from_json(doc, partition=partition, offset=offset)

    def without_original(self) -> DeadLetter:
        """This entry without the original and with shorter texts: what is written
        when the log refuses the whole entry."""
        return replace(
            self,
            value=b"",
            truncated=bool(self.value_size),
            error_message=clip(self.error_message, REFUSED_TEXT_LIMIT),
            traceback=None if self.traceback is None else self.traceback[-REFUSED_TEXT_LIMIT:],
        )

    def original(self) -> Record:
        """The record as it was read from its original topic."""
        return Record(self.topic, self.partition, self.offset, self.timestamp, self.key, self.value)


def mark_record(state: State, entries: Sequence[str]) -> bytes:
    return orjson.dumps(
        {"kind": "mark", "state": state, "entries": list(entries), "at": time.time()}
    )


def after(current: State | None, state: State) -> State:
    """The state a mark leaves: final states stay final (a late ``replayed`` mark must
    not revive a resolved entry)."""
    if current is not None and current not in UNRESOLVED and state in UNRESOLVED:
        return current
    return state


def value_limit(transport: Transport) -> int | None:
    """How much of an original a dead letter keeps on ``transport``: everything where
    the log has no record limit of its own (SQLite), else what fits beside the rest of
    the entry once base64-encoded (about 700 KB on Kafka's and NATS's defaults)."""
    if VALUE_LIMIT is not None:
        return VALUE_LIMIT
    most = transport.capabilities.max_record_bytes
    return None if most is None else max(0, (most - ENTRY_ROOM) * 3 // 4)


def new_entry(
    group: str,
    record: Record,
    error: BaseException,
    *,
    reason: Reason,
    max_value_bytes: int | None,
    attempts: int = 1,
    first_failure: float | None = None,
    last_failure: float | None = None,
    handler: str | None = None,
    event_id: str | None = None,
    event_type: str | None = None,
    correlationid: str | None = None,
    parked_behind: str | None = None,
    replay_of: str | None = None,
) -> DeadLetter:
    """The entry for ``record`` (the original) that ``group`` gives up on, keeping at
    most ``max_value_bytes`` of it (None: all)."""
    now = time.time()
    cause = error.error if isinstance(error, RetriesExhausted) else error
    trace = None
    if reason != "parked":
        trace = "".join(traceback.format_exception(cause))[-TRACEBACK_LIMIT:]
    value = record.value
    return DeadLetter(
        entry=new_id(),
        group=group,
        reason=reason,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        key=record.key,
        value=value[:max_value_bytes],
        error_type=type_name(cause),
        error_message=clip(str(cause), TRACEBACK_LIMIT),
        traceback=trace,
        attempts=attempts,
        first_failure=first_failure or now,
        last_failure=last_failure or now,
        dead_at=now,
        event_id=event_id,
        type=event_type,
        correlationid=correlationid,
        handler=handler,
        parked_behind=parked_behind,
        replay_of=replay_of,
        truncated=max_value_bytes is not None and len(value) > max_value_bytes,
        value_size=len(value),
        value_sha256=hashlib.sha256(value).hexdigest(),
    )
