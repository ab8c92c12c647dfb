"""The CloudEvents Kafka binding (binary and structured mode) at the transport's edge."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.codec import DEFAULT_MAX_EVENT_BYTES, decode, encode, to_dict
from tidings.codec.binary import (
    _structured,
    _structured_fast,
    event_to_kafka,
    from_binary,
    from_kafka,
    to_kafka,
)
from tidings.envelope import Event
from tidings.errors import DecodeError, EventError, EventTooLarge


def _events() -> list[Event]:
    return [
        Event(type="task.created", source="//api", data={"id": 1, "title": "é"}),
        Event(
            type="task.created",
            source="//api",
            data=[1, "two", None],
            subject="s",
            dataversion=3,
            correlationid="c",
            causationid="d",
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            partitionkey="task-1",
            dataschema="https://example.com/s.json",
            extensions={"tenant": "acme"},
        ),
        Event(type="task.deleted", source="//api"),  # no data
        Event(type="task.deleted", source="//api", datacontenttype=None, data="x"),
        Event(type="blob.stored", source="//s", data=b"\x00\xff", datacontenttype="image/png"),
        # Not representable in binary mode without loss: written structured instead.
        Event(type="blob.stored", source="//s", data=b"\x00\xff"),  # bytes "as JSON"
        Event(type="note.added", source="//s", data="hi", datacontenttype="text/plain"),
        Event(type="note.added", source="//s", data=1, extensions={"count": 2, "ok": True}),
    ]


def _same(a: Event, b: Event) -> bool:
    return orjson.dumps(to_dict(a)) == orjson.dumps(to_dict(b))


@pytest.mark.parametrize("fmt", ["binary", "structured"])
@pytest.mark.parametrize("event", _events(), ids=lambda e: e.type)
def test_every_event_round_trips_in_both_modes(event: Event, fmt: str) -> None:
    raw = encode(event)
    value, headers = to_kafka(raw, fmt)
    # The transport gives back the bytes it was given, in either mode.
    assert from_kafka(value, headers) == raw
    # Against decode(raw), not event: the codec itself fills defaults in on decode.
    assert _same(decode(from_kafka(value, headers)), decode(raw))


def test_the_usual_event_goes_binary_and_comes_back_byte_for_byte() -> None:
    # dataversion is a JSON number, and datacontenttype sits among the attributes:
    # binary mode must rebuild both where they were.
    event = Event(
        type="task.created",
        source="//api",
        data={"title": "é", "n": 1.5},
        subject="s",
        datacontenttype="application/json",
        correlationid="c",
        dataversion=3,
    )
    raw = encode(event)
    value, headers = to_kafka(raw)
    assert ("content-type", b"application/json") in headers  # binary mode
    assert from_kafka(value, headers) == raw


def test_json_that_binary_mode_would_respell_is_written_structured() -> None:
    raw = b'{"specversion": "1.0", "id": "1", "source": "//s", "type": "a.b", "data": {}}'
    value, headers = to_kafka(raw)
    assert (value, headers) == (raw, [("content-type", b"application/cloudevents+json")])
    assert from_kafka(value, headers) == raw


def test_binary_mode_puts_attributes_in_headers_and_data_in_the_value() -> None:
    event = Event(type="task.created", source="//api", data={"a": 1}, dataversion=2)
    value, headers = to_kafka(encode(event))
    h = dict(headers)
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_type"] == b"task.created"
    assert h["ce_id"] == event.id.encode()
    assert h["ce_dataversion"] == b"2"
    assert h["content-type"] == b"application/json"
    assert "ce_time" in h
    assert value == b'{"a":1}'


def test_binary_bytes_data_is_the_raw_value() -> None:
    event = Event(type="blob.stored", source="//s", data=b"\x00\xff", datacontenttype="image/png")
    value, headers = to_kafka(encode(event))
    assert value == b"\x00\xff"
    assert dict(headers)["content-type"] == b"image/png"


def test_structured_mode_keeps_the_document_as_the_value() -> None:
    raw = encode(Event(type="task.created", source="//api", data={"a": 1}))
    value, headers = to_kafka(raw, "structured")
    assert value == raw
    assert headers == [("content-type", b"application/cloudevents+json")]


def test_a_record_without_ce_headers_is_read_as_structured() -> None:
    raw = encode(Event(type="task.created", source="//api"))
    assert from_kafka(raw, None) == raw
    assert from_kafka(raw, [("other", b"x")]) == raw
    assert from_kafka(None, None) == b""


def test_values_that_are_not_events_are_stored_as_given() -> None:
    assert to_kafka(b"not json") == (
        b"not json",
        [("content-type", b"application/cloudevents+json")],
    )
    assert to_kafka(b"[1]")[0] == b"[1]"


def test_a_foreign_binary_record_is_read() -> None:
    # As the CloudEvents SDKs' Kafka binding writes it.
    headers: list[tuple[str, Any]] = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"1"),
        ("ce_source", b"//other"),
        ("ce_type", b"order.placed"),
        ("ce_time", b"2024-01-02T03:04:05Z"),
        ("content-type", b"application/json; charset=utf-8"),
        ("traceparent-unrelated", b"ignored"),
    ]
    event = decode(from_kafka(b'{"n": 1}', headers))
    assert (event.type, event.source, event.id, event.data) == (
        "order.placed",
        "//other",
        "1",
        {"n": 1},
    )


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        ([("ce_specversion", b"1.0"), ("ce_id", b"\xff")], b"{}", "header 'ce_id' is not UTF-8"),
        ([("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_id", b"2")], b"{}", "repeated"),
        ([("ce_specversion", b"1.0"), ("ce_data", b"x")], b"{}", "reserved"),
    ],
)
def test_bad_headers_become_a_record_decode_rejects(
    headers: list[tuple[str, bytes]], value: bytes, reason: str
) -> None:
    raw = from_kafka(value, headers)
    with pytest.raises(DecodeError):
        decode(raw)
    kept = orjson.loads(raw)
    assert reason in kept["kafka_binary_mode_error"]
    assert kept["value_base64"] == "e30="  # the original value, for the dead letter


def test_binary_data_that_is_not_json_is_a_decode_error() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"1"),
        ("ce_source", b"//s"),
        ("ce_type", b"a.b"),
        ("content-type", b"application/json"),
    ]
    with pytest.raises(DecodeError):
        decode(from_kafka(b"{not json", headers))
    with pytest.raises(DecodeError):
        decode(from_kafka(b"", headers))
    with pytest.raises(DecodeError, match="required attribute 'id'"):
        decode(from_kafka(b"{}", [("ce_specversion", b"1.0")]))


@settings(max_examples=300, deadline=None)
@given(
    extensions=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True).filter(
            lambda k: k not in {"data", "id", "type", "source", "time", "specversion"}
        ),
        st.one_of(st.text(max_size=8), st.integers(-(2**53), 2**53), st.booleans()),
        max_size=3,
    ),
    data=st.one_of(
        st.none(),
        st.text(max_size=8),
        st.dictionaries(st.text(max_size=3), st.integers(-(2**53), 2**53)),
    ),
    subject=st.one_of(st.none(), st.text(max_size=8)),
)
def test_every_encoded_event_comes_back_byte_for_byte_through_binary_mode(
    extensions: dict[str, Any], data: Any, subject: str | None
) -> None:
    event = Event(type="a.b", source="//s", subject=subject, data=data, extensions=extensions)
    raw = encode(event)
    value, headers = to_kafka(raw)
    assert from_kafka(value, headers) == raw
    # The shortcuts agree with the long ways: an event straight to its record, and a
    # record put together from its bytes (the general path builds it with orjson).
    direct, direct_headers = event_to_kafka(event, DEFAULT_MAX_EVENT_BYTES)
    assert (direct, _pairs(direct_headers)) == (value, headers)
    if any(name == "ce_specversion" for name, _ in headers):  # binary mode was taken
        assert _structured(value, headers) == raw


def _pairs(headers: Any) -> list[tuple[str, bytes]]:
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


@pytest.mark.parametrize("fmt", ["binary", "structured"])
@pytest.mark.parametrize("event", _events(), ids=lambda e: e.type)
def test_an_event_converted_directly_is_the_record_of_its_encoding(event: Event, fmt: str) -> None:
    value, headers = event_to_kafka(event, DEFAULT_MAX_EVENT_BYTES, fmt)
    assert (value, _pairs(headers)) == to_kafka(encode(event), fmt)


@pytest.mark.parametrize("limit", [1024, 2040, 2060, 2100, 4096])
def test_an_event_converted_directly_meets_the_size_limit_as_encode_does(limit: int) -> None:
    event = Event(type="a.b", source="//s", data={"x": "y" * 2000}, subject='"\\x01' * 5)
    try:
        expected: Any = to_kafka(encode(event, limit))
    except EventTooLarge:
        expected = EventTooLarge
    try:
        value, headers = event_to_kafka(event, limit)
        got: Any = (value, _pairs(headers))
    except EventTooLarge:
        got = EventTooLarge
    assert got == expected


def test_an_event_encode_refuses_is_refused_the_same_way_directly() -> None:
    bad = Event(type="a.b", source="//s", correlationid="\ud800")  # a lone surrogate
    with pytest.raises(EventError) as direct:
        event_to_kafka(bad, DEFAULT_MAX_EVENT_BYTES)
    with pytest.raises(EventError) as encoded:
        encode(bad)
    assert str(direct.value) == str(encoded.value)


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"{}", [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_id", b"2")]),  # repeated
        (b"{}", [("ce_specversion", b"1.0"), ("ce_id", b"\xff")]),  # not UTF-8
        (b"{}", [("ce_specversion", b"1.0"), ("ce_dataversion", b"007")]),
        (b"{}", [("ce_specversion", b"1.0"), ("ce_dataversion", b"0")]),
        (b"{}", [("ce_specversion", b"1.0"), ("ce_subject", b'say "hi"\n')]),  # escaped
        (b"abc", [("ce_specversion", b"1.0"), ("content-type", b"text/plain")]),
        (b"[1]", [("ce_specversion", b"1.0"), ("content-type", b"application/x+json")]),
        (None, [("ce_specversion", b"1.0"), ("ce_source", None)]),
        (None, [("ce_specversion", b"1.0"), ("ce_source", b"s")]),  # no data
        (b"{}", [("ce_specversion", b"1.0"), ("CE_TENANT", b"t"), ("traceparent", b"x")]),
        (b"{}", [("ce_specversion", b"1.0"), ("ce_tenant", b"t"), ("ce_tenant", b"u")]),
        (b"{}", [("ce_specversion", b"1.0"), ("ce_data", b"x")]),  # reserved
        (b"{}", [("ce_specversion", b"1.0"), ("ce_datacontenttype", b"x")]),  # reserved
        (b"{}", [("ce_specversion", b"1.0"), ("ce_tenant", b'a "b"')]),  # escaped
        (b"{}", [("ce_specversion", b"1.0"), ("ce_tenant", b"\xff")]),  # not UTF-8
        (b"{}", [("ce_specversion", b"1.0"), ("ce_tenant", b"acme"), ("ce_id", b"1")]),
    ],
)
def test_a_binary_record_reads_the_same_however_it_is_put_together(
    value: bytes | None, headers: list[tuple[str, Any]]
) -> None:
    # from_kafka puts the usual record together from its bytes; the general path with
    # orjson. Both must give the same document (or the same error document).
    assert from_kafka(value, headers) == _structured(value, headers)


def test_a_record_with_string_extensions_is_put_together_from_its_bytes() -> None:
    # A sealed event carries ``personaldata``: its records must not take the general path.
    event = Event(type="a.b", source="//s", data={"x": 1}, extensions={"personaldata": "v2"})
    value, headers = to_kafka(encode(event))
    assert ("ce_personaldata", b"v2") in headers
    assert _structured_fast(value, headers) == encode(event)


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "vendor=v1,other=x"


def test_the_trace_context_is_carried_by_both_modes_and_both_header_spellings() -> None:
    """CloudEvents' distributed tracing extension: ``traceparent`` and ``tracestate``
    (an extension attribute, :attr:`Event.tracestate`) in structured JSON, in Kafka's
    ``ce_`` headers and in the ``ce-`` headers of NATS's binary mode."""
    event = Event(
        type="task.created", source="//api", data={"id": 1},
        traceparent=TRACEPARENT, extensions={"tracestate": TRACESTATE},
    )  # fmt: skip
    assert event.tracestate == TRACESTATE
    raw = encode(event)
    doc = orjson.loads(raw)
    assert (doc["traceparent"], doc["tracestate"]) == (TRACEPARENT, TRACESTATE)
    value, headers = event_to_kafka(event, DEFAULT_MAX_EVENT_BYTES, "binary")
    assert (b"ce_tracestate", TRACESTATE.encode()) in [
        (k.encode() if isinstance(k, str) else k, v) for k, v in dict(headers).items()
    ]
    back = decode(from_kafka(value, list(dict(headers).items())))
    assert (back.traceparent, back.tracestate) == (TRACEPARENT, TRACESTATE)
    nats_headers = [
        ("ce-specversion", "1.0"), ("ce-id", "e1"), ("ce-source", "//other"),
        ("ce-type", "task.created"), ("content-type", "application/json"),
        ("ce-traceparent", TRACEPARENT), ("ce-tracestate", TRACESTATE),
    ]  # fmt: skip
    other = decode(from_binary(b'{"id": 1}', nats_headers, "ce-"))
    assert (other.traceparent, other.tracestate) == (TRACEPARENT, TRACESTATE)
    assert Event(type="task.created", source="//api").tracestate is None
