"""Native failures of the NATS adapter as tidings errors, in one place.

Whatever nats-py raises (a timeout, a closed connection, no responders, a payload over
the server's limit, a refused credential or TLS handshake) and whatever JetStream
answers with an error (``{"code", "err_code", "description"}``, or a status header)
becomes a :mod:`tidings.errors` error in :func:`translate`, at the adapter's boundary:
its callers say what was being done, and raise what it returns.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from tidings.errors import RecordRejected, TidingsError, TopicNotFound, TransportError

__all__ = [
    "CONSUMER_NOT_FOUND",
    "STREAM_NAME_IN_USE",
    "STREAM_NOT_FOUND",
    "WRONG_LAST_SEQUENCE",
    "NatsApiError",
    "NoAnswer",
    "translate",
]

# JetStream API error codes (``err_code``) the adapter acts on.
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
STREAM_NAME_IN_USE = 10058
MESSAGE_TOO_LARGE = 10054  # over the stream's max_msg_size: refused for good
# A compare-and-set that named the wrong last sequence: 10071, or 10164 on a replicated
# stream when the write lost to one of the same key still in flight (the 3-node soak).
WRONG_LAST_SEQUENCE = (10071, 10164)

_CREDENTIALS = "check the URL's user:password, token, creds or nkey"
_TLS = (
    "check the URL's tls_ca (the CA that signed the server's certificate), tls_hostname "
    "(a name that certificate holds) and tls_cert/tls_key (a client certificate the "
    "server trusts, if it asks for one)"
)


class NatsApiError(TransportError):
    """A JetStream API request was answered with an error."""

    def __init__(self, message: str, code: int, err_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code


class NoAnswer(TransportError):
    """A request got no answer in time, or no server took its subject: a replicated
    stream between two leaders, a node restarting, a server too busy to answer. Worth
    trying again, unlike an error the server answered with."""


def translate(
    cause: BaseException | Mapping[str, Any],
    url: str,
    doing: str,
    *,
    hint: str = "",
    within: float | None = None,
    topic: str | None = None,
) -> TidingsError:
    """The tidings error for a native failure, to raise (``from`` the cause).

    ``cause`` is what nats-py raised, or a JetStream error answer (or a status header
    as ``{"code": 503, "description": ...}``); ``doing`` says what failed, as a clause
    after the URL (``"direct get on S failed"``); ``hint`` what to do about it, unless
    the cause has a remedy of its own (credentials, TLS); ``within`` how long a
    timeout waited; ``topic`` the topic a missing stream stands for (TopicNotFound).
    The message is ``<url>: <doing> (<the cause in its own words>); <hint>``.
    """
    if isinstance(cause, TidingsError):
        return cause  # translated already
    kind: type[TransportError] = TransportError
    if isinstance(cause, Mapping):  # an answer of the server
        code, err_code = int(cause.get("code") or 0), int(cause.get("err_code") or 0)
        if err_code == STREAM_NOT_FOUND and topic is not None:
            return TopicNotFound(f"topic {topic!r} does not exist in {url}")
        detail = str(cause.get("description") or "")
        if code == 503 and not err_code:
            detail = "no responders: no stream or JetStream service takes the subject"
            return NoAnswer(_message(url, doing, detail, hint))
        if err_code:
            detail = f"{detail or 'error'}; JetStream error {err_code}"
        elif code:
            detail = f"{detail or 'error'}; status {code}"
        if err_code == MESSAGE_TOO_LARGE:
            return RecordRejected(_message(url, doing, detail, hint))
        return NatsApiError(_message(url, doing, detail, hint), code, err_code)
    names = {c.__name__ for c in type(cause).__mro__}  # nats-py is imported lazily
    if "authorization violation" in str(cause).lower():
        return TransportError(
            f"{url}: the server refused the credentials ({cause}); {_CREDENTIALS}"
        )
    if isinstance(cause, ssl.SSLError):
        return TransportError(f"{url}: the TLS handshake failed ({cause}); {_TLS}")
    if isinstance(cause, TimeoutError):
        kind = NoAnswer
        detail = f"no answer in {within:g}s" if within is not None else str(cause)
    elif "NoRespondersError" in names:
        kind = NoAnswer
        detail = "no responders: no stream or JetStream service takes the subject"
    else:
        text = str(cause)
        detail = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    if "MaxPayloadError" in names:  # over the server's max_payload: refused for good
        kind = RecordRejected
    return kind(_message(url, doing, detail, hint))


def _message(url: str, doing: str, detail: str, hint: str) -> str:
    return f"{url}: {doing}" + (f" ({detail})" if detail else "") + (f"; {hint}" if hint else "")
