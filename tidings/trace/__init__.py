"""``tidings trace ID``: the causal tree of a request, across every topic.

A :class:`Tracer` reads the user topics (not ``_tidings.*``, ``.dlq`` or ``.retry``)
outside any group, a bounded window of each partition, and keeps the events of one
correlation id; :meth:`Tracer.trace` arranges them by ``causationid`` and says, for
each event and each group that reads its topic, whether the group handled it, still
has it to handle, or dead-lettered it (from the group's committed offsets and its
``<group>.dlq``). Given an event id instead, the tree is that event and what it caused.
:meth:`Tracer.refresh` reads only what is new, so ``--follow`` calls it again and
:func:`changes` says what moved between two traces.
"""

from __future__ import annotations

from tidings.trace.tracer import DEFAULT_SCAN, Tracer, follow, is_traced_topic, trace
from tidings.trace.tree import (
    Change,
    GroupStatus,
    Status,
    Trace,
    TraceNode,
    changes,
    node_json,
    note,
    status_json,
    trace_json,
)

__all__ = [
    "DEFAULT_SCAN",
    "Change",
    "GroupStatus",
    "Status",
    "Trace",
    "TraceNode",
    "Tracer",
    "changes",
    "follow",
    "is_traced_topic",
    "node_json",
    "note",
    "status_json",
    "trace",
    "trace_json",
]
