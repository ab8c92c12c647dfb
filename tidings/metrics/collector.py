"""The metric families of one worker, built at each scrape from its counters, its
groups' handling times, the events its app sent and the last :class:`Snapshot`.

Names follow Prometheus's conventions: base units (seconds), ``_total`` on counters
(prometheus-client adds it), labels of low cardinality (group, topic, partition on
lag only, table, reason); never an event id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tidings.metrics.snapshot import Snapshot

if TYPE_CHECKING:
    from tidings.worker import Worker

__all__ = ["METRICS", "WorkerCollector"]

METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    # name as exposed -> (type, labels, what it is)
    "tidings_consumer_lag_messages": (
        "gauge", ("group", "topic", "partition"), "events a group has still to handle"
    ),
    "tidings_consumer_lag_seconds": (
        "gauge", ("group", "topic", "partition"),
        "age of the oldest event a group has still to handle (0: none)",
    ),
    "tidings_dead_letters": ("gauge", ("group",), "dead letters waiting for an operator"),
    "tidings_consumer_group_status": (
        "gauge", ("group", "topic", "status"),
        "a group's lag health on a topic, as tidings groups shows it: 1 for its status "
        "(OK, WARN or ERR), 0 for the other two",
    ),
    "messaging_process_duration_seconds": (
        "histogram", ("group",),
        "time to handle one event: its subscribers' calls, with their middleware (retries)",
    ),
    "tidings_events_consumed_total": (
        "counter", (), "events this worker's subscribers finished with (handled, or dead-lettered)"
    ),
    "tidings_events_unwanted_total": (
        "counter", (), "events read that no subscriber of the group wants (and replays sent twice)"
    ),
    "tidings_events_sent_total": ("counter", ("topic",), "events this process's app appended"),
    "tidings_handler_failures_total": ("counter", (), "handler calls that raised"),
    "tidings_retries_total": ("counter", (), "failed calls the Retry middleware tried again"),
    "tidings_events_dead_lettered_total": (
        "counter", (), "events this worker wrote to a dead-letter topic"
    ),
    "tidings_handler_timeouts_total": (
        "counter", (), "handler calls past their subscriber's timeout (failed attempts)"
    ),
    "tidings_events_cancelled_total": (
        "counter", (), "calls stopped and events skipped because their chain was cancelled"
    ),
    "tidings_handler_rate_limited_total": (
        "counter", (), "handler calls refused with a 429 (RateLimited): paused and made again"
    ),
    "tidings_events_skipped_total": (
        "counter", ("group", "topic", "reason"),
        'events a group never handled; reason="retention": removed before it read them',
    ),
    "tidings_outbox_backlog": ("gauge", ("table",), "outbox rows due and not yet relayed"),
    "tidings_outbox_oldest_age_seconds": (
        "gauge", ("table",), "seconds the oldest due outbox row has waited (0: none)"
    ),
    "tidings_scheduler_backlog": ("gauge", (), "delayed events waiting in the scheduler table"),
    "tidings_metrics_read_errors": (
        "gauge", (), "parts of the last reading of the log and databases that failed"
    ),
}  # fmt: skip
"""Every metric exposed: its type, labels and meaning (docs/guide.md lists them too)."""


def _doc(name: str) -> str:
    return METRICS[name][2]


class WorkerCollector(Collector):
    """Reads ``worker`` and ``snapshot()`` at each scrape; touches neither the log nor a
    database (the snapshot was read before, on the worker's loop)."""

    def __init__(self, worker: Worker, snapshot: Callable[[], Snapshot]) -> None:
        self.worker = worker
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield from _lag(snap)
        yield from self._counters()
        yield self._durations()
        yield from _backlogs(snap)
        yield _status(snap)

    def _counters(self) -> Iterator[Metric]:
        stats, app = self.worker.stats, self.worker.app
        for name, value in (
            ("tidings_events_consumed", stats.handled),
            ("tidings_events_unwanted", stats.skipped),
            ("tidings_handler_failures", stats.failed_attempts),
            ("tidings_retries", stats.retries),
            ("tidings_events_dead_lettered", stats.dead_lettered),
            ("tidings_handler_timeouts", stats.timed_out),
            ("tidings_events_cancelled", stats.cancelled),
            ("tidings_handler_rate_limited", stats.rate_limited),
        ):
            yield CounterMetricFamily(name, _doc(name + "_total"), value=value)
        sent = CounterMetricFamily(
            "tidings_events_sent", _doc("tidings_events_sent_total"), labels=["topic"]
        )
        for topic, n in sorted(app.sent.items()):
            sent.add_metric([topic], n)
        yield sent

    def _durations(self) -> Metric:
        name = "messaging_process_duration_seconds"
        family = HistogramMetricFamily(name, _doc(name), labels=["group"])
        for group, durations in sorted(self.worker.durations.items()):
            buckets = [(_le(bound), n) for bound, n in durations.cumulative()]
            family.add_metric([group], buckets, durations.sum)
        return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _lag(snap: Snapshot) -> Iterator[Metric]:
    labels = ["group", "topic", "partition"]
    messages = GaugeMetricFamily(
        "tidings_consumer_lag_messages", _doc("tidings_consumer_lag_messages"), labels=labels
    )
    seconds = GaugeMetricFamily(
        "tidings_consumer_lag_seconds", _doc("tidings_consumer_lag_seconds"), labels=labels
    )
    for lag in snap.lag:
        values = [lag.group, lag.topic, str(lag.partition)]
        messages.add_metric(values, lag.messages)
        seconds.add_metric(values, lag.seconds)
    dead = GaugeMetricFamily("tidings_dead_letters", _doc("tidings_dead_letters"), labels=["group"])
    for group, n in sorted(snap.dead_letters.items()):
        dead.add_metric([group], n)
    skipped = CounterMetricFamily(
        "tidings_events_skipped",
        _doc("tidings_events_skipped_total"),
        labels=["group", "topic", "reason"],
    )
    for (group, topic), n in sorted(snap.lost.items()):
        skipped.add_metric([group, topic, "retention"], n)
    yield from (messages, seconds, dead, skipped)


_STATUSES = ("OK", "WARN", "ERR")  # a group's (tidings.lag_health.GroupHealth)


def _status(snap: Snapshot) -> Metric:
    name = "tidings_consumer_group_status"
    family = GaugeMetricFamily(name, _doc(name), labels=["group", "topic", "status"])
    for (group, topic), current in sorted(snap.status.items()):
        for status in _STATUSES:
            family.add_metric([group, topic, status], 1.0 if status == current else 0.0)
    return family


def _backlogs(snap: Snapshot) -> Iterator[Metric]:
    backlog = GaugeMetricFamily(
        "tidings_outbox_backlog", _doc("tidings_outbox_backlog"), labels=["table"]
    )
    oldest = GaugeMetricFamily(
        "tidings_outbox_oldest_age_seconds",
        _doc("tidings_outbox_oldest_age_seconds"),
        labels=["table"],
    )
    for box in snap.outboxes:
        backlog.add_metric([box.table], box.due)
        oldest.add_metric([box.table], box.oldest_age or 0.0)
    yield from (backlog, oldest)
    if snap.scheduler is not None:
        yield GaugeMetricFamily(
            "tidings_scheduler_backlog",
            _doc("tidings_scheduler_backlog"),
            value=snap.scheduler.pending,
        )
    yield GaugeMetricFamily(
        "tidings_metrics_read_errors", _doc("tidings_metrics_read_errors"), value=snap.errors
    )
