"""Prometheus metrics of a worker: ``tidings run --metrics-port PORT`` serves them on
``/metrics``, and :func:`asgi_app` mounts them in any ASGI app (FastAPI, say).

Needs the ``metrics`` extra (``pip install 'tidings[metrics]'``, prometheus-client);
without it, importing this module raises ImportError saying so, and nothing of it is
loaded anywhere else. ::

    worker = Worker(app)
    metrics = WorkerMetrics(worker)            # before the worker runs
    api.mount("/metrics", asgi_app(metrics))   # or: await serve_metrics(metrics, port=9464)

Nothing is counted per event for it: a scrape reads the worker's counters
(:class:`tidings.stats.Stats`), each group's handling times (:class:`Durations`, kept
once :class:`WorkerMetrics` asks), the events the app sent, and, from the log and the
databases, at most once per ``cache_seconds``: lag per group, topic and partition (in
events, and in seconds: the age of the oldest unhandled event), dead letters waiting
per group, events retention removed before a group read them, the outboxes' and the
scheduler's backlogs. The names, types and labels are listed in docs/guide.md
("Metrics") and :data:`METRICS`.

- :mod:`~tidings.metrics.snapshot`: what a scrape reads from the log and databases;
- :mod:`~tidings.metrics.collector`: the metric families, from a snapshot and counters;
- :mod:`~tidings.metrics.serving`: :class:`WorkerMetrics` (the cache), the HTTP
  endpoint and the ASGI app.
"""

from __future__ import annotations

try:
    import prometheus_client  # noqa: F401  (the extra's one dependency)
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    raise ImportError(
        "tidings.metrics needs prometheus-client: pip install 'tidings[metrics]'"
    ) from exc

from tidings.metrics.collector import METRICS
from tidings.metrics.serving import WorkerMetrics, asgi_app, serve_metrics
from tidings.metrics.snapshot import Backlog, Lag, Snapshot, read_snapshot

__all__ = [
    "METRICS",
    "Backlog",
    "Lag",
    "Snapshot",
    "WorkerMetrics",
    "asgi_app",
    "read_snapshot",
    "serve_metrics",
]
