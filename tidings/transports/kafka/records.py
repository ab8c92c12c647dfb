"""librdkafka messages as tidings Records: the CloudEvents Kafka binding read back
(``tidings.codec.binary.from_kafka``), for group members and plain reads alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidings.codec.binary import from_kafka
from tidings.transport import Record, TopicPartition

__all__ = ["SHARED", "to_record", "to_records"]

SHARED = 20_000  # records kept for the transport's other groups (then forgotten at once)


def to_record(msg: Any, generation: int = 0) -> Record:
    key = msg.key()
    return Record(
        msg.topic(),
        msg.partition(),
        msg.offset(),
        msg.timestamp()[1],
        key.decode("utf-8", "replace") if key is not None else None,
        from_kafka(msg.value(), msg.headers()),
        generation,
    )


def to_records(
    msgs: list[Any], leases: Mapping[TopicPartition, int], shared: dict[Any, Record] | None
) -> list[Record]:
    """The Records of polled messages of partitions still owned (``leases``: partition ->
    the lease generation it is owned under, which each record carries).

    With ``shared`` (several groups read through one transport), a record converted for
    one group is reused by the others: they read the same records at about the same
    time, and the conversion (``from_kafka``) is most of what reading costs here. Keyed
    by position and timestamp, since a topic deleted and created again reuses offsets.
    """
    out = []
    for m in msgs:
        topic, partition = m.topic(), m.partition()
        generation = leases.get((topic, partition))
        if generation is None:
            continue  # revoked since it was polled
        if shared is None:
            out.append(to_record(m, generation))
            continue
        place = (topic, partition, m.offset(), m.timestamp()[1])
        record = shared.get(place)
        if record is None:
            if len(shared) >= SHARED:
                shared.clear()  # cheaper than evicting one by one
            record = shared[place] = to_record(m, generation)
        elif record.generation != generation:  # another group's lease
            record = record._replace(generation=generation)
        out.append(record)
    return out
