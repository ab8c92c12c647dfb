"""Publishing from the command line: lines of JSON to events, appended."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from tidings.admin.checking import PublishCheck
from tidings.admin.positions import topic_info
from tidings.codec import encode, from_dict
from tidings.envelope import Event, validate_type
from tidings.errors import (
    ConfigError,
    DecodeError,
    EventError,
    TopicNotFound,
)
from tidings.transport import (
    Transport,
    check_topic_name,
)

if TYPE_CHECKING:
    from tidings.app import Tidings


CLI_SOURCE = "tidings-cli"
"""The ``source`` (service name) of the events the ``tidings`` command publishes."""
# The short form of a line on stdin; any other key is a typo, not an extension.
SHORT_FORM_KEYS = frozenset({"type", "data", "subject", "correlationid", "dataversion"})

# -- publish ----------------------------------------------------------------------


def build_event(
    app: Tidings,
    event_type: str,
    data: Any,
    *,
    subject: str | None = None,
    correlation_id: str | None = None,
    version: int | None = None,
    check: PublishCheck | None = None,
) -> Event:
    """An event from the app's service, checked against the app's size limit and, with
    ``check``, the log's schema registry (its ``dataversion`` and subject completed)."""
    validate_type(event_type)
    if check is not None:
        version, subject = check.check(event_type, data, subject=subject, version=version)
    event = app.build(
        data, type=event_type, version=version, subject=subject, correlation_id=correlation_id
    )
    encode(event, app.max_event_bytes)  # EventTooLarge now, not half-way through a batch
    return event


def publish_line(event: Event) -> str | None:
    """The short-form line of ``event`` that :func:`parse_publish_lines` reads back (a
    new event of the same type, data, subject, correlation and version): what an
    operator copies to publish it again with ``tidings publish``. None for binary data,
    which the short form cannot carry."""
    whole = orjson.loads(encode(event, 1 << 30))
    if "data" not in whole:
        return None
    doc: dict[str, Any] = {"type": event.type, "data": whole["data"]}
    if event.subject is not None:
        doc["subject"] = event.subject
    if event.correlationid is not None:
        doc["correlationid"] = event.correlationid
    if event.dataversion is not None:
        doc["dataversion"] = event.dataversion
    return orjson.dumps(doc).decode()


def parse_publish_lines(
    lines: Iterable[str | bytes],
    app: Tidings,
    *,
    subject: str | None = None,
    correlation_id: str | None = None,
    version: int | None = None,
    check: PublishCheck | None = None,
) -> list[Event]:
    """Events from JSON lines, every one validated; blank lines are skipped.

    A line with ``specversion`` is a CloudEvents structured-mode event, published as it
    is (its id, source and time kept: ``tidings tail --json`` output can be fed back).
    Any other line is ``{"type": ..., "data": ...}`` with optional ``subject``,
    ``correlationid`` and ``dataversion`` (defaulting to ``subject``/``correlation_id``/
    ``version`` here), and becomes an event of the app's service. With ``check``, each
    is checked against the log's schema registry (:class:`PublishCheck`; an event given
    whole is only checked). An error names the line.
    """
    events = []
    defaults = _Defaults(subject, correlation_id, version, check)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(_event_from_line(line, app, defaults))
        except (EventError, ConfigError) as exc:
            raise type(exc)(f"stdin line {number}: {exc}") from None
    if not events:
        raise ConfigError(
            'no events on stdin: write one JSON object per line, e.g. {"type": '
            '"task.created", "data": {"id": 1}}, or give TYPE and --data'
        )
    return events


@dataclass(frozen=True, slots=True)
class _Defaults:
    """What a short-form line does not say, and the check of every line."""

    subject: str | None
    correlation_id: str | None
    version: int | None
    check: PublishCheck | None


def _event_from_line(line: str | bytes, app: Tidings, defaults: _Defaults) -> Event:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a JSON object, got {type(doc).__name__}")
    event_type = doc.get("type")
    if isinstance(event_type, str):
        validate_type(event_type)  # its own message, for either form
    if "specversion" in doc:
        event = from_dict(doc)
        if defaults.check is not None:  # checked with its own attributes, kept as it is
            defaults.check.check(
                event.type, event.data, subject=event.subject, version=event.dataversion
            )
        encode(event, app.max_event_bytes)
        return event
    unknown = sorted(set(doc) - SHORT_FORM_KEYS)
    if unknown:
        raise DecodeError(
            f"unknown key(s) {', '.join(unknown)}: a line is a CloudEvents event (with "
            "specversion) or has type, data and optionally subject, correlationid and "
            "dataversion"
        )
    missing = [k for k in ("type", "data") if k not in doc]
    if missing:
        raise DecodeError(
            f"missing {' and '.join(repr(k) for k in missing)}; write e.g. "
            '{"type": "task.created", "data": {"id": 1}} (data may be null)'
        )
    for name in ("type", "subject", "correlationid"):
        if name in doc and not isinstance(doc[name], str):
            raise DecodeError(f"{name!r} must be a string, got {doc[name]!r:.80}")
    version = doc.get("dataversion", defaults.version)
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 1
    ):
        raise DecodeError(f"'dataversion' must be an integer >= 1, got {version!r:.80}")
    return build_event(
        app,
        doc["type"],
        doc["data"],
        subject=doc.get("subject", defaults.subject),
        correlation_id=doc.get("correlationid", defaults.correlation_id),
        version=version,
        check=defaults.check,
    )


async def check_publish_topic(transport: Transport, topic: str, *, create: bool = False) -> None:
    """ConfigError for an invalid name; TopicNotFound for a missing topic unless
    ``create``: a typo must not quietly start a new topic."""
    check_topic_name(topic)
    if not create:
        try:
            await topic_info(transport, topic)
        except TopicNotFound as exc:
            raise TopicNotFound(f"{exc}, or publish with --create to create it") from None


async def publish(
    app: Tidings,
    topic: str,
    events: list[Event],
    *,
    create: bool = False,
    deliver_at: datetime | None = None,
) -> None:
    """Append ``events`` to ``topic`` in one batch (see :func:`check_publish_topic`),
    or, with ``deliver_at``, schedule them for then. Nothing is appended unless every
    event was built (and checked) first: build them all, then publish."""
    await check_publish_topic(app.transport, topic, create=create)
    await app.publish_events(topic, events, deliver_at=deliver_at)
