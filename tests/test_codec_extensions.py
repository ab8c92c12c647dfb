"""Decoding extension attributes (a tracestate, the mark of sealed personal fields, a
vendor's): in whatever order, kept in the wire's order; a shape's own decoder
(tidings.codec.shapes) and the full lookup give the same event."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.codec import decode, encode, from_dict
from tidings.envelope import Event
from tidings.errors import DecodeError

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
WHEN = datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=UTC)


def _event(extensions: dict[str, Any], **attributes: Any) -> Event:
    return Event(
        "task.created", "taskapi", {"id": "t1"}, time=WHEN, correlationid="c-1",
        traceparent=TRACEPARENT, extensions=extensions, **attributes,
    )  # fmt: skip


@pytest.mark.parametrize(
    "extensions",
    [
        {"tracestate": "rojo=00f067aa0ba902b7"},
        {"personaldata": "v1"},
        {"tracestate": "rojo=00f067aa0ba902b7", "personaldata": "v1"},
        {"tracestate": "a=1", "personaldata": "v1", "tenant": "acme"},
        {"tracestate": "a=1", "personaldata": "v1", "tenant": "acme", "priority": 5},
        {"flags": {"a": [1, None, True]}, "n": None},
    ],
)
@pytest.mark.parametrize(
    "attributes",
    [{}, {"subject": "t1", "causationid": "e-0"}, {"dataschema": "urn:s", "dataversion": 2}],
)
def test_extensions_as_tidings_writes_them_decode_in_order_and_write_back_unchanged(
    extensions: dict[str, Any], attributes: dict[str, Any]
) -> None:
    sent = _event(extensions, **attributes)
    raw = encode(sent)
    got = decode(raw)
    assert got == sent
    assert list(got.extensions.items()) == list(extensions.items())  # the wire's order
    assert encode(got) == raw


def test_an_event_with_a_tracestate_gives_it_and_its_traceparent() -> None:
    got = decode(encode(_event({"tracestate": "rojo=00f067aa0ba902b7"})))
    assert got.traceparent == TRACEPARENT
    assert got.tracestate == "rojo=00f067aa0ba902b7"


def _members(**extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0", "id": "e-1", "source": "svc", "type": "task.created",
        "time": "2024-05-17T09:30:12.345678Z", "datacontenttype": "application/json",
        "correlationid": "c-1", "traceparent": TRACEPARENT, **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    "doc",
    [
        # another writer's order: the extension after the data, or in the middle
        {**_members(), "data": {"a": 1}, "tracestate": "x=1"},
        {"tracestate": "x=1", **_members(), "data": {"a": 1}},
        # a rarer attribute where an extension would be, and beside one
        {**_members(), "partitionkey": "k", "data": {"a": 1}},
        {**_members(), "tracestate": "x=1", "dataversion": 3, "data": {"a": 1}},
        {**_members(), "dataschema": "urn:s", "tracestate": "x=1", "data": {"a": 1}},
        # a known attribute present as null, and an extension
        {**_members(subject=None), "tracestate": "x=1", "data": {"a": 1}},
        # no data member: the extension is last
        {**_members(), "tracestate": "x=1"},
        # an extension before base64 data
        {
            **_members(datacontenttype="application/octet-stream"),
            "tracestate": "x=1",
            "data_base64": "aGk=",
        },
    ],
)
def test_any_order_of_members_decodes_as_the_full_lookup_reads_it(doc: dict[str, Any]) -> None:
    got = decode(orjson.dumps(doc))
    assert got.extensions == {k: v for k, v in doc.items() if k == "tracestate"}
    assert got.partitionkey == doc.get("partitionkey")
    assert got.dataversion == doc.get("dataversion")
    assert got.dataschema == doc.get("dataschema")
    assert got.traceparent == TRACEPARENT
    assert got.data == ({"a": 1} if "data" in doc else b"hi" if "data_base64" in doc else None)


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ({"dataschema": "urn:s", "dataversion": 2}, None),
        ({"dataschema": "urn:s", "dataversion": "2"}, None),  # a decimal string: read as 2
        ({"dataschema": "urn:s", "dataversion": 0}, "'dataversion' must be a positive"),
        ({"dataschema": "urn:s", "dataversion": True}, "'dataversion' must be a positive"),
        ({"dataschema": 5, "dataversion": 2}, "'dataschema' must be a string"),
    ],
)
def test_a_registered_event_is_read_as_its_attributes_say(
    members: dict[str, Any], error: str | None
) -> None:
    """A registered event's schema and version (what tidings writes for every
    registered type) are checked as the full lookup checks
    them, with an extension beside them or not."""
    for extra in ({}, {"personaldata": "v2"}):
        raw = orjson.dumps({**_members(), **members, **extra, "data": {"a": 1}})
        if error is not None:
            with pytest.raises(DecodeError, match=error):
                decode(raw)
            continue
        got = decode(raw)
        assert (got.dataschema, got.dataversion, got.extensions) == ("urn:s", 2, extra)


def test_a_document_built_in_python_decodes_as_one_read_by_orjson() -> None:
    """from_dict is given dicts that orjson did not make (tidings publish, the admin
    API): its lookups must not depend on orjson's own key objects."""
    doc = {**_members(subject="k"), "tracestate": "x=1", "personaldata": "v1", "data": [1]}
    copied = {"".join(list(k)): v for k, v in doc.items()}  # new str objects, equal
    assert from_dict(copied) == decode(orjson.dumps(doc))
    assert from_dict(copied).extensions == {"tracestate": "x=1", "personaldata": "v1"}


# Extension names, and the optional attributes beside them (of any type).
_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12) | st.sampled_from(
    ["dataschema", "dataversion", "subject", "causationid", "partitionkey", "tracestate"]
)
_values = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_names, _values, max_size=5), st.integers(0, 1000))
def test_extensions_anywhere_decode_to_the_same_event_as_tidings_order(
    members: dict[str, Any], seed: int
) -> None:
    """The same members in tidings' order and shuffled decode to equal events (or fail
    with the same reason), whichever decoder reads them."""
    doc = {**_members(), **members, "data": {"a": 1}}
    shuffled = list(doc.items())
    random.Random(seed).shuffle(shuffled)
    outcomes = []
    for version in (doc, dict(shuffled)):
        try:
            outcomes.append(decode(orjson.dumps(version)))
        except Exception as exc:
            outcomes.append(str(exc))  # type: ignore[arg-type]
    assert outcomes[0] == outcomes[1]
