"""Where a group that starts at "latest" starts on Kafka: the end of each partition
the group never committed on, as it is when the partition is assigned.

librdkafka, left alone, looks the end up only when it first fetches a newly assigned
partition, a moment after the assignment; a member is started (and a worker ready, so
a caller may publish) once assigned, so an event appended in between was skipped (the
conformance suite's "latest" test failed now and then on Kafka). This is done in the
assignment callback (polling thread), where librdkafka lets an eager member assign with
explicit offsets.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("tidings.kafka")

TIMEOUT = 10.0  # seconds for each broker request of the pinning


def pin_latest(consumer: Any, partitions: list[Any], group: str) -> bool:
    """In ``on_assign`` of an eager (``range``) member starting at "latest": assign
    ``partitions`` with those that the group never committed on set to their current
    end. Return whether it assigned (else librdkafka assigns as usual and looks the
    end up itself, later: logged)."""
    if not partitions:
        return False
    try:
        committed = consumer.committed(partitions, timeout=TIMEOUT)
        fresh = [tp for tp in committed if tp.offset < 0]  # OFFSET_INVALID: never committed
        for tp in fresh:
            _low, high = consumer.get_watermark_offsets(tp, timeout=TIMEOUT, cached=False)
            tp.offset = high
        consumer.assign(committed)
    except Exception as exc:
        log.warning(
            "group %r: could not fix where it starts (the end of %s) at assignment: %s; "
            "librdkafka looks the end up when it first fetches",
            group, [(tp.topic, tp.partition) for tp in partitions], exc,
        )  # fmt: skip
        return False
    return True
