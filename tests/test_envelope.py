"""The envelope: UUIDv7 ids, event type names, the frozen Event record."""

from __future__ import annotations

import itertools
import pickle
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tidings.envelope import SPECVERSION, Event, new_id, validate_type
from tidings.errors import EventError, InvalidEventType


def _ms_of(event_id: str) -> int:
    return uuid.UUID(event_id).int >> 80


def test_new_id_is_a_uuid_version_7_with_the_rfc_variant() -> None:
    for _ in range(1000):
        value = uuid.UUID(new_id())
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert (value.int >> 76) & 0xF == 0x7  # version nibble
        assert (value.int >> 62) & 0b11 == 0b10  # variant bits


def test_new_id_is_the_canonical_lower_case_string() -> None:
    event_id = new_id()
    assert event_id == str(uuid.UUID(event_id))
    assert len(event_id) == 36


def test_100k_ids_made_in_a_tight_loop_are_unique_and_strictly_increasing() -> None:
    ids = [new_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    # Strictly increasing as strings (what a log or a database index sorts by)...
    assert all(a < b for a, b in itertools.pairwise(ids))
    # ...and as the 128-bit numbers.
    numbers = [uuid.UUID(i).int for i in ids]
    assert all(a < b for a, b in itertools.pairwise(numbers))


def test_ids_made_by_concurrent_threads_are_unique_and_ordered_per_thread() -> None:
    per_thread: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        for _ in range(10_000):
            out.append(new_id())

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for out in per_thread for i in out]
    assert len(set(everything)) == len(everything) == 80_000
    for out in per_thread:
        assert out == sorted(out)


def test_new_id_embeds_the_current_unix_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    event_id = new_id()
    after = time.time_ns() // 1_000_000
    # A burst of earlier ids may have borrowed a few milliseconds ahead; never more.
    assert before - 1 <= _ms_of(event_id) <= after + 50


def test_new_ids_across_milliseconds_keep_the_time_order() -> None:
    first = new_id()
    time.sleep(0.005)
    second = new_id()
    assert _ms_of(second) > _ms_of(first)
    assert second > first


@pytest.mark.parametrize(
    "name", ["task.created", "billing.invoice.paid", "task.reminder_due", "v2.user.signed_up"]
)
def test_validate_type_accepts_lower_case_dotted_names(name: str) -> None:
    assert validate_type(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "Task.Created",
        "taskcreated",
        "task.",
        ".x",
        "task created",
        "task..created",
        "task.created ",
        "task-created.x",
        "1task.created",
        "",
    ],
)
def test_validate_type_rejects_other_names_with_a_valid_example(name: str) -> None:
    with pytest.raises(InvalidEventType) as info:
        validate_type(name)
    message = str(info.value)
    assert repr(name) in message
    assert "'task.created'" in message


@pytest.mark.parametrize("value", [None, 3, b"task.created"])
def test_validate_type_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidEventType):
        validate_type(value)  # type: ignore[arg-type]


def test_validate_type_rejects_unhashable_values() -> None:
    with pytest.raises(InvalidEventType):
        validate_type(["task.created"])  # type: ignore[arg-type]


def test_invalid_event_type_is_an_event_error() -> None:
    assert issubclass(InvalidEventType, EventError)


def test_event_defaults() -> None:
    before = datetime.now(UTC)
    event = Event(type="task.created", source="taskapi", data={"id": "t1"})
    after = datetime.now(UTC)
    assert event.specversion == SPECVERSION == "1.0"
    assert uuid.UUID(event.id).version == 7
    assert before <= event.time <= after
    assert event.time.utcoffset() == timedelta(0)
    assert event.datacontenttype == "application/json"
    assert event.extensions == {}
    assert event.subject is None
    assert event.correlationid is None


def test_event_construction_validates_the_type() -> None:
    with pytest.raises(InvalidEventType):
        Event(type="TaskCreated", source="taskapi")


def test_event_rejects_a_naive_time_with_a_fix() -> None:
    with pytest.raises(ValueError, match="time zone") as info:
        Event(type="task.created", source="taskapi", time=datetime(2024, 1, 1, 12, 0))
    assert "datetime.now(UTC)" in str(info.value)


def test_event_accepts_any_aware_time() -> None:
    paris = timezone(timedelta(hours=2))
    event = Event(type="task.created", source="taskapi", time=datetime(2024, 6, 1, tzinfo=paris))
    assert event.time.utcoffset() == timedelta(hours=2)


def test_event_is_immutable() -> None:
    event = Event(type="task.created", source="taskapi")
    with pytest.raises(AttributeError, match="immutable"):
        event.type = "task.deleted"
    with pytest.raises(AttributeError, match="immutable"):
        event.id = new_id()
    with pytest.raises(AttributeError):
        event.brand_new = 1
    with pytest.raises(AttributeError, match="immutable"):
        del event.subject
    assert event.type == "task.created"


def test_events_compare_by_value_and_hash_by_id() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    a = Event(type="task.created", source="s", id="x", time=when, data={"n": 1})
    b = Event(type="task.created", source="s", id="x", time=when, data={"n": 1})
    assert a == b
    assert hash(a) == hash(b)
    assert a != b.with_(data={"n": 2})
    assert a != b.with_(extensions={"e": 1})
    assert len({a, b}) == 1


def test_an_event_survives_pickling() -> None:
    event = Event(
        type="task.created",
        source="s",
        data={"n": 1},
        subject="t1",
        correlationid="c",
        dataversion=2,
        extensions={"tenant": "acme"},
    )
    assert pickle.loads(pickle.dumps(event)) == event


def test_with_returns_a_changed_copy_and_validates_it() -> None:
    event = Event(type="task.created", source="taskapi", subject="t1")
    changed = event.with_(subject="t2")
    assert changed.subject == "t2"
    assert event.subject == "t1"
    assert changed.id == event.id
    with pytest.raises(InvalidEventType):
        event.with_(type="Bad")
    with pytest.raises(TypeError, match="no attribute"):
        event.with_(colour="red")


def test_key_is_the_partitionkey_when_set_else_the_subject() -> None:
    assert Event(type="task.created", source="s", subject="t1").key == "t1"
    assert Event(type="task.created", source="s", subject="t1", partitionkey="p").key == "p"
    assert Event(type="task.created", source="s").key is None


def test_each_event_gets_its_own_id() -> None:
    a = Event(type="task.created", source="s")
    b = Event(type="task.created", source="s")
    assert a.id != b.id
    assert a.id < b.id
