"""The faults of one :class:`~tidings.testing.FaultyTransport` and its members: the
decisions drawn from the seed per operation, the record of what was injected, and
the kill of the process the transport stands for.

The faulty transport and the faulty consumer both draw from it; neither reaches into
the other.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tidings.testing.fault_plan import Fault, FaultPlan, InjectedFault, Killed
from tidings.transport import Consumer, Transport

__all__ = ["FaultInjector"]

T = TypeVar("T")


class _Stream:
    """The decisions of one operation: every call draws the same count of numbers,
    whatever it decides, so that the i-th call's decision never depends on others."""

    def __init__(self, seed: int, op: str) -> None:
        self.random = random.Random(f"{seed}:{op}")
        self.calls = 0
        self.errors = 0

    def draw(self, count: int) -> list[float]:
        self.calls += 1
        return [self.random.random() for _ in range(count)]


class FaultInjector:
    """Draws the faults of ``plan`` for calls on ``inner`` from ``seed`` (see the
    :class:`~tidings.testing.FaultyTransport` doc); ``name`` names the process in
    :class:`Killed`. ``members``: the inner consumers of the live faulty members,
    which a kill on a transport without leases closes."""

    def __init__(self, inner: Transport, seed: int, plan: FaultPlan, name: str) -> None:
        self.inner = inner
        self.seed = seed
        self.plan = plan
        self.name = name
        self.injected: Counter[str] = Counter()
        self.schedule: list[Fault] = []
        self.killed = asyncio.Event()
        self.members: list[Consumer] = []
        self._streams: dict[str, _Stream] = {}
        self._leaving: set[asyncio.Task[None]] = set()
        self._consumer_calls = 0
        # (the consumer call to kill at, whether after it), drawn once a plan has a kill
        self._kill_at: tuple[int, bool] | None = None

    # -- decisions ------------------------------------------------------------------

    def stream(self, op: str) -> _Stream:
        stream = self._streams.get(op)
        if stream is None:
            stream = self._streams[op] = _Stream(self.seed, op)
        return stream

    def record(self, op: str, call: int, kind: str) -> None:
        self.injected[kind] += 1
        self.schedule.append(Fault(op, call, kind))

    def check_alive(self) -> None:
        if self.killed.is_set():
            raise Killed(f"{self.name} was killed")

    async def draw(
        self, op: str, error: float, *, stream: str | None = None, limit: float | None = None
    ) -> bool:
        """Draw this call of ``op``'s faults from ``stream`` (default: ``op``): wait if
        a delay is drawn, raise if an error is; return whether an error is due *after*
        the call (a lost reply, for appends and commits)."""
        self.check_alive()
        name = stream or op
        decisions = self.stream(name)
        fails, after, delays, amount = decisions.draw(4)
        call = decisions.calls
        if delays < self.plan.delay and self.plan.delay_max > 0:
            wait = amount * self.plan.delay_max
            if limit is not None:
                wait = min(wait, limit)
            self.record(name, call, "delay")
            await asyncio.sleep(wait)
            self.check_alive()
        limit_reached = (
            self.plan.error_limit is not None and decisions.errors >= self.plan.error_limit
        )
        if fails < error and not limit_reached:
            decisions.errors += 1
            self.record(name, call, f"{op}_error")
            if after < 0.5 or op not in ("append", "commit"):
                raise InjectedFault(f"injected {op} error (seed={self.seed}, {name} call {call})")
            return True
        return False

    async def call(self, op: str, error: float, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, with the faults drawn for this call of ``op``."""
        after = await self.draw(op, error)
        result = await call()
        self.check_alive()
        if after:
            raise InjectedFault(f"injected {op} error after the {op} (seed={self.seed})")
        return result

    async def at_point(self, point: str) -> None:
        """The inner transport's fault hook: ``heartbeat``, ``lease``, others (delays).

        After the kill, background work that reaches a fault point stops there for good
        (as in a dead process; raising would be logged as a task's unretrieved error).
        """
        if self.killed.is_set():
            await asyncio.Event().wait()
        error = {"heartbeat": self.plan.heartbeat_error, "lease": self.plan.lease_error}
        await self.draw(point, error.get(point, 0.0), stream=f"point:{point}")

    # -- the kill -------------------------------------------------------------------

    def kill(self) -> None:
        """Kill the process (see the FaultyTransport doc). Idempotent."""
        if self.killed.is_set():
            return
        self.killed.set()
        self.injected["kill"] += 1
        self.schedule.append(Fault("kill", self._consumer_calls, "kill"))
        if not self.inner.capabilities.multi_process:
            # No lease to expire: the dead members leave now, without committing.
            for member in self.members:
                task = asyncio.get_running_loop().create_task(member.close())
                self._leaving.add(task)
                task.add_done_callback(self._leaving.discard)

    async def left(self) -> None:
        """Wait until the members a kill closed have left."""
        if self._leaving:
            await asyncio.gather(*self._leaving, return_exceptions=True)

    def count_consumer_call(self) -> bool | None:
        """Count a fetch or commit of a member; when it is the one to kill at, return
        whether the kill lands after the call (else before it), otherwise None."""
        self.check_alive()
        self._consumer_calls += 1
        if self._kill_at is None and self.plan.kill_within_calls is not None:
            at, after = self.stream("kill").draw(2)
            self._kill_at = (
                self._consumer_calls + int(at * self.plan.kill_within_calls),
                after < 0.5,
            )
        if self._kill_at is not None and self._consumer_calls == self._kill_at[0]:
            return self._kill_at[1]
        return None
