"""Reading the record files of ``recorder.py`` (its lines' format), for the tests of
worker processes on every transport."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a record file: an event a process began or finished handling."""

    kind: str
    group: str
    partition: int
    offset: int
    id: str
    key: str
    seq: int
    pid: int
    t: int  # CLOCK_MONOTONIC ns, comparable across processes on one machine

    @classmethod
    def parse(cls, text: str) -> Line:
        kind, group, part, off, event_id, key, seq, pid, t = text.split()
        return cls(kind, group, int(part), int(off), event_id, key, int(seq), int(pid), int(t))


def by_partition(lines: Iterable[Line]) -> dict[int, list[Line]]:
    """The lines of each partition, in time order."""
    out: dict[int, list[Line]] = defaultdict(list)
    for line in sorted(lines, key=lambda x: x.t):
        out[line.partition].append(line)
    return out
