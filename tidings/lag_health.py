"""Lag health without thresholds: Burrow's evaluation rules over a window of samples.

A sample is where a group stood in one partition at one moment: its committed offset
and its lag (:class:`~tidings.transport.LagSample`). Over the last ``window`` samples
of a partition, its status is, checked in this order, the first that holds:

- ``STOP``: there is lag now, and the newest sample is older than the window's own span
  (now minus newest > newest minus oldest): nobody has reported on it for that long;
- ``REWIND``: there is lag now, and the committed offset went backwards somewhere in
  the window and has not come back to where it was;
- ``OK``: the lag was at or under ``allowed_lag`` in some sample of the window;
- ``STALL``: the offset is the same in every sample (samples keep coming, nothing moves);
- ``WARN``: the offset moves but the lag never shrank from one sample to the next;
- ``OK`` otherwise (the lag shrank somewhere: the group keeps up, or catches up).

A partition with fewer than ``min_samples`` samples is ``OK`` with ``complete < 1``
(there is too little history to judge, which is not an alarm). A group's status is
the worst of its partitions', with ``STOP``, ``STALL`` and ``REWIND`` reported as
``ERR`` (naming the partition in the reason), as Burrow reports a group.

Pure: samples and the time in, statuses out; the samples' home is the caller's (the
SQLite log keeps them in a table, other transports in :class:`LagWindows`).
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tidings.transport import GroupPartition, LagSample

__all__ = [
    "ALLOWED_LAG",
    "MIN_SAMPLES",
    "RULES",
    "WINDOW",
    "GroupHealth",
    "Health",
    "LagStatus",
    "LagWindows",
    "PartitionKey",
    "Rules",
    "evaluate",
    "evaluate_group",
    "status",
]

WINDOW = 10
"""Samples kept and judged per partition (Burrow's ``intervals``)."""
MIN_SAMPLES = WINDOW
"""Fewer samples than this: ``OK``, incomplete (no judgement on too little history;
Burrow's default judges any window, which calls one old sample with lag ``STOP``)."""
ALLOWED_LAG = 0
"""Lag at or under this counts as none (Burrow's ``allowed-lag``)."""

PartitionKey = tuple[str, str, int]
"""A partition of a group: (group, topic, partition)."""


class LagStatus(enum.IntEnum):
    """A partition's or a group's lag health, ordered by severity (Burrow's order)."""

    OK = 1
    WARN = 2
    ERR = 3
    STOP = 4
    STALL = 5
    REWIND = 6


@dataclass(frozen=True, slots=True)
class Health:
    """One partition's status, why, and how full its window was (1.0: full)."""

    status: LagStatus
    reason: str
    complete: float
    lag: int


@dataclass(frozen=True, slots=True)
class GroupHealth:
    """A group's status (``OK``, ``WARN`` or ``ERR``), why (its worst partition, or
    its least sampled one), how full its least sampled partition's window is (1.0:
    every partition judged on a full window), and each partition's health."""

    status: LagStatus
    reason: str
    complete: float
    partitions: Mapping[PartitionKey, Health]


def _n(value: int) -> str:
    return f"{value:,}"


@dataclass(frozen=True, slots=True)
class Rules:
    """The evaluation's parameters: ``window`` samples judged per partition (Burrow's
    ``intervals``), at least ``min_samples`` of them to judge at all (fewer: ``OK``,
    incomplete), lag at or under ``allowed_lag`` counted as none (Burrow's
    ``allowed-lag``)."""

    window: int = WINDOW
    min_samples: int = MIN_SAMPLES
    allowed_lag: int = ALLOWED_LAG


RULES = Rules()


def evaluate(
    samples: Sequence[LagSample], now_ms: int, rules: Rules = RULES, lag: int | None = None
) -> Health:
    """One partition's health from its samples (oldest first; the last ``window`` are
    judged) at ``now_ms`` (the module doc gives the rules); ``lag``: its lag now, if
    known (a stopped group's newest sample may be old), else the newest sample's."""
    kept = list(samples)[-rules.window :]
    complete = min(len(kept) / rules.window, 1.0)
    if not kept:
        return Health(LagStatus.OK, "no samples yet", 0.0, lag or 0)
    lag = kept[-1].lag if lag is None else lag
    if len(kept) < rules.min_samples:
        reason = f"too few samples to judge ({len(kept)} of {rules.min_samples}); lag is {_n(lag)}"
        return Health(LagStatus.OK, reason, complete, lag)
    status, reason = _judge(kept, now_ms, rules.allowed_lag, lag)
    return Health(status, reason, complete, lag)


def _judge(kept: list[LagSample], now_ms: int, allowed_lag: int, lag: int) -> tuple[LagStatus, str]:
    first, last = kept[0], kept[-1]
    if lag <= allowed_lag:
        return LagStatus.OK, f"lag is {_n(lag)}"
    quiet, span = now_ms - last.ts_ms, last.ts_ms - first.ts_ms
    if quiet > span:
        return LagStatus.STOP, (
            f"no sample for {quiet / 1000:.1f}s, longer than the window's "
            f"{span / 1000:.1f}s, while lag is {_n(lag)}"
        )
    rewind = _unrecovered_rewind(kept)
    if rewind is not None:
        before, after = rewind
        return LagStatus.REWIND, (
            f"offset went back from {_n(before)} to {_n(after)} and has not returned; "
            f"lag is {_n(lag)}"
        )
    if any(s.lag <= allowed_lag for s in kept):
        return LagStatus.OK, f"lag was {_n(allowed_lag)} or less within the window; now {_n(lag)}"
    if all(s.committed == first.committed for s in kept):
        return LagStatus.STALL, (
            f"offset {_n(first.committed)} has not moved for {len(kept)} samples "
            f"while lag is {_n(lag)}"
        )
    if all(b.lag >= a.lag for a, b in itertools.pairwise(kept)):
        return LagStatus.WARN, (
            f"lag never shrank over {len(kept)} samples: {_n(first.lag)} to {_n(lag)} "
            f"(offset {_n(first.committed)} to {_n(last.committed)})"
        )
    return LagStatus.OK, f"lag shrinks; now {_n(lag)}"


def _unrecovered_rewind(kept: list[LagSample]) -> tuple[int, int] | None:
    """The first backwards step of the offset (from, to), unless a later sample came
    back to ``from`` (a rebalance redoing a little work is no rewind)."""
    for i in range(1, len(kept)):
        before, after = kept[i - 1].committed, kept[i].committed
        if after < before:
            if any(s.committed >= before for s in kept[i:]):
                return None
            return before, after
    return None


def evaluate_group(
    samples: Mapping[PartitionKey, Sequence[LagSample]],
    now_ms: int,
    rules: Rules = RULES,
    lags: Mapping[PartitionKey, int] | None = None,
) -> GroupHealth:
    """A group's health from its partitions' samples (every key one group's) and, if
    known, their lags now (see :func:`evaluate`)."""
    now_lags = lags or {}
    parts = {
        key: evaluate(rows, now_ms, rules, now_lags.get(key))
        for key, rows in sorted(samples.items())
    }
    if not parts:
        return GroupHealth(LagStatus.OK, "no partitions", 0.0, parts)
    key, worst = max(parts.items(), key=lambda kv: (kv[1].status, kv[1].lag))
    thin_key, thinnest = min(parts.items(), key=lambda kv: kv[1].complete)
    group_status = min(worst.status, LagStatus.ERR)
    if worst.status is not LagStatus.OK:
        reason = f"{key[1]}[{key[2]}] {worst.status.name}: {worst.reason}"
    elif thinnest.complete < 1.0:
        reason = f"{thin_key[1]}[{thin_key[2]}]: {thinnest.reason}"
    else:
        reason = f"all {len(parts)} partition(s) ok"
    return GroupHealth(group_status, reason, thinnest.complete, parts)


def status(
    samples: Mapping[PartitionKey, Sequence[LagSample]],
    now_ms: int,
    rules: Rules = RULES,
    lags: Mapping[PartitionKey, int] | None = None,
) -> LagStatus:
    """A group's status alone (what a status metric reports: ``int(status(...))``,
    1 OK, 2 WARN, 3 ERR)."""
    return evaluate_group(samples, now_ms, rules, lags).status


class LagWindows:
    """Samples kept in memory, for transports whose log does not keep them (Kafka,
    NATS, memory): each :meth:`observe` of the groups' rows adds one sample per
    partition, the last ``window`` kept."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._samples: dict[PartitionKey, deque[LagSample]] = {}

    def observe(self, rows: Iterable[GroupPartition], now_ms: int) -> None:
        """Add a sample of each row (a partition the group has started on)."""
        for row in rows:
            if row.committed is None:
                continue
            key = (row.group, row.topic, row.partition)
            kept = self._samples.setdefault(key, deque(maxlen=self.window))
            kept.append(LagSample(now_ms, row.committed, row.lag))

    def samples(self) -> dict[PartitionKey, list[LagSample]]:
        """Every partition's samples, oldest first."""
        return {key: list(kept) for key, kept in self._samples.items()}
