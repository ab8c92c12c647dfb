"""LeaseWatch: a lease is expired when this process has seen it unchanged for a lease
length of its own monotonic clock (the SQLite and NATS members judge others by it)."""

from __future__ import annotations

from tidings.transports._leases import LeaseWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_expires_only_after_a_whole_lease_unchanged() -> None:
    clock = Clock()
    watch: LeaseWatch[str] = LeaseWatch(clock, 10.0)
    assert not watch.expired("a", 1)  # first seen: the count starts now
    clock.now += 9.9
    assert not watch.expired("a", 1)
    clock.now += 0.1
    assert watch.expired("a", 1)


def test_a_beat_that_moves_starts_the_count_again() -> None:
    clock = Clock()
    watch: LeaseWatch[str] = LeaseWatch(clock, 10.0)
    watch.expired("a", 1)
    clock.now += 9.0
    assert not watch.expired("a", 2)  # renewed
    clock.now += 9.0
    assert not watch.expired("a", 2)
    clock.now += 1.0
    assert watch.expired("a", 2)


def test_retain_forgets_the_leases_that_are_gone() -> None:
    clock = Clock()
    watch: LeaseWatch[str] = LeaseWatch(clock, 10.0)
    watch.expired("a", 1)
    watch.expired("b", 1)
    clock.now += 10.0
    watch.retain({"b"})
    assert watch.expired("b", 1)
    assert not watch.expired("a", 1)  # seen afresh: a whole lease to wait again
    watch.forget("b")
    assert not watch.expired("b", 1)
