"""The Kafka adapter's boundary for errors: what confluent-kafka raises or reports
(``KafkaException``, a ``KafkaError`` in a delivery report or a message, a timeout of
one of its futures, a full local queue) becomes an error of ``tidings.errors`` in
:func:`translate`, and nowhere else. The other functions here only classify native
errors (is a commit refusal worth trying again, does a topic exist already) or check
for the client, but :func:`unreachable`, which puts what :func:`translate` made of a
start no broker answered together with what to check. The adapter's own refusals (a
record over the producer's size limit, a group with members, a topic the broker's
metadata does not list, a join that never came) are raised where they are decided.

confluent-kafka is an optional dependency: it is imported where it is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from tidings.errors import (
    ConfigError,
    ConsumerDead,
    RecordRejected,
    TopicNotFound,
    TransportError,
)

__all__ = [
    "already_exists",
    "fenced",
    "in_thread",
    "member_warning",
    "not_started",
    "require_client",
    "translate",
    "unreachable",
]

T = TypeVar("T")


def require_client() -> None:
    """ConfigError naming the extra to install if confluent-kafka is missing."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the kafka:// transport needs confluent-kafka: install `tidings[kafka]`"
        ) from None


def not_started(url: str) -> TransportError:
    return TransportError(f"{url}: the transport is not started (await start())")


def translate(
    error: object, what: str, *, client: str | None = None, dead: bool = False
) -> TransportError | ConfigError:
    """The tidings error for ``error`` (an exception, or a bare ``KafkaError`` from a
    delivery report or a message) met while doing ``what``, which starts its message.

    - ``client``: ``error`` came from creating that librdkafka client ("producer",
      "consumer"): librdkafka refusing a setting of the URL is a ConfigError;
    - ``dead``: ``error`` ended a consumer's polling thread: ConsumerDead (``what``
      names the consumer), unless it is a ConfigError, the caller's to fix.

    Errors of tidings are returned as they are (but for ``dead``).
    """
    if dead:
        if isinstance(error, ConfigError):
            return error
        gone = ConsumerDead(f"{what} cannot go on: its polling thread stopped: {error!r}")
        gone.__cause__ = error if isinstance(error, BaseException) else None
        return gone
    if isinstance(error, TransportError | ConfigError):
        return error
    from confluent_kafka import KafkaError

    err = error if isinstance(error, KafkaError) else _carried(error)
    if err is None:
        if isinstance(error, TimeoutError):  # a future's result(timeout) ran out
            return TransportError(f"{what}: no answer from the broker in time")
        if isinstance(error, BufferError):  # the producer's local queue stayed full
            return TransportError(f"{what}: the Kafka producer's queue stayed full ({error})")
        return TransportError(f"{what}: {error}")
    code = err.code()
    if client is not None and code == KafkaError._INVALID_ARG:
        return ConfigError(
            f"librdkafka refused the {client} settings of the kafka:// URL: {err.str()}; "
            f"check the {client}.<property> options against librdkafka's CONFIGURATION.md"
        )
    # A record (or batch) the producer or broker refuses for its size: sending it again
    # fails alike. (librdkafka's own refusal at produce is MSG_SIZE_TOO_LARGE too.)
    if code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE):
        return RecordRejected(
            f"{what}: refused as too large ({err.str()}); sending it again fails alike"
        )
    if code in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
    ):
        return TopicNotFound(f"{what}: {err.str()}")
    return TransportError(f"{what}: {err.str()} ({err.name()})")


# What to check when no broker answers, as the NATS adapter says what to check.
UNREACHABLE_HINT = (
    "check the host and port of each broker in the URL, that the broker's advertised "
    "listener (advertised.listeners) names an address this host can reach, and the URL's "
    "security_protocol (TLS: SSL or SASL_SSL, with ssl_cafile) and SASL settings "
    "(sasl_mechanism, user and password) against the listener's; connect_timeout_ms= "
    "waits longer"
)


def unreachable(error: object, url: str, within: float, seen: str | None) -> TransportError:
    """The error of a start at which no broker of ``url`` answered within ``within``
    seconds: ``error`` (what the metadata request raised) translated, what librdkafka
    logged last at warning level or above (``seen``), and what to check."""
    cause = translate(error, "no answer to a metadata request")
    detail = f"{cause}; librdkafka: {seen}" if seen else str(cause)
    return TransportError(
        f"{url}: no Kafka broker answered within {within:g}s ({detail}); {UNREACHABLE_HINT}"
    )


async def in_thread(fn: Callable[[], T], what: str) -> T:
    """``fn()`` (a blocking librdkafka call) waited for in a thread, translated."""
    try:
        return await asyncio.to_thread(fn)
    except (TransportError, ConfigError):
        raise
    except Exception as exc:
        raise translate(exc, what) from exc


def _carried(exc: object) -> Any:
    """The ``KafkaError`` a ``KafkaException`` (or another exception) carries, or None."""
    from confluent_kafka import KafkaError

    err = exc.args[0] if isinstance(exc, BaseException) and exc.args else None
    return err if isinstance(err, KafkaError) else None


def _code(exc: BaseException) -> Any:
    err = _carried(exc)
    return None if err is None else err.code()


def fenced(exc: BaseException) -> bool:
    """Whether a commit was refused for a stale generation or a rebalance under way:
    worth committing again once the group has settled."""
    from confluent_kafka import KafkaError

    return _code(exc) in (
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._STATE,
        KafkaError._ASSIGNMENT_LOST,
    )


def member_warning(err: Any) -> str:
    """What a group member logs of a non-fatal ``KafkaError``: its text, and what to do
    where that is known."""
    from confluent_kafka import KafkaError

    if err.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL:
        return (
            f"{err.str()}: members of this group use another assignment strategy; tidings "
            "before issue 17 used cooperative-sticky, now range: stop the older workers of "
            "the group before starting these (docs/kafka.md, decision 0011)"
        )
    return str(err.str())


def already_exists(exc: BaseException) -> bool:
    """Whether creating a topic failed because it exists already."""
    from confluent_kafka import KafkaError

    return bool(_code(exc) == KafkaError.TOPIC_ALREADY_EXISTS)
