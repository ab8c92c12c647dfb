"""Native failures of the NATS adapter as tidings errors: ``translate``, the one place
where nats-py's exceptions, JetStream's error answers and timeouts become them."""

from __future__ import annotations

import ssl

import nats.errors
import orjson
import pytest

from tidings.errors import RecordRejected, TopicNotFound, TransportError
from tidings.transports.nats import NatsApiError, NatsTransport
from tidings.transports.nats.errors import NoAnswer, translate

URL = "nats://127.0.0.1:4222"


def test_a_tidings_error_is_already_translated() -> None:
    error = TransportError("as it was")
    assert translate(error, URL, "anything failed") is error


def test_a_jetstream_error_answer_keeps_its_codes_and_words() -> None:
    answer = {"code": 400, "err_code": 10071, "description": "wrong last sequence: 3"}
    error = translate(answer, URL, "groups bucket write of 'g.l.t.0' failed")
    assert isinstance(error, NatsApiError)
    assert (error.code, error.err_code) == (400, 10071)
    assert str(error) == (
        f"{URL}: groups bucket write of 'g.l.t.0' failed "
        "(wrong last sequence: 3; JetStream error 10071)"
    )


def test_a_missing_stream_is_a_missing_topic_when_it_stands_for_one() -> None:
    answer = {"code": 404, "err_code": 10059, "description": "stream not found"}
    error = translate(answer, URL, "JetStream request STREAM.INFO.t failed", topic="t")
    assert isinstance(error, TopicNotFound)
    assert str(error) == f"topic 't' does not exist in {URL}"
    other = translate(answer, URL, "JetStream request STREAM.INFO.t failed")
    assert isinstance(other, NatsApiError)
    assert other.err_code == 10059


@pytest.mark.parametrize(
    "cause",
    [
        {"code": 400, "err_code": 10054, "description": "message size exceeds maximum allowed"},
        nats.errors.MaxPayloadError(),
    ],
)
def test_a_record_over_the_limits_is_rejected_for_good(cause: object) -> None:
    error = translate(cause, URL, "publish to 't' failed")  # type: ignore[arg-type]
    assert isinstance(error, RecordRejected)
    assert str(error).startswith(f"{URL}: publish to 't' failed (")


@pytest.mark.parametrize("cause", [{"code": 503}, nats.errors.NoRespondersError()])
def test_no_responders_says_nothing_takes_the_subject(cause: object) -> None:
    error = translate(cause, URL, "JetStream request STREAM.INFO.t failed")  # type: ignore[arg-type]
    assert type(error) is NoAnswer  # worth trying again
    assert "no responders: no stream or JetStream service takes the subject" in str(error)


def test_a_timeout_says_how_long_it_waited() -> None:
    error = translate(nats.errors.TimeoutError(), URL, "direct get on t failed", within=10)
    assert type(error) is NoAnswer  # worth trying again
    assert str(error) == f"{URL}: direct get on t failed (no answer in 10s)"


def test_a_timeout_already_told_adds_only_the_hint() -> None:
    error = translate(
        TimeoutError(),
        URL,
        "3 of 20 records to 't' were not acknowledged in 2s",
        hint="appending them again is safe (deduplicated by event id)",
    )
    assert str(error) == (
        f"{URL}: 3 of 20 records to 't' were not acknowledged in 2s; appending them again "
        "is safe (deduplicated by event id)"
    )


def test_other_failures_are_named_with_their_type() -> None:
    error = translate(
        nats.errors.ConnectionClosedError(), URL, "publish to 't' failed", hint="try again"
    )
    assert type(error) is TransportError
    assert str(error) == (
        f"{URL}: publish to 't' failed (ConnectionClosedError: nats: connection closed); try again"
    )


def test_refused_credentials_and_tls_failures_have_remedies_of_their_own() -> None:
    doing, hint = "cannot connect to NATS within 6s", "is nats-server running?"
    refused = translate(nats.errors.Error("'Authorization Violation'"), URL, doing, hint=hint)
    assert str(refused).startswith(f"{URL}: the server refused the credentials (")
    assert "check the URL's user:password, token, creds or nkey" in str(refused)
    tls = translate(ssl.SSLError(1, "certificate verify failed"), URL, doing, hint=hint)
    assert str(tls).startswith(f"{URL}: the TLS handshake failed (")
    assert "check the URL's tls_ca" in str(tls)
    assert hint not in str(refused) + str(tls)


@pytest.mark.integration
async def test_appending_a_record_over_the_servers_max_payload_is_rejected(nats_url: str) -> None:
    transport = NatsTransport(nats_url + "&partitions=1")
    await transport.start()
    try:
        await transport.create_topic("t")
        small = orjson.dumps({"specversion": "1.0", "id": "e1", "type": "t.made", "data": 1})
        with pytest.raises(RecordRejected, match="publish to 't' failed"):
            await transport.append("t", [("k", b"x" * (2 * 1024 * 1024))])
        assert await transport.append("t", [("k", small)]) == [(0, 0)]
    finally:
        await transport.close()
