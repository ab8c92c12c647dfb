"""The one error hierarchy of tidings.

Native errors (sqlite3, Kafka, NATS) are translated into these at the transport
boundary, so user code catches tidings errors only::

    TidingsError
    ├── ConfigError            a URL, option or registration is wrong
    ├── EventError             an event cannot be built, encoded or decoded
    │   ├── InvalidEventType   the type is not lower-case ``domain.action``
    │   ├── EventTooLarge      the encoded event is over the configured limit
    │   ├── DecodeError        bytes are not a valid tidings/CloudEvents event
    │   └── UnknownEventType   no payload model is registered for (type, version)
    ├── TransportError         the log engine failed or refused
    │   ├── TopicNotFound      the topic does not exist
    │   ├── GroupNotFound      the group has neither committed offsets nor members
    │   └── GroupBusy          an operation needs a group without live members

Importable from ``tidings.errors`` only (catch their parents):

- :class:`RecordTooLarge`: bytes to decode over the limit (an ``EventTooLarge`` and a
  ``DecodeError``);
- :class:`UnsupportedVersion`: an ``UnknownEventType`` whose ``dataversion`` is newer
  than every registered model of its type;
- :class:`InvalidPayload`: an ``EventError``, a payload published as a registered type
  does not match that type's model (nothing was published);
- :class:`SchemaIncompatible`: a ``ConfigError``, an app's payload contracts break
  the schema registry (its message is the report ``tidings schema check`` prints);
- :class:`RecordRejected`: a ``TransportError``, the log refused a record for good;
- :class:`ConsumerDead`: a ``TransportError``, a consumer cannot go on;
- :class:`RetriesExhausted`: a ``TidingsError``, a handler failed and its retry policy
  gave up (what the dead-letter middleware catches);
- :class:`Parked`: a ``TidingsError``, why an event of a sequenced group waits in the
  dead letters behind an earlier one of its key;
- :class:`ConcurrencyConflict`: a ``TidingsError``, an aggregate's stream moved on since
  it was loaded (reload and retry);
- :class:`AggregateNotFound`: a ``TidingsError`` and a ``LookupError``, no stream has
  that aggregate id;
- :class:`RebuildRunning`: a ``TidingsError``, a projection's rebuild was asked for
  while another one of it runs;
- :class:`HandlerTimeout`: a ``TidingsError`` and a ``TimeoutError``, a handler call
  ran past its subscriber's ``timeout=`` (a failed attempt, retried or dead-lettered);
- :class:`RateLimited`: a ``TidingsError``, raised by a handler whose endpoint answered
  429: its group pauses ``retry_after`` seconds, then the call is made again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AggregateNotFound",
    "ConcurrencyConflict",
    "ConfigError",
    "ConsumerDead",
    "DecodeError",
    "EventError",
    "EventTooLarge",
    "GroupBusy",
    "GroupNotFound",
    "HandlerTimeout",
    "InvalidEventType",
    "InvalidPayload",
    "Parked",
    "RateLimited",
    "RebuildRunning",
    "RecordRejected",
    "RecordTooLarge",
    "RetriesExhausted",
    "SchemaIncompatible",
    "TidingsError",
    "TopicNotFound",
    "TransportError",
    "UnknownEventType",
    "UnsupportedVersion",
]


class TidingsError(Exception):
    """Base of every error tidings raises on purpose."""


class ConfigError(TidingsError, ValueError):
    """A URL, option or registration is wrong; the message names it and a fix."""


class SchemaIncompatible(ConfigError):
    """An app's payload contracts break the schema registry: a new version incompatible
    under its type's mode, or a registered version offered with another schema. The
    message is the report ``tidings schema check`` prints; ``report`` holds it alone."""

    def __init__(self, report: str) -> None:
        self.report = report
        super().__init__(report)


class EventError(TidingsError, ValueError):
    """An event cannot be built, encoded or decoded."""


class InvalidEventType(EventError):
    """An event type is not lower-case ``domain.action``."""


class InvalidPayload(EventError):
    """A payload published as a registered type does not match the type's model:
    refused before anything is written (decision 0052). ``errors`` are pydantic's, one
    dict per wrong field; ``item`` is the payload's place in a batch (from 0), or None."""

    def __init__(
        self, message: str, errors: Sequence[Mapping[str, Any]] = (), item: int | None = None
    ) -> None:
        self.errors = list(errors)
        self.item = item
        super().__init__(message)

    def at(self, item: int) -> InvalidPayload:
        """This refusal, as payload ``item`` of a batch none of which was published."""
        return InvalidPayload(
            f"payload {item} of the batch (counting from 0): {self}; nothing of the batch "
            "was published",
            self.errors,
            item,
        )


class EventTooLarge(EventError):
    """The encoded event is larger than the configured limit."""


class DecodeError(EventError):
    """Bytes that are not a valid event. Carries the reason for a dead letter."""


class RecordTooLarge(EventTooLarge, DecodeError):
    """Bytes handed to :func:`~tidings.codec.decode` are over its size limit.

    Both an :class:`EventTooLarge` (what is wrong) and a :class:`DecodeError` (what
    ``decode`` raises, so ``except DecodeError`` still catches every decode failure).
    """


class UnknownEventType(EventError):
    """No payload model is registered for an event's (type, version)."""


class UnsupportedVersion(UnknownEventType):
    """An event's ``dataversion`` is newer than every model registered for its type:
    the producer runs a newer contract than this service knows."""


def undecodable(exc: BaseException) -> bool:
    """Whether ``exc`` says that the delivered event cannot be decoded (its bytes, or
    its payload for the handler: :class:`DecodeError`, :class:`UnknownEventType`):
    poison, never retried. Any other error a handler raises, an
    :class:`EventError` about an event it built itself included (its own publish
    refused: :class:`InvalidPayload`, :class:`EventTooLarge`), is its call's failure,
    retried and then dead-lettered as ``failed``."""
    return isinstance(exc, DecodeError | UnknownEventType)


class RetriesExhausted(TidingsError):
    """A handler failed and its retry policy gave up (``__cause__`` is the last error).

    Raised by the :class:`~tidings.middleware.Retry` middleware for the dead-letter
    middleware outside it; ``error`` is the last attempt's exception.
    """

    def __init__(
        self, handler: str, what: str, error: BaseException, *, attempts: int, retryable: bool
    ) -> None:
        self.attempts = attempts
        self.error = error
        self.retryable = retryable
        why = f"after {attempts} attempt(s)" if retryable else "(not retryable)"
        super().__init__(f"handler {handler} gave up on {what} {why}: {error!r}")


class Parked(TidingsError):
    """Why an event of a sequenced group waits in the dead letters: an earlier event of
    its key is there (``entry`` names it; the message says where it is)."""

    def __init__(self, entry: str, where: str) -> None:
        self.entry = entry
        super().__init__(f"parked behind dead letter {entry} ({where})")


class ConcurrencyConflict(TidingsError):
    """Saving an aggregate found its stream moved on since it was loaded: another
    writer saved events at the versions this save wanted. Nothing was written; reload
    the aggregate, apply the change again and save (``AggregateStore.update`` does).
    ``expected``: the version the aggregate was loaded at; ``actual``: the stream's
    version when the conflict was seen."""

    def __init__(self, aggregate_id: str, expected: int, actual: int) -> None:
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"aggregate {aggregate_id!r} was loaded at version {expected} but its stream "
            f"is at version {actual}: another writer saved first; nothing was written. "
            "Reload it, apply the change again and save (AggregateStore.update retries so)"
        )


class AggregateNotFound(TidingsError, LookupError):
    """No stored stream has this aggregate id."""


class RebuildRunning(TidingsError):
    """A rebuild of a projection was asked for while another one of it runs (the
    message says since when and where); one rebuild of a projection runs at a time."""


class HandlerTimeout(TidingsError, TimeoutError):
    """A handler call ran past its subscriber's ``timeout=``: an async handler was
    cancelled, a plain ``def`` one left running in its thread (its result discarded).
    The attempt failed: the retry policy and the dead letters treat it as any error."""

    def __init__(self, handler: str, what: str, timeout: float, *, abandoned: bool) -> None:
        self.timeout = timeout
        self.abandoned = abandoned
        how = "; left running, its result discarded" if abandoned else ""
        super().__init__(f"handler {handler} ran past its timeout ({timeout:g} s) on {what}{how}")


class RateLimited(TidingsError):
    """Raised by a handler whose endpoint refused the call for now (an HTTP 429): the
    group's rate limit pauses ``retry_after`` seconds, then the call is made again,
    without counting as a failed attempt (docs/agents.md, "Rate limits and 429s")."""

    def __init__(self, retry_after: float = 1.0, message: str = "") -> None:
        self.retry_after = retry_after
        super().__init__(message or f"rate limited; retry after {retry_after:g} s")


class TransportError(TidingsError):
    """The log engine failed or refused an operation."""


class TopicNotFound(TransportError, LookupError):
    """The named topic does not exist."""


class GroupNotFound(TransportError, LookupError):
    """The named consumer group has neither committed offsets nor live members."""


class GroupBusy(TransportError):
    """The operation needs a group with no live members."""


class RecordRejected(TransportError):
    """The log refused a record for good (e.g. larger than the broker accepts);
    sending it again fails the same way."""


class ConsumerDead(TransportError):
    """A consumer cannot go on (its client's thread died); the worker ends with this
    error so that its supervisor sees it."""
