"""What a worker did, counted by the worker, its middleware and its dead letters; and
how long its handlers took (:class:`Durations`, kept only when asked for)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DURATION_BUCKETS", "Durations", "Stats"]


@dataclass
class Stats:
    """Counters of one worker, over all its groups."""

    handled: int = 0
    failed_attempts: int = 0
    retries: int = 0  # failed attempts followed by another (the Retry middleware's waits)
    skipped: int = 0  # events no subscriber of the group wants, and replays sent twice
    undecodable: int = 0
    dead_lettered: int = 0  # events written to their group's dead-letter topic
    parked: int = 0  # of which, parked behind an earlier dead letter of their key
    duplicates: int = 0  # redelivered events an inbox had already seen
    abandoned: int = 0  # handlers still running when the worker had to stop without them
    timed_out: int = 0  # handler calls past their subscriber's timeout= (failed attempts)
    cancelled: int = 0  # calls cancelled and events skipped because their chain was cancelled
    rate_limited: int = 0  # calls refused with a 429 (RateLimited): paused and made again


DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of :class:`Durations`' buckets: a handler's call is a fraction
of a millisecond to seconds."""


class Durations:
    """A histogram of one group's event handling times, in seconds: a count per bucket
    (``counts[i]``: durations <= ``bounds[i]`` and above the bound before; the last, above
    every bound), their sum and count. Observed on the worker's loop only (a run handled
    in a thread hands its times back), so plain integers suffice; a scrape reads them.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def observe_marks(self, marks: Sequence[float], count: int) -> None:
        """Observe the first ``count`` durations between consecutive clock readings
        ``marks`` (``marks[i + 1] - marks[i]``: the i-th call of a run read the clock
        once, when it ended), each in its own bucket as :meth:`observe` puts it. When
        all of them took no more than the first bound together, each did: one count."""
        if count <= 0:
            return
        total = marks[count] - marks[0]
        bounds, counts = self.bounds, self.counts
        first = bounds[0]
        above = 0
        if total > first:  # some may lie above the first bucket: each one's own
            previous = marks[0]
            for mark in marks[1 : count + 1]:
                seconds, previous = mark - previous, mark
                if seconds > first:
                    counts[bisect_left(bounds, seconds)] += 1
                    above += 1
        counts[0] += count - above
        self.sum += total

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, durations at or below it), ending with (inf, count): the form
        Prometheus exposes."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
