"""The structured-mode JSON codec: round trips, limits, and reasons for bad input."""

from __future__ import annotations

import base64
import pickle
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tidings.codec import DEFAULT_MAX_EVENT_BYTES, decode, encode
from tidings.envelope import Event
from tidings.errors import DecodeError, EventError, EventTooLarge, RecordTooLarge

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _full_event(**changes: Any) -> Event:
    fields: dict[str, Any] = {
        "type": "task.created",
        "source": "taskapi",
        "data": {"id": "t1", "title": "Write tests", "tags": ["a", "b"], "n": 3, "x": 1.5},
        "time": datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=UTC),
        "subject": "t1",
        "datacontenttype": "application/json",
        "dataschema": "urn:tidings:schema:task.created:2",
        "dataversion": 2,
        "correlationid": "corr-1",
        "causationid": "cause-1",
        "traceparent": TRACEPARENT,
        "partitionkey": "tenant-7",
        "extensions": {"tenant": "acme", "priority": 5, "flags": {"a": [1, None, True]}},
    }
    fields.update(changes)
    return Event(**fields)


def _doc(**members: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "source": "taskapi",
        "type": "task.created",
    }
    doc.update(members)
    return {k: v for k, v in doc.items() if v is not _MISSING}


_MISSING: Any = object()


def _decode_error(doc: Any) -> str:
    with pytest.raises(DecodeError) as info:
        decode(orjson.dumps(doc))
    return str(info.value)


# -- round trips ---------------------------------------------------------------


def test_every_attribute_and_extension_survives_a_round_trip() -> None:
    event = _full_event()
    back = decode(encode(event))
    assert back == event
    for name in (
        "id",
        "source",
        "type",
        "specversion",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "dataversion",
        "correlationid",
        "causationid",
        "traceparent",
        "partitionkey",
    ):
        assert getattr(back, name) == getattr(event, name), name
    assert back.extensions == {"tenant": "acme", "priority": 5, "flags": {"a": [1, None, True]}}
    assert back.data == event.data


def test_encoded_document_uses_the_cloudevents_names_at_the_top_level() -> None:
    doc = orjson.loads(encode(_full_event()))
    assert doc["specversion"] == "1.0"
    assert doc["time"] == "2024-05-17T09:30:12.345678Z"
    assert doc["dataversion"] == 2
    assert doc["correlationid"] == "corr-1"
    assert doc["tenant"] == "acme"  # extensions are top-level members, not nested
    assert "extensions" not in doc
    assert "data_base64" not in doc


def test_unset_optional_attributes_are_left_out() -> None:
    doc = orjson.loads(encode(Event(type="task.created", source="s")))
    assert set(doc) == {"specversion", "id", "source", "type", "time", "datacontenttype"}


def test_time_with_an_offset_keeps_the_instant() -> None:
    tz = timezone(timedelta(hours=-5))
    event = _full_event(time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=tz))
    back = decode(encode(event))
    assert back.time == event.time
    assert back.time.utcoffset() == timedelta(hours=-5)


def test_unknown_members_are_kept_and_written_back_unchanged() -> None:
    members = {
        "zzvendor": {"nested": [1, 2.5, "three", None, False, {"deep": "x"}]},
        "bigint": 12345678901234567,
        "float": 0.1,
        "unicode": "grüße ✓ 日本",
        "empty": "",
        "nothing": None,
    }
    raw = orjson.dumps(_doc(time="2024-05-17T09:30:12Z", data={"a": 1}, **members))
    event = decode(raw)
    assert event.extensions == members
    again = orjson.loads(encode(event))
    for name, value in members.items():
        assert again[name] == value
        assert orjson.dumps(again[name]) == orjson.dumps(value)
    assert orjson.loads(raw) == {k: v for k, v in again.items() if k != "datacontenttype"}


@pytest.mark.parametrize("name", ["id", "type", "source", "specversion", "data", "correlationid"])
def test_an_extension_cannot_replace_a_standard_attribute(name: str) -> None:
    with pytest.raises(EventError):
        encode(_full_event(extensions={name: "forged"}))


def test_bytes_data_is_carried_as_data_base64() -> None:
    payload = bytes(range(256))
    event = _full_event(data=payload, datacontenttype="application/octet-stream")
    doc = orjson.loads(encode(event))
    assert "data" not in doc
    assert base64.b64decode(doc["data_base64"]) == payload
    back = decode(encode(event))
    assert back.data == payload
    assert isinstance(back.data, bytes)


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_bytes_like_data_is_carried_as_data_base64(wrap: Any) -> None:
    event = _full_event(data=wrap(b"\x00\xffabc"))
    assert decode(encode(event)).data == b"\x00\xffabc"


def test_data_base64_from_another_producer_decodes_to_bytes() -> None:
    raw = orjson.dumps(_doc(data_base64=base64.b64encode(b"\x01\x02").decode()))
    assert decode(raw).data == b"\x01\x02"


class TaskCreated(BaseModel):
    id: str
    title: str
    due: datetime | None = None


def test_pydantic_model_data_is_encoded_as_its_json() -> None:
    due = datetime(2024, 6, 1, 12, tzinfo=UTC)
    event = _full_event(data=TaskCreated(id="t1", title="Write", due=due))
    doc = orjson.loads(encode(event))
    assert doc["data"] == {"id": "t1", "title": "Write", "due": "2024-06-01T12:00:00Z"}
    back = decode(encode(event))
    assert TaskCreated.model_validate(back.data) == TaskCreated(id="t1", title="Write", due=due)


def test_nested_pydantic_models_in_plain_data_are_encoded() -> None:
    event = _full_event(data={"items": [TaskCreated(id="a", title="A")]})
    assert decode(encode(event)).data == {"items": [{"id": "a", "title": "A", "due": None}]}


def test_data_that_is_not_json_is_a_clear_event_error() -> None:
    event = _full_event(data={"when": object()})
    with pytest.raises(EventError, match="cannot be encoded as JSON") as info:
        encode(event)
    assert event.id in str(info.value)


def test_null_data_is_left_out_and_decodes_as_none() -> None:
    event = _full_event(data=None)
    assert "data" not in orjson.loads(encode(event))
    assert decode(encode(event)).data is None


def test_missing_time_decodes_as_the_epoch_marker() -> None:
    event = decode(orjson.dumps(_doc()))
    assert event.time.timestamp() == 0
    assert event.time.tzinfo is not None


def test_dataversion_written_as_a_digit_string_is_accepted() -> None:
    assert decode(orjson.dumps(_doc(dataversion="3"))).dataversion == 3


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = encode(_full_event())
    assert decode(bytearray(raw)) == decode(memoryview(raw)) == decode(raw)


# -- size limit ------------------------------------------------------------------


def test_default_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_EVENT_BYTES == 1024 * 1024


def test_too_large_event_is_refused_at_encode_naming_size_and_limit() -> None:
    event = _full_event(data={"blob": "x" * 5000})
    size = len(encode(event))
    with pytest.raises(EventTooLarge) as info:
        encode(event, max_bytes=4096)
    message = str(info.value)
    assert f"{size:,}" in message
    assert "4,096" in message
    assert event.id in message
    assert "max_event_bytes" in message


def test_event_of_exactly_the_limit_is_accepted() -> None:
    event = _full_event(data={"blob": "x" * 5000})
    size = len(encode(event))
    assert encode(event, max_bytes=size)
    with pytest.raises(EventTooLarge):
        encode(event, max_bytes=size - 1)


def test_default_limit_applies_to_encode() -> None:
    with pytest.raises(EventTooLarge):
        encode(_full_event(data="x" * DEFAULT_MAX_EVENT_BYTES))


def test_event_too_large_is_an_event_error() -> None:
    assert issubclass(EventTooLarge, EventError)


# -- decode errors carry the reason ----------------------------------------------


def test_invalid_utf8_is_a_decode_error() -> None:
    raw = b'{"specversion":"1.0","id":"\xff\xfe","source":"s","type":"task.created"}'
    with pytest.raises(DecodeError, match="UTF-8"):
        decode(raw)


def test_malformed_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not valid UTF-8 JSON"):
        decode(b'{"specversion": "1.0", ')


def test_empty_input_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="JSON"):
        decode(b"")


@pytest.mark.parametrize(
    ("document", "kind"), [([1, 2], "list"), ("text", "str"), (3, "int"), (None, "NoneType")]
)
def test_non_object_json_is_a_decode_error(document: Any, kind: str) -> None:
    assert _decode_error(document) == f"expected a JSON object, got {kind}"


@pytest.mark.parametrize("name", ["id", "source", "type", "specversion"])
def test_missing_required_attribute_is_named(name: str) -> None:
    message = _decode_error(_doc(**{name: _MISSING}))
    assert message.startswith(f"required attribute {name!r} is missing")
    assert "specversion, id, source and type" in message


@pytest.mark.parametrize("name", ["id", "source", "type", "specversion"])
@pytest.mark.parametrize("value", [7, ["x"], None, True])
def test_required_attribute_of_the_wrong_kind_is_named(name: str, value: Any) -> None:
    message = _decode_error(_doc(**{name: value}))
    if value is None:
        assert message.startswith(f"required attribute {name!r} is missing")
    else:
        assert f"attribute {name!r} must be a non-empty string" in message


@pytest.mark.parametrize("name", ["id", "source", "type", "specversion"])
def test_empty_required_attribute_is_refused_naming_it(name: str) -> None:
    message = _decode_error(_doc(**{name: ""}))
    assert name in message
    assert "''" in message


@pytest.mark.parametrize("version", ["0.3", "2.0", "1"])
def test_other_specversions_are_refused(version: str) -> None:
    message = _decode_error(_doc(specversion=version))
    assert repr(version) in message
    assert "not supported" in message


def test_bad_type_is_refused_with_the_naming_rule() -> None:
    message = _decode_error(_doc(type="TaskCreated"))
    assert "'TaskCreated'" in message
    assert "'task.created'" in message


@pytest.mark.parametrize(
    ("raw_time", "reason"),
    [
        ("yesterday", "not RFC 3339"),
        ("2024-13-01T00:00:00Z", "not RFC 3339"),
        ("2024-01-01T00:00:00", "no time zone offset"),
        (1700000000, "must be an RFC 3339 string"),
    ],
)
def test_bad_time_is_refused_with_the_reason(raw_time: Any, reason: str) -> None:
    message = _decode_error(_doc(time=raw_time))
    assert reason in message
    assert "'time'" in message


# The shape tidings writes (time, datacontenttype, data, and a value for some of
# subject, correlationid, causationid, traceparent) is decoded by a shorter path.
_WRITTEN = {"time": "2024-01-02T03:04:05.000006Z", "datacontenttype": "application/json",
            "correlationid": "c-1", "data": {"a": 1}}  # fmt: skip


@pytest.mark.parametrize(
    ("raw_time", "reason"),
    [
        ("yesterday", "not RFC 3339"),
        ("2024-01-01T00:00:00", "no time zone offset"),
        ("2024-01-01T00:00:00+01:00:30", "offset with seconds"),
        (1700000000, "must be an RFC 3339 string"),
    ],
)
def test_bad_time_in_the_written_shape_is_refused_with_the_reason(
    raw_time: Any, reason: str
) -> None:
    message = _decode_error(_doc(**{**_WRITTEN, "time": raw_time}))
    assert reason in message
    assert "'time'" in message


def test_the_written_shape_with_null_members_decodes_as_with_them_absent() -> None:
    event = decode(orjson.dumps(_doc(**{**_WRITTEN, "time": None, "subject": None})))
    assert event.time.timestamp() == 0
    assert event.subject is None
    assert event.correlationid == "c-1"
    assert event.extensions == {}


def test_the_written_shape_with_a_time_offset_or_an_extension_decodes_fully() -> None:
    event = decode(orjson.dumps(_doc(**{**_WRITTEN, "time": "2024-01-02T03:04:05-05:00"})))
    assert event.time.utcoffset() == timedelta(hours=-5)
    event = decode(orjson.dumps(_doc(**_WRITTEN, subject=None, zzvendor="x")))
    assert event.extensions == {"zzvendor": "x"}
    assert event.data == {"a": 1}
    assert event.time == datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


@pytest.mark.parametrize("version", [0, -1, 1.5, "x", "", True, [1], "-2"])
def test_dataversion_must_be_a_positive_integer(version: Any) -> None:
    message = _decode_error(_doc(dataversion=version))
    assert "'dataversion' must be a positive integer" in message


@pytest.mark.parametrize("version", ["²", "9" * 5000])
def test_dataversion_digit_strings_int_cannot_parse_are_decode_errors(version: str) -> None:
    _decode_error(_doc(dataversion=version))


@pytest.mark.parametrize(
    "name", ["subject", "correlationid", "causationid", "traceparent", "partitionkey"]
)
def test_optional_string_attribute_of_another_kind_is_named(name: str) -> None:
    message = _decode_error(_doc(**{name: 12}))
    assert f"attribute {name!r} must be a string" in message


@pytest.mark.parametrize(("value", "reason"), [(12, "base64 string"), ("!!!", "not valid base64")])
def test_bad_data_base64_is_refused(value: Any, reason: str) -> None:
    assert reason in _decode_error(_doc(data_base64=value))


def test_oversize_input_is_refused_before_parsing() -> None:
    raw = orjson.dumps(_doc(data="x" * 3000))
    with pytest.raises(DecodeError) as info:
        decode(raw, max_bytes=2048)
    assert str(info.value).startswith(f"event is {len(raw):,} bytes; the limit is 2,048")
    assert f"max_event_bytes of at least {len(raw):,}" in str(info.value)
    # Both a DecodeError (what decode raises) and an EventTooLarge (what is wrong).
    assert isinstance(info.value, RecordTooLarge)
    assert isinstance(info.value, EventTooLarge)
    # Over the limit even when the bytes are not JSON: the size is checked first.
    with pytest.raises(DecodeError, match="the limit is 10"):
        decode(b"\xff" * 11, max_bytes=10)


def test_decode_error_is_an_event_error() -> None:
    assert issubclass(DecodeError, EventError)


# -- decode never raises anything but DecodeError ---------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_names = st.sampled_from(
    [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
        "dataversion",
        "correlationid",
        "causationid",
        "traceparent",
        "partitionkey",
        "vendorext",
    ]
)
_plausible = st.sampled_from(
    ["1.0", "task.created", "Task", "2024-01-01T00:00:00Z", "2024-01-01", "3", "0", "aGk=", "=="]
)
_VALID = {"specversion": "1.0", "id": "i", "source": "s", "type": "task.created"}


def _decodes_or_raises_decode_error(raw: bytes) -> None:
    started = time.perf_counter()
    result: Event | DecodeError
    try:
        result = decode(raw)
    except DecodeError as exc:
        result = exc
    # An event, or a DecodeError with a reason (it becomes the dead-letter reason).
    assert isinstance(result, Event) or str(result)
    assert time.perf_counter() - started < 0.5


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_decode_of_arbitrary_bytes_only_raises_decode_error(raw: bytes) -> None:
    _decodes_or_raises_decode_error(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(_names, _json_values | _plausible, max_size=10),
    st.booleans(),
)
def test_decode_of_arbitrary_json_objects_only_raises_decode_error(
    members: dict[str, Any], start_valid: bool
) -> None:
    doc = {**_VALID, **members} if start_valid else members
    _decodes_or_raises_decode_error(orjson.dumps(doc))


@settings(max_examples=200, deadline=None)
@given(st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=20))
def test_decode_of_arbitrary_json_values_only_raises_decode_error(value: Any) -> None:
    _decodes_or_raises_decode_error(orjson.dumps(value))


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,  # deep nesting
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'"' + b"\\u" * 1000,
        b"1" * 100_000,
        b"\x00" * 1000,
    ],
)
def test_decode_of_hostile_inputs_is_a_quick_decode_error(raw: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(DecodeError):
        decode(raw)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "attributes",
    [
        {},  # what tidings writes for a root event: correlationid only
        {"subject": "k", "causationid": "c-1"},  # published by a handler
        {"dataschema": "urn:s", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    ],
)
def test_a_decoded_event_is_an_event_like_any_other(attributes: dict[str, Any]) -> None:
    """Decode builds its Event without Event.__init__: it must be one all the same
    (its class, immutable, equal to the one encoded, picklable)."""
    sent = Event("note.added", "svc", {"seq": 1}, correlationid="c-0", **attributes)
    got = decode(encode(sent))
    assert type(got) is Event
    assert got == sent
    assert pickle.loads(pickle.dumps(got)) == got
    with pytest.raises(AttributeError, match="immutable"):
        got.subject = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del got.data  # type: ignore[misc]
