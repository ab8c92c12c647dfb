"""A transport that fails, from a seed: errors, delays, redeliveries, a killed member.

:class:`FaultyTransport` wraps any transport and injects, within the transport
contract, what a real log does to a worker on a bad day: errors and delays on appends,
fetches, commits, reads and descriptions, at the transport's own fault points (lease
renewals, claims), redelivery of a partition as after a rebalance, and the death of a
member at an await point, as by SIGKILL. Every decision comes from a random stream per
operation seeded with ``seed``: the i-th call of an operation gets the same decision
in every run with that seed (:attr:`FaultyTransport.schedule`). The order in which
tasks interleave is the event loop's, so which event meets which fault may still
differ between runs; the schedule itself replays exactly.

The kit, one concept per module: what to inject (``fault_plan.py``), the decisions
drawn and recorded (``injector.py``), this transport, its members
(``faulty_consumer.py``) and the clock tests step (``clock.py``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tidings.envelope import Event
from tidings.errors import ConfigError
from tidings.testing.clock import SteppedClock
from tidings.testing.fault_plan import Fault, FaultPlan
from tidings.testing.faulty_consumer import FaultyConsumer
from tidings.testing.injector import FaultInjector
from tidings.transport import (
    Capabilities,
    Consumer,
    GroupInfo,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    Transport,
)

__all__ = ["FaultyTransport"]


class FaultyTransport(Transport):
    """``inner``, with the faults of ``plan`` drawn from ``seed`` (see the module doc).

    Every method delegates to ``inner``; attributes it does not define come from
    ``inner`` too (without faults). It installs a :class:`SteppedClock` as
    ``inner.clock`` (also ``.clock`` here) and its fault points as ``inner.fault_hook``.
    ``injected`` counts what was injected, ``schedule`` lists it in order, ``seed``
    names the run: put it in a failing test's message to replay the schedule. ``plan``
    may be replaced while the transport runs (e.g. once the workers have joined); the
    decisions go on from the same streams.

    :meth:`kill` (or ``plan.kill_within_calls``) kills the process this transport
    stands for: from then on every call of it and of its consumers raises
    :class:`Killed`, revocation callbacks no longer reach the worker, and leases are
    not released but left to expire (their renewals stop at the ``heartbeat`` fault
    point, for good). On a transport without leases (``capabilities.multi_process`` false:
    ``memory://``) its members leave the group at once instead, without committing.
    """

    def __init__(self, inner: Transport, *, seed: int, plan: FaultPlan | None = None) -> None:
        if not isinstance(inner, Transport):
            raise ConfigError(f"FaultyTransport(inner) takes a Transport, got {inner!r}")
        self.inner = inner
        self.seed = seed
        plan = FaultPlan() if plan is None else plan
        if not isinstance(plan, FaultPlan):
            raise ConfigError(f"FaultyTransport(plan=...) takes a FaultPlan, got {plan!r}")
        self._injector = FaultInjector(inner, seed, plan, repr(self))
        self.url = inner.url
        self.capabilities: Capabilities = inner.capabilities
        self.clock: SteppedClock = SteppedClock(inner.clock)
        inner.clock = self.clock
        inner.fault_hook = self._injector.at_point
        self.injected: Counter[str] = self._injector.injected
        self.schedule: list[Fault] = self._injector.schedule
        self.killed: asyncio.Event = self._injector.killed
        self._member_count: Counter[str] = Counter()

    @property
    def plan(self) -> FaultPlan:
        return self._injector.plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        self._injector.plan = plan

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found here: a transport's own extras (e.g. SQLite's
        # enforce_retention), without faults.
        if name in ("inner", "_injector"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"FaultyTransport({self.inner.url!r}, seed={self.seed})"

    def kill(self) -> None:
        """Kill the process this transport stands for (see the class doc). Idempotent."""
        self._injector.kill()

    # -- the protocol -----------------------------------------------------------------

    async def start(self) -> None:
        self._injector.check_alive()
        await self.inner.start()

    async def close(self) -> None:
        """Close the inner transport (after a kill, the dead members' leases stay)."""
        await self._injector.left()
        await self.inner.close()

    async def create_topic(
        self,
        topic: str,
        partitions: int | None = None,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> TopicInfo:
        self._injector.check_alive()
        return await self.inner.create_topic(
            topic,
            partitions,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            keep_unread=keep_unread,
        )

    async def delete_topic(self, topic: str) -> None:
        self._injector.check_alive()
        await self.inner.delete_topic(topic)

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        return await self._injector.call(
            "append", self.plan.append_error, lambda: self.inner.append(topic, records)
        )

    async def append_events(
        self, topic: str, events: Sequence[Event], max_bytes: int
    ) -> list[tuple[int, int]]:
        return await self._injector.call(
            "append",
            self.plan.append_error,
            lambda: self.inner.append_events(topic, events, max_bytes),
        )

    async def append_at(
        self, topic: str, records: Sequence[tuple[str | None, bytes]], due_ms: int
    ) -> None:
        await self._injector.call(
            "append", self.plan.append_error, lambda: self.inner.append_at(topic, records, due_ms)
        )

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        self._injector.check_alive()
        self._member_count[group] += 1
        return FaultyConsumer(
            self._injector, group, topics, start_from, on_revoke, number=self._member_count[group]
        )

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        return await self._injector.call(
            "read",
            self.plan.read_error,
            lambda: self.inner.read(topic, partition, offset, limit),
        )

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        self._injector.check_alive()
        return await self.inner.offsets_for_time(topic, timestamp_ms)

    async def topics(self) -> list[TopicInfo]:
        return await self._injector.call("topics", self.plan.topics_error, self.inner.topics)

    async def groups(self) -> list[GroupInfo]:
        return await self._injector.call("groups", self.plan.groups_error, self.inner.groups)

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        self._injector.check_alive()
        await self.inner.set_offsets(group, topic, offsets, force=force)

    async def wait_for_appends(self, timeout: float) -> None:
        self._injector.check_alive()
        await self.inner.wait_for_appends(timeout)
