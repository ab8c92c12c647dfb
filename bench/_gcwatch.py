"""Record garbage-collector pauses, to tell them apart from the log's own latency."""

from __future__ import annotations

import gc
import time
from typing import Any


class GCWatch:
    """While installed, collects ``(generation, pause_ms)`` for every collection."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((info["generation"], (time.perf_counter() - self._start) * 1e3))

    def __enter__(self) -> GCWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, float]:
        """Count and longest pause of full (generation 2) collections, longest of any."""
        full = [ms for gen, ms in self.pauses if gen == 2]
        return {
            "collections": len(self.pauses),
            "full_collections": len(full),
            "longest_full_ms": round(max(full, default=0.0), 2),
            "longest_ms": round(max((ms for _, ms in self.pauses), default=0.0), 2),
        }
