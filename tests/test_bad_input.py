"""Bad input, case by case: at publish a clear error naming the problem; at consume an
error whose message is the dead-letter reason (the worker dead-letters any EventError
raised by ``codec.decode`` or ``Registry.decode_payload``, with ``str(exc)``).

The error types, as documented:

- ``codec.decode`` raises :class:`DecodeError` and nothing else; input over the size
  limit is its subclass :class:`RecordTooLarge`, which is also an :class:`EventTooLarge`.
- ``Registry.decode_payload`` raises :class:`UnknownEventType` for a registered type at
  an unregistered version (:class:`UnsupportedVersion` when the version is newer than
  every registered one) and :class:`DecodeError` for a payload that does not match its
  model. A type with no registered model is not an error: its data is passed as is.
- Publishing raises :class:`ConfigError` (an unregistered model, a plain value without
  a type, a model published as another type or version), :class:`InvalidEventType`,
  :class:`EventTooLarge`, :class:`InvalidPayload` (a plain value its registered model
  refuses: tests/test_publish_validation.py), or :class:`EventError` (an attribute of
  the wrong type, a payload JSON cannot carry), and appends nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from tidings import Tidings
from tidings.codec import decode, encode
from tidings.contracts import Registry
from tidings.envelope import Event
from tidings.errors import (
    ConfigError,
    DecodeError,
    EventError,
    EventTooLarge,
    InvalidEventType,
    RecordTooLarge,
    UnknownEventType,
    UnsupportedVersion,
)
from tidings.testing import stored as records_of
from tidings.transport import Transport

TOPIC = "task-events"
VALID: dict[str, Any] = {
    "specversion": "1.0",
    "id": "01890a5d-ac96-774b-bcce-b302099a8057",
    "source": "taskapi",
    "type": "task.created",
    "time": "2024-05-17T09:30:12.345678Z",
    "dataversion": 1,
    "data": {"task_id": "t1", "title": "Write tests"},
}
_DROP: Any = object()
_ATTRIBUTES = {
    *VALID,
    *("subject", "datacontenttype", "dataschema", "data_base64", "correlationid"),
    *("causationid", "traceparent", "partitionkey"),
}


def envelope(**changes: Any) -> bytes:
    """A valid event's bytes with some members changed (``_DROP`` removes one)."""
    doc = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not _DROP})


# -- consume: the decoder ------------------------------------------------------------


@dataclass(frozen=True)
class DecodeCase:
    raw: bytes
    error: type[EventError]
    says: tuple[str, ...]  # each must appear in the message (the dead-letter reason)
    max_bytes: int = 1024 * 1024


DECODE_CASES: dict[str, DecodeCase] = {
    "malformed JSON": DecodeCase(
        b'{"specversion": "1.0", "id": ',
        DecodeError,
        ("not valid UTF-8 JSON", "unexpected end of data", "line 1 column"),
    ),
    "a bare word": DecodeCase(
        b"not json", DecodeError, ("not valid UTF-8 JSON", "invalid literal", "line 1 column 1")
    ),
    "empty input": DecodeCase(b"", DecodeError, ("the input is empty",)),
    "NaN (not JSON)": DecodeCase(b'{"data": NaN}', DecodeError, ("not valid UTF-8 JSON",)),
    "not an object": DecodeCase(b"[1, 2]", DecodeError, ("expected a JSON object, got list",)),
    "a JSON string": DecodeCase(b'"event"', DecodeError, ("expected a JSON object, got str",)),
    "invalid UTF-8": DecodeCase(
        b'{"specversion":"1.0","id":"\xff\xfe","source":"s","type":"task.created"}',
        DecodeError,
        ("not UTF-8", "byte 0xff at offset 27", "invalid start byte"),
    ),
    "UTF-8 of a surrogate (CESU)": DecodeCase(
        envelope(id="x").replace(b'"x"', b'"\xed\xa0\x80"'),
        DecodeError,
        ("not UTF-8", "byte 0xed"),
    ),
    "a lone surrogate escape": DecodeCase(
        envelope(id="x").replace(b'"x"', b'"\\ud800"'),
        DecodeError,
        ("not valid UTF-8 JSON", "surrogate"),
    ),
    "oversized": DecodeCase(
        envelope(data="x" * 3000),
        RecordTooLarge,
        ("bytes; the limit is 2,048", "max_event_bytes of at least 3,"),
        max_bytes=2048,
    ),
    "oversized, not even JSON": DecodeCase(
        b"\xff" * 11, RecordTooLarge, ("11 bytes; the limit is 10",), max_bytes=10
    ),
    **{
        f"missing {name}": DecodeCase(
            envelope(**{name: _DROP}),
            DecodeError,
            (f"required attribute {name!r} is missing", "specversion, id, source and type"),
        )
        for name in ("id", "source", "type", "specversion")
    },
    "id as a number": DecodeCase(
        envelope(id=7), DecodeError, ("attribute 'id' must be a non-empty string, got 7",)
    ),
    "id empty": DecodeCase(
        envelope(id=""), DecodeError, ("attribute 'id' must be a non-empty string, got ''",)
    ),
    "source as a list": DecodeCase(
        envelope(source=["a"]), DecodeError, ("attribute 'source' must be a non-empty string",)
    ),
    "type as an object": DecodeCase(
        envelope(type={"a": 1}), DecodeError, ("attribute 'type' must be a non-empty string",)
    ),
    "type not domain.action": DecodeCase(
        envelope(type="TaskCreated"),
        DecodeError,
        ("attribute 'type'", "'TaskCreated'", "'domain.action'", "'task.created'"),
    ),
    "specversion from the future": DecodeCase(
        envelope(specversion="2.0"),
        DecodeError,
        ("specversion '2.0' is not supported", "only '1.0'"),
    ),
    "specversion as a number": DecodeCase(
        envelope(specversion=1.0),
        DecodeError,
        ("attribute 'specversion' must be a non-empty string, got 1.0",),
    ),
    "time as a number": DecodeCase(
        envelope(time=1700000000),
        DecodeError,
        ("attribute 'time' must be an RFC 3339 string, got 1700000000",),
    ),
    "time not a timestamp": DecodeCase(
        envelope(time="yesterday"), DecodeError, ("attribute 'time' is not RFC 3339: 'yesterday'",)
    ),
    "time without an offset": DecodeCase(
        envelope(time="2024-01-01T00:00:00"),
        DecodeError,
        ("attribute 'time' has no time zone offset",),
    ),
    "time with an offset in seconds": DecodeCase(
        envelope(time="2024-01-01T00:00:00+01:00:30"),
        DecodeError,
        ("attribute 'time' has a UTC offset with seconds", "+hh:mm"),
    ),
    **{
        f"dataversion {value!r}": DecodeCase(
            envelope(dataversion=value),
            DecodeError,
            ("attribute 'dataversion' must be a positive integer", f"got {value!r}"),
        )
        for value in (0, -3, 1.5, True, "x", [1])
    },
    "subject as a number": DecodeCase(
        envelope(subject=12), DecodeError, ("attribute 'subject' must be a string, got 12",)
    ),
    "partitionkey as an object": DecodeCase(
        envelope(partitionkey={"k": 1}),
        DecodeError,
        ("attribute 'partitionkey' must be a string",),
    ),
    "data_base64 not base64": DecodeCase(
        envelope(data=_DROP, data_base64="!!!"),
        DecodeError,
        ("attribute 'data_base64' is not valid base64",),
    ),
    "data_base64 as a number": DecodeCase(
        envelope(data=_DROP, data_base64=3),
        DecodeError,
        ("attribute 'data_base64' must be a base64 string",),
    ),
}


@pytest.mark.parametrize("case", DECODE_CASES.values(), ids=DECODE_CASES.keys())
def test_bad_input_at_decode_is_a_decode_error_naming_the_problem(case: DecodeCase) -> None:
    with pytest.raises(DecodeError) as info:
        decode(case.raw, case.max_bytes)
    assert type(info.value) is case.error
    message = str(info.value)
    for part in case.says:
        assert part in message, (part, message)
    # decode's whole contract: a DecodeError (RecordTooLarge is one), no other exception.
    assert not isinstance(info.value, UnicodeDecodeError)


def test_oversized_input_is_both_an_event_too_large_and_a_decode_error() -> None:
    with pytest.raises(EventTooLarge) as info:
        decode(b"x" * 11, max_bytes=10)
    assert isinstance(info.value, DecodeError)


# -- consume: the payload contracts -------------------------------------------------


class TaskCreated(BaseModel):
    task_id: str
    title: str


class TaskCreatedV2(BaseModel):
    task_id: str
    title: str
    due: str | None = None


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.register(TaskCreated, "task.created", 1)
    registry.register(TaskCreatedV2, "task.created", 2)
    return registry


def consume(registry: Registry, raw: bytes) -> Any:
    """What the worker does with a record before calling a handler."""
    event = decode(raw)
    return registry.decode_payload(event.type, event.dataversion, event.data)


def test_a_version_from_the_future_is_unsupported_version_naming_what_to_do(
    registry: Registry,
) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        consume(registry, envelope(dataversion=3))
    assert isinstance(info.value, UnknownEventType)
    assert isinstance(info.value, EventError)  # so the worker dead-letters it
    assert str(info.value) == (
        "version 3 of task.created is newer than this service knows (versions 1..2); "
        "deploy the new model (@app.event('task.created', version=3)) to this service, "
        "then replay the dead letter"
    )


def test_a_version_in_a_gap_is_unknown_event_type_but_not_from_the_future() -> None:
    registry = Registry()
    registry.register(TaskCreated, "task.created", 1)
    registry.register(TaskCreatedV2, "task.created", 3)
    with pytest.raises(UnknownEventType) as info:
        consume(registry, envelope(dataversion=2))
    assert not isinstance(info.value, UnsupportedVersion)
    message = str(info.value)
    assert "version 2 of task.created is not registered in this service" in message
    assert "(it knows versions 1, 3)" in message
    assert "@app.event('task.created', version=2)" in message


def test_a_payload_of_the_wrong_shape_names_the_fields(registry: Registry) -> None:
    with pytest.raises(DecodeError) as info:
        consume(registry, envelope(data={"task_id": 5}))
    message = str(info.value)
    assert "payload of task.created v1 does not match TaskCreated: 2 error(s)" in message
    assert "task_id: Input should be a valid string" in message
    assert "title: Field required" in message


def test_a_payload_with_very_many_errors_lists_ten_and_counts_the_rest() -> None:
    class Wide(BaseModel):
        fields: list[int]

    registry = Registry()
    registry.register(Wide, "thing.happened")
    with pytest.raises(DecodeError) as info:
        registry.decode_payload("thing.happened", 1, {"fields": ["x"] * 500})
    message = str(info.value)
    assert "500 error(s)" in message
    assert message.count("Input should be a valid integer") == 10
    assert message.endswith("; and 490 more")


def test_an_unknown_type_is_passed_as_raw_data_not_an_error(registry: Registry) -> None:
    # Documented behaviour: a type with no registered model is not an error at consume.
    # A subscriber with types=None (every type) receives its data as is (a copy of its
    # own); a subscriber with types=[...] is never routed an event of another type.
    data = {"invoice": 7, "lines": [1, 2]}
    payload = consume(registry, envelope(type="billing.invoice.paid", data=data, dataversion=9))
    assert payload == data
    assert payload is not data


def test_an_event_without_a_version_gets_the_latest_model(registry: Registry) -> None:
    # Documented behaviour: no dataversion (e.g. a plain value published without
    # version=) is read with the latest registered model of its type.
    payload = consume(registry, envelope(dataversion=_DROP))
    assert type(payload) is TaskCreatedV2


# -- publish ---------------------------------------------------------------------------


def make_app() -> Tidings:
    app = Tidings("memory://", service="taskapi", max_event_bytes=2048)
    app.event("task.created", subject="task_id")(TaskCreated)
    app.event("task.created", version=2)(TaskCreatedV2)
    return app


async def stored(transport: Transport, topic: str = TOPIC) -> list[bytes]:
    return [r.value for r in await records_of(transport, topic)]


class Stray(BaseModel):
    a: int


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


class Holder(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: Opaque


@dataclass(frozen=True)
class PublishCase:
    payload: Any
    error: type[Exception]
    says: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def _cycle() -> dict[str, Any]:
    data: dict[str, Any] = {}
    data["self"] = data
    return data


def _event(**changes: Any) -> Event:
    return Event(**{"type": "task.created", "source": "taskapi", "data": {}, **changes})


PUBLISH_CASES: dict[str, PublishCase] = {
    "a value JSON cannot carry": PublishCase(
        {"task_id": "t1", "when": Opaque()},
        EventError,
        ("cannot be encoded as JSON", "data.when is Opaque() (Opaque)"),
        {"type": "note.added"},
    ),
    "a set, deep inside": PublishCase(
        {"items": [{"tags": {"a"}}]},
        EventError,
        ("data.items[0].tags is {'a'} (set)", "use a list"),
        {"type": "note.added"},
    ),
    "a Decimal": PublishCase(
        {"price": Decimal("1.50")},
        EventError,
        ("data.price is Decimal('1.50') (Decimal)", "use a float, a string"),
        {"type": "note.added"},
    ),
    "bytes inside JSON": PublishCase(
        {"blob": b"\x00"},
        EventError,
        ("data.blob is b'\\x00' (bytes)", "base64-encode"),
        {"type": "note.added"},
    ),
    "a payload key that is not a string": PublishCase(
        {"counts": {1: "one"}},
        EventError,
        ("data.counts has the key 1 (int); JSON object keys must be strings",),
        {"type": "note.added"},
    ),
    "an integer past 64 bits": PublishCase(
        {"n": 2**70},
        EventError,
        ("data.n is an integer of 71 bits", "send it as a string"),
        {"type": "note.added"},
    ),
    "a string with a lone surrogate": PublishCase(
        {"title": "a\ud800"},
        EventError,
        ("data.title is a string with the lone surrogate '\\ud800' at index 1",),
        {"type": "note.added"},
    ),
    "a data cycle": PublishCase(
        _cycle(),
        EventError,
        ("data.self.self.", "is nested more than 253 levels deep (or contains itself)"),
        {"type": "note.added"},
    ),
    "a model pydantic cannot write": PublishCase(
        Holder(thing=Opaque()),
        EventError,
        ("data (Holder) cannot be written by pydantic", "Opaque"),
        {"type": "thing.held"},
    ),
    "an extension value JSON cannot carry": PublishCase(
        {},
        EventError,
        ("extension 'tenant' is Opaque() (Opaque)",),
        {"type": "note.added", "extensions": {"tenant": Opaque()}},
    ),
    "a model that is not registered": PublishCase(
        Stray(a=1), ConfigError, ("Stray is not registered as an event payload", "@app.event")
    ),
    "a plain value without a type": PublishCase(
        {"a": 1}, ConfigError, ("publishing a plain value needs type=...",)
    ),
    "a type that is not domain.action": PublishCase(
        {},
        InvalidEventType,
        ("event type 'Task Created' is not lower-case 'domain.action'", "'task.created'"),
        {"type": "Task Created"},
    ),
    "a type that is not a string": PublishCase(
        {}, InvalidEventType, ("event type 7 is not lower-case 'domain.action'",), {"type": 7}
    ),
    "a model published as another type": PublishCase(
        TaskCreated(task_id="t", title="x"),
        ConfigError,
        ("TaskCreated is registered as task.created, not task.deleted",),
        {"type": "task.deleted"},
    ),
    "a model published as another version": PublishCase(
        TaskCreated(task_id="t", title="x"),
        ConfigError,
        ("TaskCreated is version 1 of task.created, not 2",),
        {"version": 2},
    ),
    "version 0": PublishCase(
        {},
        ConfigError,
        ("task.created: version must be an integer >= 1, got 0",),
        {"type": "task.created", "version": 0},
    ),
    "version as a string": PublishCase(
        {},
        ConfigError,
        ("task.archived: version must be an integer >= 1, got '2' (str)",),
        {"type": "task.archived", "version": "2"},
    ),
    "oversized": PublishCase(
        {"blob": "x" * 4000},
        EventTooLarge,
        ("bytes encoded; the limit is 2,048", "max_event_bytes=", "send a reference"),
        {"type": "note.added"},
    ),
    "an extension name that is not CloudEvents": PublishCase(
        {},
        ConfigError,
        ("extension name(s) ['Tenant-ID'] are not valid", "e.g. 'tenantid'"),
        {"type": "note.added", "extensions": {"Tenant-ID": "x"}},
    ),
    "an extension named like an attribute": PublishCase(
        {},
        EventError,
        ("extension name(s) subject are CloudEvents attributes",),
        {"type": "note.added", "extensions": {"subject": "x"}},
    ),
    "a subject that is not a string": PublishCase(
        {},
        EventError,
        ("attribute 'subject' (publish option subject=) must be a string, got 5 (int)",),
        {"type": "note.added", "subject": 5},
    ),
    "a key that is not a string": PublishCase(
        {},
        EventError,
        ("attribute 'partitionkey' (publish option key=) must be a string, got 5 (int)",),
        {"type": "note.added", "key": 5},
    ),
    "a correlation id that is not a string": PublishCase(
        {},
        EventError,
        ("'correlationid' (publish option correlation_id=) must be a string, got ['c']",),
        {"type": "note.added", "correlation_id": ["c"]},
    ),
    "a traceparent that is not a string": PublishCase(
        {},
        EventError,
        ("'traceparent' (publish option traceparent=) must be a string",),
        {"type": "note.added", "traceparent": b"00-ab"},
    ),
    "a time that is not a datetime": PublishCase(
        {},
        EventError,
        ("event time must be a datetime, got '2024-01-01' (str)",),
        {"type": "note.added", "time": "2024-01-01"},
    ),
    "a time without a zone": PublishCase(
        {},
        EventError,
        ("event time 2024-01-01T00:00:00 has no time zone",),
        {"type": "note.added", "time": datetime(2024, 1, 1)},
    ),
    "a time whose offset has seconds": PublishCase(
        {},
        EventError,
        ("attribute 'time' has the UTC offset 0:19:32, with seconds", "astimezone(UTC)"),
        {
            "type": "note.added",
            "time": datetime(1930, 1, 1, tzinfo=timezone(timedelta(minutes=19, seconds=32))),
        },
    ),
    "a ready event with a source that is not a string": PublishCase(
        _event(source=42),
        EventError,
        ("attribute 'source' must be a non-empty string", "got 42 (int)"),
    ),
    "a ready event with another specversion": PublishCase(
        _event(specversion="0.3"),
        EventError,
        ("attribute 'specversion' is '0.3'; tidings writes CloudEvents '1.0' only",),
    ),
    "a ready event with a dataversion that is not an integer": PublishCase(
        _event(dataversion=1.0),
        EventError,
        ("attribute 'dataversion' (publish option version=) must be an integer >= 1",),
    ),
}


@pytest.mark.parametrize("case", PUBLISH_CASES.values(), ids=PUBLISH_CASES.keys())
async def test_bad_input_at_publish_is_a_clear_error_and_appends_nothing(
    case: PublishCase,
) -> None:
    app = make_app()
    app.event("thing.held")(Holder)
    async with app:
        with pytest.raises(case.error) as info:
            await app.publish(TOPIC, case.payload, **case.options)
        assert await stored(app.transport) == []
    message = str(info.value)
    for part in case.says:
        assert part in message, (part, message)


def test_every_encode_error_names_the_event() -> None:
    event = _event(data={"when": Opaque()})
    with pytest.raises(EventError) as info:
        encode(event)
    assert f"event task.created ({event.id})" in str(info.value)


def test_publishing_a_registered_type_at_a_version_the_registry_lacks_is_refused(
    registry: Registry,
) -> None:
    # Registry.check_publish is the check Tidings.build makes for a plain value.
    with pytest.raises(UnsupportedVersion) as info:
        registry.check_publish("task.created", 9)
    assert str(info.value) == (
        "cannot publish version 9 of task.created: this service registers versions "
        "1..2; register its model first with @app.event('task.created', version=9), or "
        "publish version 2"
    )
    with pytest.raises(ConfigError, match=r"version must be an integer >= 1, got '2' \(str\)"):
        registry.check_publish("task.created", "2")  # type: ignore[arg-type]
    with pytest.raises(InvalidEventType):
        registry.check_publish("Task", 1)
    # Allowed: a registered version, no version, and any version of an unregistered type.
    registry.check_publish("task.created", 2)
    registry.check_publish("task.created", None)
    registry.check_publish("task.archived", 3)


async def test_publishing_a_plain_value_as_a_version_from_the_future_is_refused() -> None:
    app = make_app()
    async with app:
        with pytest.raises(UnsupportedVersion, match=r"cannot publish version 9 of task\.created"):
            await app.publish(TOPIC, {"task_id": "t", "title": "x"}, type="task.created", version=9)
        assert await stored(app.transport) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"when": Opaque()},  # not JSON
        {"blob": "x" * 4000},  # too large
    ],
    ids=["not JSON", "too large"],
)
async def test_publish_many_with_one_bad_event_publishes_none(
    bad: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    appended: list[int] = []
    append = app.transport.append

    async def counting_append(topic: str, records: Any) -> Any:
        appended.append(len(records))
        return await append(topic, records)

    async with app:  # (its start registers the app's schemas: an append of its own)
        monkeypatch.setattr(app.transport, "append", counting_append)
        with pytest.raises(EventError):
            await app.publish_many(TOPIC, [{"n": 1}, {"n": 2}, bad, {"n": 4}], type="note.added")
        # A ready-made event with a bad attribute among good ones: the same.
        good = app.build({"n": 5}, type="note.added")
        with pytest.raises(EventError, match="'subject'"):
            await app.publish_many(TOPIC, [good, _event(subject=5)])
        assert await stored(app.transport) == []
    assert appended == []  # everything is encoded before the one append


def test_data_nested_deeper_than_the_encoder_allows_decodes_but_cannot_be_re_encoded() -> None:
    # Documented limit: the decoder accepts JSON nested up to 1024 levels, the encoder
    # (orjson) 254 (the envelope is one). Such an event can be consumed, and re-publishing
    # it is refused with a clear EventError rather than a crash.
    raw = envelope(data="x").replace(b'"data":"x"', b'"data":' + b"[" * 300 + b"]" * 300)
    event = decode(raw)
    with pytest.raises(EventError, match=r"is nested more than 253 levels deep"):
        encode(event)


# -- properties: decode never raises anything but DecodeError, and never hangs ------------

# decode's only errors: DecodeError itself, and RecordTooLarge (a DecodeError that is also
# an EventTooLarge) for input over max_bytes. Nothing else, ever.
DECODE_ERRORS = (DecodeError, RecordTooLarge)
DEADLINE = timedelta(milliseconds=200)
MAX_INPUT = 4096  # inputs are capped: hypothesis makes nothing bigger


def check_decode(raw: bytes, max_bytes: int = 1024 * 1024) -> Event | None:
    """Decode ``raw``: an Event (then round-trip stable) or a documented error.

    Any other exception fails the test as it propagates; a hang fails it on the
    hypothesis deadline (and the explicit time check, for the first run of an example).
    """
    started = time.perf_counter()
    result: Event | EventError
    try:
        result = decode(raw, max_bytes)
    except EventError as exc:
        result = exc
    assert time.perf_counter() - started < DEADLINE.total_seconds()
    if isinstance(result, EventError):
        assert type(result) in DECODE_ERRORS, repr(result)
        assert str(result)  # the dead-letter reason is never empty
        return None
    event = result
    # Round trip: what was decoded encodes to an equal event, and the encoding is stable.
    again = encode(event)
    back = decode(again)
    assert back == event
    assert encode(back) == again
    return event


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.integers(-(2**70), 2**70)  # past 64 bits, orjson reads floats or refuses
    | st.floats()  # NaN and infinities are written by json.dumps as non-JSON tokens
    | st.text(max_size=24)
)
_values = (
    _scalars
    | st.lists(_scalars, max_size=4)
    | st.dictionaries(st.text(max_size=8), _scalars, max_size=4)
    | st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=6,
    )
)
_plausible = st.sampled_from(
    [
        "1.0",
        "task.created",
        "TaskCreated",
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00+05:30",
        "2024-01-01T00:00:00+01:00:30",
        "2024-01-01",
        "3",
        "0",
        "-1",
        "aGk=",
        "==",
        "",
        "\ud800",
    ]
)
_member_names = st.sampled_from(sorted(_ATTRIBUTES | {"vendorext", "extensions", ""}))


def _dump(doc: Any, ascii_only: bool) -> bytes:
    # stdlib json writes what orjson would refuse to: big integers, NaN, lone
    # surrogates (escaped, or as CESU-8 bytes via surrogatepass): all must be handled.
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = dict(VALID)
    for name in draw(st.lists(_member_names, max_size=5)):
        doc[name] = draw(_values | _plausible)
    for name in draw(st.lists(st.sampled_from(sorted(doc)), max_size=4)):
        doc.pop(name, None)
    return _dump(doc, draw(st.booleans()))


@st.composite
def flipped_encodings(draw: st.DrawFn) -> bytes:
    raw = bytearray(envelope(subject="t1", correlationid="c", extra={"k": [1, "two", None]}))
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and raw:
            raw[at] = draw(st.integers(0x20, 0x7E))  # ASCII: past UTF-8, into JSON
        elif action == "cut":
            del raw[at : at + draw(st.integers(1, 8))]
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(raw)


_property = settings(
    max_examples=300,
    deadline=DEADLINE,
    suppress_health_check=[HealthCheck.too_slow],
)


@_property
@given(st.binary(max_size=MAX_INPUT))
def test_arbitrary_bytes_only_ever_give_a_decode_error(raw: bytes) -> None:
    check_decode(raw)


@_property
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=600))
def test_arbitrary_bytes_over_a_small_limit_give_record_too_large(raw: bytes, limit: int) -> None:
    if len(raw) > limit:
        with pytest.raises(RecordTooLarge):
            decode(raw, limit)
    else:
        check_decode(raw, limit)


@settings(_property, max_examples=200)
@given(mutated_envelopes())
def test_envelopes_with_random_attribute_values_and_deletions_only_give_a_decode_error(
    raw: bytes,
) -> None:
    check_decode(raw)


@_property
@given(flipped_encodings())
def test_byte_flips_of_a_valid_encoding_only_give_a_decode_error(raw: bytes) -> None:
    check_decode(raw)


_ext_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20).filter(
    lambda n: n not in _ATTRIBUTES
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@st.composite
def valid_events(draw: st.DrawFn) -> Event:
    zone = draw(st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone.min]))
    optional = st.none() | st.text(max_size=12)
    return Event(
        id=str(draw(st.uuids())),  # given: Event's own ids come from `random`
        type=draw(st.sampled_from(["task.created", "billing.invoice.paid", "a.b"])),
        source=draw(st.text(min_size=1, max_size=12)),
        data=draw(_json | st.binary(max_size=16)),
        time=draw(st.datetimes(timezones=st.just(zone))),
        subject=draw(optional),
        dataversion=draw(st.none() | st.integers(1, 2**63 - 1)),
        correlationid=draw(optional),
        partitionkey=draw(optional),
        extensions=draw(st.dictionaries(_ext_names, _json, max_size=3)),
    )


@settings(_property, max_examples=200)
@given(valid_events())
def test_every_valid_event_survives_encode_then_decode(event: Event) -> None:
    raw = encode(event)
    decoded = check_decode(raw)
    assert decoded == event
