"""What every figure uses: the run configuration, work folders, events and apps."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench._common import (
    EVENT_TYPE,
    PARTITIONS,
    TOPIC,
    payload,
)
from tidings import Tidings
from tidings.codec import encode

# -- configuration ---------------------------------------------------------------------

LOOP_SECONDS = 120.0  # no single measured loop runs longer than this


@dataclass(frozen=True)
class Config:
    quick: bool
    synchronous: str = "FULL"
    rounds: int = 3  # interleaved subject/baseline rounds; the median is reported
    batch_events: int = 50_000  # figure 1, per round
    batch_size: int = 1000
    concurrent_events: int = 20_000  # figure 2, per round
    concurrent_tasks: int = 50
    raw_single_events: int = 3000  # figure 2's baseline: one fsync per event
    one_partition_events: int = 20_000  # figure 2b: single publishes to one partition
    one_partition_tasks: int = 100
    e2e_events: int = 50_000  # figure 3, per round
    e2e_rounds: int = 3
    latency_seconds: float = 10.0  # figure 4, measured part
    latency_warmup: int = 500
    latency_rate: int = 1000
    litequeue_events: int = 5000  # figure 5
    micro_number: int = 2000  # calls per timing; the best of micro_repeat timings
    micro_repeat: int = 25

    @classmethod
    def make(cls, quick: bool, synchronous: str) -> Config:
        if not quick:
            return cls(quick=False, synchronous=synchronous)
        return cls(
            quick=True,
            synchronous=synchronous,
            rounds=1,
            batch_events=20_000,
            concurrent_events=5000,
            raw_single_events=1000,
            one_partition_events=5000,
            e2e_events=10_000,
            e2e_rounds=1,
            latency_seconds=3.0,
            latency_warmup=300,
            litequeue_events=2000,
            micro_number=1000,
            micro_repeat=7,
        )


def sqlite_url(path: str, synchronous: str) -> str:
    return f"sqlite:///{os.path.abspath(path)}?synchronous={synchronous}"


class Workdir:
    """Fresh file names under one temporary folder; each run's files removed after."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._n = itertools.count()

    @contextlib.contextmanager
    def folder(self, name: str) -> Iterator[str]:
        path = os.path.join(self.root, f"{next(self._n):03d}-{name}")
        os.makedirs(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def encoded_events(n: int) -> list[bytes]:
    """The envelopes tidings would write for payloads 0..n-1, encoded (for baselines)."""
    app = Tidings("memory://", service="bench")
    return [encode(app.build(payload(i), type=EVENT_TYPE)) for i in range(n)]


def new_app(
    path: str,
    synchronous: str,
    service: str = "bench",
    partitions: int = PARTITIONS,
    tracing: Any = False,
) -> Tidings:
    app = Tidings(sqlite_url(path, synchronous), service=service, tracing=tracing)
    app.topic(TOPIC, partitions=partitions)
    return app
