"""Judging other members' leases by this process's own monotonic clock.

A lease is expired when *this* process has seen it unchanged (the same beat, version
or sequence) for a lease length: no wall-clock stamp written by another process is
compared, so a step of the wall clock neither expires a live lease nor keeps a dead one
alive (finding 9 of issue 15). The cost: a process that has just started waits a whole
lease before it calls an existing holder dead, since it has not seen its beat move.

For any adapter whose members leave a changing mark in shared state (a beat counter in
SQLite, a key's sequence in a NATS bucket).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Hashable
from typing import Generic, TypeVar

__all__ = ["LeaseWatch"]

K = TypeVar("K", bound=Hashable)


class LeaseWatch(Generic[K]):
    """Which leases are alive, as ``monotonic`` (the transport's clock) sees their beats.

    A lease is expired when its beat has been seen unchanged for ``lease`` seconds; a
    key or a beat never seen before starts the count. Thread-safe (a writer thread of
    the SQLite log asks too).
    """

    def __init__(self, monotonic: Callable[[], float], lease: float) -> None:
        self.monotonic = monotonic  # the transport's clock, which tests may replace
        self.lease = lease
        self._seen: dict[K, tuple[object, float]] = {}  # key -> (beat, first seen)
        self._lock = threading.Lock()

    def expired(self, key: K, beat: object) -> bool:
        """Whether ``key``'s lease, now at ``beat``, has stood still for a lease."""
        now = self.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or seen[0] != beat:
                self._seen[key] = (beat, now)
                return False
            return now - seen[1] >= self.lease

    def retain(self, keys: Collection[K]) -> None:
        """Forget every key but ``keys`` (the leases that still exist)."""
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if k in keys}

    def forget(self, key: K) -> None:
        """Drop what was seen of ``key`` (its holder is gone)."""
        with self._lock:
            self._seen.pop(key, None)
