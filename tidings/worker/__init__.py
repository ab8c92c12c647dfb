"""The worker: runs an app's subscribers and components.

- :mod:`~tidings.worker.worker`: :class:`Worker` (all groups, components, signals,
  :func:`tune_gc`);
- :mod:`~tidings.worker.group`: one group's fetch loop, lanes and commits;
- :mod:`~tidings.worker.dispatch`: one group's subscribers behind their middleware.

What a fetched record goes through before its subscribers (replays, poison, parking)
is :class:`tidings.dead_letters.Intake`.
"""

from __future__ import annotations

from tidings.worker.worker import Worker, tune_gc

__all__ = ["Worker", "tune_gc"]
