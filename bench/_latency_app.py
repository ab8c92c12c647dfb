"""The worker side of the cross-process latency figure, run by the benchmark as
``python -m tidings run bench._latency_app:app --url sqlite:///...``.

Each event carries its send time (``sent_ns``, ``time.time_ns()`` in the publishing
process); the handler appends ``sent_ns recv_ns warmup`` to ``$BENCH_LATENCY_OUT``
with one unbuffered ``os.write`` (a few microseconds), so the benchmark can count
the lines while the worker runs and never waits on a buffer. Full garbage
collections in this process are appended to ``$BENCH_LATENCY_OUT.gc`` (pause in ms),
so that a latency outlier can be told apart from a collector pause.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from bench._common import TOPIC
from tidings import Tidings

GROUP = "latency"

_out = os.environ["BENCH_LATENCY_OUT"]
_fd = os.open(_out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
_gc_fd = os.open(_out + ".gc", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
_gc_start = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    elif info["generation"] == 2:
        os.write(_gc_fd, b"%.3f\n" % ((time.perf_counter() - _gc_start[0]) * 1e3))


gc.callbacks.append(_on_gc)

app = Tidings(service="bench-latency-worker")


@app.subscriber(TOPIC, group=GROUP)
async def record(payload: Any) -> None:
    received = time.time_ns()
    os.write(_fd, b"%d %d %d\n" % (payload["sent_ns"], received, payload["warmup"]))
