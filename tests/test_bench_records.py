"""The raw contestants of the transport benchmarks send what tidings sends.

``bench/bench_kafka.py`` and ``bench/bench_nats.py`` compare tidings with the raw client
making its records by hand (``bench._contest.by_hand``). The comparison is fair only if
those records are the same kind of event as tidings': CloudEvents tidings reads back
with the same attributes and payload, of about the same size. These tests hold the
benchmarks to that.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench._contest import EVENT_TYPE, Ticked, event
from bench._kafka_contestants import hand_record, kafka_record
from bench._nats_contestants import hand_message, nats_message
from tidings.codec import decode
from tidings.codec.binary import from_kafka
from tidings.envelope import Event


def attributes(e: Event) -> dict[str, object]:
    """What must match between a hand-made event and tidings' own (not id and time)."""
    return {
        name: getattr(e, name)
        for name in (
            "type", "source", "subject", "specversion", "datacontenttype", "dataschema",
            "dataversion", "causationid", "traceparent", "partitionkey", "extensions",
        )
    }  # fmt: skip


def test_a_hand_made_kafka_record_reads_back_as_tidings_own() -> None:
    body = event(7)
    key, value, headers, _ = hand_record(body)
    t_key, t_value, t_headers, _ = kafka_record(body)
    mine, theirs = decode(from_kafka(value, headers)), decode(from_kafka(t_value, t_headers))
    assert attributes(mine) == attributes(theirs)
    assert mine.type == EVENT_TYPE
    assert key == t_key
    assert mine.correlationid == mine.id != theirs.id
    assert abs(mine.time - datetime.now(UTC)).total_seconds() < 60
    assert Ticked.model_validate(mine.data) == body
    assert [name for name, _ in headers] == [name for name, _ in t_headers]
    size = len(value) + sum(len(k) + len(v) for k, v in headers)
    t_size = len(t_value) + sum(len(k) + len(v) for k, v in t_headers)
    assert size == pytest.approx(t_size, rel=0.05)


def test_a_hand_made_nats_message_reads_back_as_tidings_own() -> None:
    body = event(8)
    subject, value, headers = hand_message(body)
    t_subject, t_value, t_headers = nats_message(body)
    mine, theirs = decode(value), decode(t_value)
    assert attributes(mine) == attributes(theirs)
    assert subject == t_subject
    assert headers.keys() == t_headers.keys()
    assert headers["Nats-Msg-Id"] == mine.id
    assert Ticked.model_validate(mine.data) == body
    assert len(value) == pytest.approx(len(t_value), rel=0.05)
