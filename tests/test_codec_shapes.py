"""The decoders made per shape of document (tidings.codec.shapes): a document of a shape
seen before is decoded by its shape's own decoder, which gives the very event the full
lookup gives, and leaves to the full lookup whatever it would refuse or read otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.codec import decode, encode, from_dict
from tidings.codec import structured as codec_structured
from tidings.codec.members import ATTRIBUTES
from tidings.codec.shapes import SHAPES_MAX, shapes
from tidings.envelope import Event
from tidings.errors import DecodeError

WHEN = datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_shapes() -> Iterator[None]:
    """Each test starts with no shape known, and leaves the others' as they were."""
    saved = dict(shapes())
    shapes().clear()
    try:
        yield
    finally:
        shapes().clear()
        shapes().update(saved)


@pytest.fixture
def full_lookups(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The documents decode handed to the full lookup."""
    seen: list[dict[str, Any]] = []
    real = codec_structured.from_dict

    def counted(doc: dict[str, Any]) -> Event:
        seen.append(doc)
        return real(doc)

    monkeypatch.setattr(codec_structured, "from_dict", counted)
    return seen


def _outcome(call: Any, *args: Any) -> tuple[str, Any]:
    try:
        event = call(*args)
    except DecodeError as exc:
        return "refused", str(exc)
    return "event", (event.as_dict(), list(event.extensions.items()))


EVENTS = [
    Event("task.created", "taskapi", {"id": "t1"}, time=WHEN),
    Event("task.created", "taskapi", {"id": "t1"}, time=WHEN, subject="t1", correlationid="c"),
    Event(
        "task.created",
        "taskapi",
        [1, "two", None],
        time=WHEN,
        causationid="e0",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        extensions={"tracestate": "a=1", "personaldata": "v1"},
    ),
    Event("order.paid", "shop", 12.5, time=WHEN, dataschema="urn:s", dataversion=3),
    Event("order.paid", "shop", None, time=WHEN, partitionkey="p-1", subject="s-1"),
    Event("order.paid", "shop", "text", time=WHEN, datacontenttype="text/plain"),
]


@pytest.mark.parametrize("sent", EVENTS, ids=range(len(EVENTS)))
def test_a_second_event_of_a_shape_is_decoded_by_its_own_decoder_to_the_same_event(
    sent: Event, full_lookups: list[dict[str, Any]]
) -> None:
    raw = encode(sent)
    first = decode(raw)
    assert len(full_lookups) == 1  # the first of its shape: the full lookup, which learns it
    assert tuple(orjson.loads(raw)) in shapes()
    second = decode(raw)
    assert len(full_lookups) == 1  # the shape's own decoder
    assert second == first == sent
    assert list(second.extensions.items()) == list(sent.extensions.items())
    assert second.time == WHEN
    assert second.time.tzinfo is UTC
    assert encode(second) == raw


def test_an_event_without_time_or_content_type_gets_the_epoch_and_json() -> None:
    doc = {"specversion": "1.0", "id": "e1", "source": "s", "type": "a.b", "data": 1}
    raw = orjson.dumps(doc)
    first, second = decode(raw), decode(raw)
    assert tuple(doc) in shapes()
    assert second == first
    assert second.time == datetime.fromtimestamp(0, UTC)
    assert second.datacontenttype == "application/json"


BASE = {
    "specversion": "1.0", "id": "e1", "source": "s", "type": "task.created",
    "time": "2024-05-17T09:30:12.345678Z", "subject": "t1", "dataversion": 2, "data": {},
}  # fmt: skip

# Values of a known shape its decoder must not take as it is: the full lookup reads
# them (a null, another offset) or refuses them, each with its own reason.
ODD = [
    ("id", 7), ("id", ""), ("source", ""), ("source", None), ("type", "Task-Created"),
    ("type", "never.seen_before"), ("type", 3), ("specversion", "0.3"), ("specversion", 1),
    ("subject", None), ("subject", ["t1"]), ("dataversion", 0), ("dataversion", True),
    ("dataversion", "2"), ("dataversion", 2.0), ("dataversion", None),
    ("time", "2024-05-17T11:30:12.345678+02:00"), ("time", "2024-05-17T09:30:12"),
    ("time", "yesterday"), ("time", 1715938212), ("time", None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), ODD, ids=[f"{n}={v!r}" for n, v in ODD])
def test_what_a_shapes_decoder_would_not_take_the_full_lookup_reads_or_refuses(
    name: str, value: Any
) -> None:
    decode(orjson.dumps(BASE))
    assert tuple(BASE) in shapes()
    doc = {**BASE, name: value}
    assert tuple(doc) in shapes()  # the same shape: only a value differs
    assert _outcome(decode, orjson.dumps(doc)) == _outcome(
        from_dict, orjson.loads(orjson.dumps(doc))
    )


NAMES = ["a'b", 'x"y', "class", "1abc", "with space", "back\\slash\nline", "ünï", "v0", "doc"]


@pytest.mark.parametrize("name", NAMES)
def test_any_extension_name_is_kept_as_it_is(name: str) -> None:
    sent = Event("task.created", "s", {"k": 1}, time=WHEN, extensions={name: [name]})
    raw = encode(sent)
    decode(raw)
    assert len(shapes()) == 1
    got = decode(raw)
    assert got == sent
    assert dict(got.extensions) == {name: [name]}


def test_binary_data_is_left_to_the_full_lookup() -> None:
    sent = Event("task.created", "s", b"\x00\x01", time=WHEN)
    raw = encode(sent)
    assert decode(raw) == sent
    assert decode(raw) == sent
    assert not shapes()


def test_at_most_SHAPES_MAX_shapes_are_kept_and_the_rest_still_decode() -> None:
    count = SHAPES_MAX + 10
    sent = [Event("task.created", "s", k, time=WHEN, extensions={f"x{k}": k}) for k in range(count)]
    for event in sent:
        assert decode(encode(event)) == event
    assert len(shapes()) == SHAPES_MAX
    for event in sent:  # again: the first by their decoders, the others by the full lookup
        assert decode(encode(event)) == event


_TEXT = st.text(max_size=8)
OPTIONAL = ATTRIBUTES - {"specversion", "id", "source", "type", "data_base64"}
_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | _TEXT
    | st.lists(st.integers(-9, 9), max_size=2)
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    members=st.lists(
        st.tuples(
            st.sampled_from([*sorted(OPTIONAL), "ext", "tracestate"]),
            _VALUES | st.just("2024-05-17T09:30:12Z"),
        ),
        max_size=6,
    ),
    required=st.tuples(_VALUES | st.just("1.0"), _VALUES | st.just("e1")),
)
def test_decoding_a_document_twice_gives_what_the_full_lookup_gives(
    members: list[tuple[str, Any]], required: tuple[Any, Any]
) -> None:
    doc: dict[str, Any] = {"specversion": required[0], "id": required[1], "source": "s"}
    doc["type"] = "task.created"
    doc.update(members)
    raw = orjson.dumps(doc)
    expected = _outcome(from_dict, orjson.loads(raw))
    assert _outcome(decode, raw) == expected
    assert _outcome(decode, raw) == expected  # by the shape's decoder, if one was made
