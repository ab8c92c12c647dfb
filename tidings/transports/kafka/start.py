"""Where a group starts on Kafka: fixed at the group's first assignment of a partition.

A partition the group never committed on starts at ``start_from`` as it is when the
partition is assigned (its end for "latest", its beginning for "earliest"); the member
commits that position at once (``KafkaMember._on_assign``), so that the start is fixed
for good: a member that stops before anything came, and comes back after events were
published, resumes from there instead of resolving "latest" again (which skipped those
events; decision 0053). The conformance suite's ``conformance_start`` checks it.

It is done in the assignment callback (polling thread), where librdkafka lets a member
assign with explicit offsets (``assign`` for an eager member, ``incremental_assign``
for a cooperative one). Left alone, librdkafka looks the position up only when it first
fetches a newly assigned partition, a moment after the assignment; a member is started
(and a worker ready, so a caller may publish) once assigned, so an event appended in
between was skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from tidings.transport import StartFrom, TopicPartition

log = logging.getLogger("tidings.kafka")

TIMEOUT = 10.0  # seconds for each broker request of the fixing


def fix_start(
    consumer: Any, partitions: list[Any], start_from: StartFrom, group: str, *, eager: bool
) -> dict[TopicPartition, int]:
    """In ``on_assign``: assign ``partitions``, those the group never committed on at
    ``start_from``'s position now; return those positions, for the caller to commit.
    Empty when it could not ask the broker: librdkafka then assigns as usual and looks
    the position up itself, later (logged); the start is fixed at the next assignment."""
    if not partitions:
        return {}
    try:
        committed = consumer.committed(partitions, timeout=TIMEOUT)
        fresh = [tp for tp in committed if tp.offset < 0]  # OFFSET_INVALID: never committed
        for tp in fresh:
            low, high = consumer.get_watermark_offsets(tp, timeout=TIMEOUT, cached=False)
            tp.offset = high if start_from == "latest" else low
        if eager:
            consumer.assign(committed)
        else:
            consumer.incremental_assign(committed)
    except Exception as exc:
        log.warning(
            "group %r: could not fix where it starts (%s of %s) at assignment: %s; "
            "librdkafka looks it up when it first fetches",
            group, start_from, [(tp.topic, tp.partition) for tp in partitions], exc,
        )  # fmt: skip
        return {}
    return {(tp.topic, tp.partition): tp.offset for tp in fresh}
