"""Lag health for ``tidings groups``: Burrow's statuses (``tidings.lag_health``) per
partition and per group and topic, from the samples the log keeps (SQLite) or, where
it keeps none (Kafka, NATS, memory), from a :class:`~tidings.lag_health.LagWindows` that
the caller fills by polling (``tidings groups --watch``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tidings.lag_health import GroupHealth, Health, LagWindows, PartitionKey, evaluate_group
from tidings.transport import GroupPartition, LagSample

__all__ = ["health_json", "lag_health", "partition_health", "partition_samples"]


def partition_samples(
    rows: Sequence[GroupPartition], now_ms: int, windows: LagWindows | None = None
) -> dict[PartitionKey, list[LagSample]] | None:
    """The samples of each of ``rows``' partitions: the log's, where it keeps them;
    else ``windows``' after it observes ``rows`` at ``now_ms``; None: neither (a
    one-shot look at a log that keeps no samples cannot judge health)."""
    if rows and all(r.samples is not None for r in rows):
        return {(r.group, r.topic, r.partition): list(r.samples or ()) for r in rows}
    if windows is None:
        return None
    windows.observe(rows, now_ms)
    kept = windows.samples()
    return {
        (r.group, r.topic, r.partition): kept.get((r.group, r.topic, r.partition), []) for r in rows
    }


def lag_health(
    rows: Sequence[GroupPartition], now_ms: int, windows: LagWindows | None = None
) -> dict[tuple[str, str], GroupHealth] | None:
    """Per (group, topic) of ``rows``, its health and each partition's; None where no
    samples are kept (see :func:`partition_samples`)."""
    samples = partition_samples(rows, now_ms, windows)
    if samples is None:
        return None
    by: dict[tuple[str, str], dict[PartitionKey, list[LagSample]]] = {}
    for key, kept in samples.items():
        by.setdefault(key[:2], {})[key] = kept
    lags = {(r.group, r.topic, r.partition): r.lag for r in rows}
    return {line: evaluate_group(parts, now_ms, lags=lags) for line, parts in sorted(by.items())}


def health_json(health: Health | GroupHealth | None) -> dict[str, Any]:
    """The health keys of ``tidings groups --json``: ``health`` (OK, WARN, ERR, STOP,
    STALL, REWIND; null where the log keeps no samples), ``health_reason``,
    ``health_complete`` (the share of a full window of samples: below 1, too little
    history to judge, shown as OK)."""
    if health is None:
        return {"health": None, "health_reason": None, "health_complete": None}
    return {
        "health": health.status.name,
        "health_reason": health.reason,
        "health_complete": round(health.complete, 2),
    }


def partition_health(
    lines: dict[tuple[str, str], GroupHealth] | None, rows: Iterable[GroupPartition]
) -> list[Health | None]:
    """Each row's own health out of :func:`lag_health`'s answer."""
    if lines is None:
        return [None for _ in rows]
    return [lines[(r.group, r.topic)].partitions.get((r.group, r.topic, r.partition)) for r in rows]
