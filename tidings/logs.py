"""Log lines that say which event they are about: the event's coordinates as fields.

While the worker calls a handler, every log record made in that call (the worker's
own, a middleware's, and the handler's ``logging.getLogger(__name__).info(...)``)
can carry the event's coordinates: ``group``, ``subscriber``, ``topic``,
``partition``, ``offset``, ``event_id``, ``correlation_id`` and ``type``. Log lines
outside a handler call (a commit failing, an event that cannot be decoded, the outbox
relay) give what they know through ``extra={"tidings": {...}}`` (``outbox_id`` for an
outbox row).

:class:`Fields`, a :class:`logging.Filter` on a handler, puts them on each record as
one dict, ``record.tidings``; :class:`TextFormatter` appends them compactly
(``[task-events/3@1042 g=email e=…a1b2c3d4 c=…9e11f00d]``), :class:`JsonFormatter`
writes one JSON object per line. :func:`configure` sets all three up on the root
logger, as ``tidings run --log-format json|text --log-level LEVEL`` does::

    import tidings.logs

    tidings.logs.configure(format="json", level="INFO")

Nothing of this runs unless a record is made: the worker sets, per handler call, the
context variable that carries the call's causality anyway
(:data:`tidings.context.causal_scope`), to a tuple.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from tidings.context import Scope, causal_scope
from tidings.errors import ConfigError
from tidings.transport import Record

__all__ = [
    "FORMATS",
    "Fields",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "current_fields",
    "fields",
]

FORMATS = ("text", "json")


def current_fields() -> dict[str, Any]:
    """The coordinates of the handler call under way; inside
    :func:`~tidings.correlation_scope` (an HTTP request), its correlation id."""
    call = causal_scope.get()
    if call is None:
        return {}
    if isinstance(call, Scope):
        return {"correlation_id": call.correlationid}
    group, subscriber, record, event = call
    return {
        "group": group,
        "subscriber": subscriber.name,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "event_id": event.id,
        "correlation_id": event.correlationid or event.id,
        "type": event.type,
    }


def fields(**given: Any) -> dict[str, Any]:
    """``extra=`` for a log call outside a handler call: the coordinates it knows
    (those that are None are left out), e.g. ``log.warning(..., extra=fields(group=g,
    topic=t, partition=p))``."""
    return {"tidings": {k: v for k, v in given.items() if v is not None}}


def at(group: str, record: Record | None = None, **more: Any) -> dict[str, Any]:
    """:func:`fields` for a group, at ``record``'s position if given."""
    if record is None:
        return fields(group=group, **more)
    return fields(
        group=group, topic=record.topic, partition=record.partition, offset=record.offset, **more
    )


class Fields(logging.Filter):
    """Puts the event's coordinates on every record it sees, as ``record.tidings`` (a
    dict; fields given with ``extra={"tidings": {...}}`` win over the handler call's).
    Add it to a handler (``handler.addFilter(Fields())``) so that records of every
    logger, the application's too, get them. It never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current_fields()
        given = getattr(record, "tidings", None)
        if given:
            fields.update(given)
        record.tidings = fields
        return True


_IDS = {"event_id", "correlation_id"}  # shown by their last 8 characters


def _short(value: str) -> str:
    return value if len(value) <= 8 else "…" + value[-8:]


def coordinates(fields: dict[str, Any]) -> str:
    """The compact text form of ``fields``: ``topic/partition@offset``, then
    ``row=`` (an outbox row), ``g=`` (the group), ``e=`` and ``c=`` (the event and
    correlation ids, their last 8 characters; ``c=`` only where it differs from the
    event id, as it does in a chain of events); empty when there are none."""
    if not fields:
        return ""
    parts = []
    topic = fields.get("topic")
    if topic is not None:
        where = str(topic)
        if fields.get("partition") is not None:
            where += f"/{fields['partition']}"
        if fields.get("offset") is not None:
            where += f"@{fields['offset']}"
        parts.append(where)
    for key, label in (
        ("outbox_id", "row"),
        ("group", "g"),
        ("event_id", "e"),
        ("correlation_id", "c"),
    ):
        value = fields.get(key)
        if key == "correlation_id" and value == fields.get("event_id"):
            continue  # the event began its chain: the same id twice says nothing
        if value is not None:
            parts.append(f"{label}={_short(str(value)) if key in _IDS else value}")
    return f" [{' '.join(parts)}]" if parts else ""


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE [coordinates]``, the look of ``tidings`` commands,
    with the coordinates of :class:`Fields` appended where there are any."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record) + coordinates(getattr(record, "tidings", None) or {})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC), ``level``, ``logger``,
    ``message``, the fields of :class:`Fields`, then ``exception`` and ``stack`` when
    the record has them. A field that is not JSON is written as its ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in (getattr(record, "tidings", None) or {}).items():
            line.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (replaced by its next call)."""


def configure(
    format: str = "text",
    level: str | int = "INFO",
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Log to ``stream`` (default stderr) from the root logger at ``level``, each line
    with the event's coordinates (:class:`Fields`), as ``format``: ``"text"`` or
    ``"json"``. A handler installed by an earlier call is replaced; other handlers
    are left alone. Returns the handler. Raises :class:`~tidings.errors.ConfigError`
    for an unknown format or level."""
    if format not in FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(FORMATS)}, not {format!r}")
    if isinstance(level, str):
        name = level.upper()
        if not isinstance(logging.getLevelName(name), int):
            raise ConfigError(
                f"log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {level!r}"
            )
        level = name
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.addFilter(Fields())
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def set_up_elsewhere() -> bool:
    """Whether the root logger has a handler :func:`configure` did not install (then
    a command leaves the process's logging as it is, as ``logging.basicConfig`` does)."""
    return any(not isinstance(h, _Handler) for h in logging.getLogger().handlers)
