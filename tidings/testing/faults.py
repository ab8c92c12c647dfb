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
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, TypeVar

from tidings.envelope import Event
from tidings.errors import ConfigError, TransportError
from tidings.transport import (
    SYSTEM_CLOCK,
    Capabilities,
    Clock,
    Consumer,
    GroupInfo,
    Position,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    TopicPartition,
    Transport,
)

__all__ = [
    "FaultPlan",
    "FaultyConsumer",
    "FaultyTransport",
    "InjectedFault",
    "Killed",
    "SteppedClock",
]

T = TypeVar("T")


class Killed(BaseException):
    """The member was killed by :class:`FaultyTransport` (a simulated SIGKILL).

    A BaseException, so that the ``except Exception`` of retries and loops does not
    catch it: it ends the worker as a kill ends a process, without a final commit.
    """


class InjectedFault(TransportError):
    """An error :class:`FaultyTransport` injected (a TransportError, as a real one)."""


class SteppedClock(Clock):
    """The system clock, with steps a test takes without waiting.

    :meth:`step_wall` moves wall time (record timestamps) either way, as an NTP step
    does; :meth:`advance` moves monotonic time (lease judgement) forward, so that a
    lease expires without sleeping through it.
    """

    def __init__(self, base: Clock = SYSTEM_CLOCK) -> None:
        self.base = base
        self.wall_offset = 0.0  # seconds added to the base's wall time
        self.monotonic_offset = 0.0  # seconds added to the base's monotonic time

    def time_ms(self) -> int:
        return self.base.time_ms() + round(self.wall_offset * 1000)

    def monotonic(self) -> float:
        return self.base.monotonic() + self.monotonic_offset

    def step_wall(self, seconds: float) -> None:
        """Move wall time by ``seconds`` (negative: backwards)."""
        self.wall_offset += seconds

    def advance(self, seconds: float) -> None:
        """Move monotonic time forward by ``seconds`` at once."""
        if seconds < 0:
            raise ConfigError(f"advance(seconds) must be >= 0 (monotonic time), got {seconds}")
        self.monotonic_offset += seconds


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What :class:`FaultyTransport` injects, per call of each operation.

    ``*_error``: the probability that a call fails with :class:`InjectedFault`. An
    append or commit that fails does so before or after reaching the log (drawn too):
    after is a lost reply, so an append retried by its publisher may be stored twice.
    A fetch, read or description fails before reaching it. ``heartbeat_error`` and
    ``lease_error`` apply at the transport's fault points of those names (a lease
    renewal; a claim or release), on transports that call them (``fault_hook``).

    ``delay``: the probability that a call first waits up to ``delay_max`` seconds (a
    fetch waits within its timeout). ``duplicate``: the probability that a fetch first
    hands a partition out again as after a reassignment to the same member: the
    member's revocation callback runs for it, then its records come again from the last
    offset committed through this wrapper. ``error_limit``: at most that many errors
    per operation (None: no limit). ``kill_within_calls``: the transport's members are
    killed (:class:`Killed`) at a consumer call drawn from the seed among their first
    ``kill_within_calls`` fetches and commits (None: never).

    The defaults are a moderate mix; :meth:`none` injects nothing.
    """

    append_error: float = 0.05
    fetch_error: float = 0.05
    commit_error: float = 0.05
    read_error: float = 0.0
    topics_error: float = 0.0
    groups_error: float = 0.0
    heartbeat_error: float = 0.0
    lease_error: float = 0.0
    delay: float = 0.1
    delay_max: float = 0.01
    duplicate: float = 0.01
    error_limit: int | None = None
    kill_within_calls: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("error_limit", "kill_within_calls"):
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1
                ):
                    raise ConfigError(
                        f"FaultPlan.{f.name} must be None or an integer >= 1, got {value!r}"
                    )
            elif f.name == "delay_max":
                if not _is_number(value) or not 0 <= value <= 60:
                    raise ConfigError(
                        f"FaultPlan.delay_max must be seconds from 0 to 60, got {value!r}"
                    )
            elif not _is_number(value) or not 0 <= value <= 1:
                raise ConfigError(
                    f"FaultPlan.{f.name} must be a probability from 0 to 1, got {value!r}"
                )

    @classmethod
    def none(cls) -> FaultPlan:
        """A plan that injects nothing (the wrapper only delegates)."""
        return cls(append_error=0.0, fetch_error=0.0, commit_error=0.0, delay=0.0, duplicate=0.0)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


class Fault(NamedTuple):
    """One injected fault: the operation, which of its calls (from 1), what happened."""

    op: str
    call: int
    kind: str


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
        self.plan = FaultPlan() if plan is None else plan
        if not isinstance(self.plan, FaultPlan):
            raise ConfigError(f"FaultyTransport(plan=...) takes a FaultPlan, got {plan!r}")
        self.url = inner.url
        self.capabilities: Capabilities = inner.capabilities
        self.clock: SteppedClock = SteppedClock(inner.clock)
        inner.clock = self.clock
        inner.fault_hook = self._at_point
        self.injected: Counter[str] = Counter()
        self.schedule: list[Fault] = []
        self.killed = asyncio.Event()
        self._streams: dict[str, _Stream] = {}
        self._members: list[FaultyConsumer] = []
        self._member_count: Counter[str] = Counter()
        self._leaving: set[asyncio.Task[None]] = set()
        self._consumer_calls = 0
        # (the consumer call to kill at, whether after it), drawn once a plan has a kill
        self._kill_at: tuple[int, bool] | None = None

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found here: a transport's own extras (e.g. SQLite's
        # enforce_retention), without faults.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"FaultyTransport({self.inner.url!r}, seed={self.seed})"

    # -- decisions ------------------------------------------------------------------

    def _stream(self, op: str) -> _Stream:
        stream = self._streams.get(op)
        if stream is None:
            stream = self._streams[op] = _Stream(self.seed, op)
        return stream

    def _record(self, op: str, call: int, kind: str) -> None:
        self.injected[kind] += 1
        self.schedule.append(Fault(op, call, kind))

    def _check_alive(self) -> None:
        if self.killed.is_set():
            raise Killed(f"{self!r} was killed")

    async def _faults(
        self, op: str, error: float, *, stream: str | None = None, limit: float | None = None
    ) -> bool:
        """Draw this call of ``op``'s faults from ``stream`` (default: ``op``): wait if
        a delay is drawn, raise if an error is; return whether an error is due *after*
        the call (a lost reply, for appends and commits)."""
        self._check_alive()
        name = stream or op
        decisions = self._stream(name)
        fails, after, delays, amount = decisions.draw(4)
        call = decisions.calls
        if delays < self.plan.delay and self.plan.delay_max > 0:
            wait = amount * self.plan.delay_max
            if limit is not None:
                wait = min(wait, limit)
            self._record(name, call, "delay")
            await asyncio.sleep(wait)
            self._check_alive()
        limit_reached = (
            self.plan.error_limit is not None and decisions.errors >= self.plan.error_limit
        )
        if fails < error and not limit_reached:
            decisions.errors += 1
            self._record(name, call, f"{op}_error")
            if after < 0.5 or op not in ("append", "commit"):
                raise InjectedFault(f"injected {op} error (seed={self.seed}, {name} call {call})")
            return True
        return False

    async def _call(self, op: str, error: float, call: Callable[[], Awaitable[T]]) -> T:
        after = await self._faults(op, error)
        result = await call()
        self._check_alive()
        if after:
            raise InjectedFault(f"injected {op} error after the {op} (seed={self.seed})")
        return result

    async def _at_point(self, point: str) -> None:
        """The inner transport's fault hook: ``heartbeat``, ``lease``, others (delays).

        After the kill, background work that reaches a fault point stops there for good
        (as in a dead process; raising would be logged as a task's unretrieved error).
        """
        if self.killed.is_set():
            await asyncio.Event().wait()
        error = {"heartbeat": self.plan.heartbeat_error, "lease": self.plan.lease_error}
        await self._faults(point, error.get(point, 0.0), stream=f"point:{point}")

    # -- the kill -------------------------------------------------------------------

    def kill(self) -> None:
        """Kill the process this transport stands for (see the class doc). Idempotent."""
        if self.killed.is_set():
            return
        self.killed.set()
        self.injected["kill"] += 1
        self.schedule.append(Fault("kill", self._consumer_calls, "kill"))
        if not self.capabilities.multi_process:
            # No lease to expire: the dead members leave now, without committing.
            for member in self._members:
                task = asyncio.get_running_loop().create_task(member.inner.close())
                self._leaving.add(task)
                task.add_done_callback(self._leaving.discard)

    def _count_consumer_call(self) -> bool | None:
        """Count a fetch or commit of a member; when it is the one to kill at, return
        whether the kill lands after the call (else before it), otherwise None."""
        self._check_alive()
        self._consumer_calls += 1
        if self._kill_at is None and self.plan.kill_within_calls is not None:
            at, after = self._stream("kill").draw(2)
            self._kill_at = (
                self._consumer_calls + int(at * self.plan.kill_within_calls),
                after < 0.5,
            )
        if self._kill_at is not None and self._consumer_calls == self._kill_at[0]:
            return self._kill_at[1]
        return None

    # -- the protocol -----------------------------------------------------------------

    async def start(self) -> None:
        self._check_alive()
        await self.inner.start()

    async def close(self) -> None:
        """Close the inner transport (after a kill, the dead members' leases stay)."""
        if self._leaving:
            await asyncio.gather(*self._leaving, return_exceptions=True)
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
        self._check_alive()
        return await self.inner.create_topic(
            topic,
            partitions,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            keep_unread=keep_unread,
        )

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        return await self._call(
            "append", self.plan.append_error, lambda: self.inner.append(topic, records)
        )

    async def append_events(
        self, topic: str, events: Sequence[Event], max_bytes: int
    ) -> list[tuple[int, int]]:
        return await self._call(
            "append",
            self.plan.append_error,
            lambda: self.inner.append_events(topic, events, max_bytes),
        )

    async def append_at(
        self, topic: str, records: Sequence[tuple[str | None, bytes]], due_ms: int
    ) -> None:
        await self._call(
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
        self._check_alive()
        self._member_count[group] += 1
        member = FaultyConsumer(
            self, group, topics, start_from, on_revoke, number=self._member_count[group]
        )
        self._members.append(member)
        return member

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        return await self._call(
            "read",
            self.plan.read_error,
            lambda: self.inner.read(topic, partition, offset, limit),
        )

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        self._check_alive()
        return await self.inner.offsets_for_time(topic, timestamp_ms)

    async def topics(self) -> list[TopicInfo]:
        return await self._call("topics", self.plan.topics_error, self.inner.topics)

    async def groups(self) -> list[GroupInfo]:
        return await self._call("groups", self.plan.groups_error, self.inner.groups)

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        self._check_alive()
        await self.inner.set_offsets(group, topic, offsets, force=force)

    async def wait_for_appends(self, timeout: float) -> None:
        self._check_alive()
        await self.inner.wait_for_appends(timeout)


class FaultyConsumer(Consumer):
    """A member of a group on a :class:`FaultyTransport`: the inner transport's member,
    with delayed and failing fetches and commits, redeliveries and the kill.

    Its decisions come from streams of its own (by group and the order in which the
    transport made the group's members), so one member's schedule does not depend on
    how its calls interleave with another's.
    """

    def __init__(
        self,
        transport: FaultyTransport,
        group: str,
        topics: Sequence[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
        *,
        number: int,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self.transport = transport
        self.name = f"{group}#{number}"
        self.inner = transport.inner.consumer(
            group, topics, start_from=start_from, on_revoke=self._revoked
        )
        self.member = self.inner.member
        # Per partition, under the generation of the records handed out: the offset a
        # redelivery starts at (the first handed out, then each commit seen to pass),
        # the offset after the last record handed out, and that generation.
        self._floor: dict[TopicPartition, int] = {}
        self._handed: dict[TopicPartition, int] = {}
        self._generation: dict[TopicPartition, int] = {}
        self._again: deque[Record] = deque()  # records to hand out again, in order

    def _op(self, op: str) -> str:
        return f"{self.name}:{op}"

    async def _revoked(self, tps: frozenset[TopicPartition]) -> None:
        """The inner member's revocation: forget what was handed out, then let the
        worker finish (unless this process is dead: it runs nothing any more)."""
        self._forget(tps)
        if self.transport.killed.is_set() or self.on_revoke is None:
            return
        try:
            await self.on_revoke(tps)
        except Killed:  # killed while finishing: the transport's rebalance goes on
            return

    def _forget(self, tps: frozenset[TopicPartition]) -> None:
        for tp in tps:
            self._floor.pop(tp, None)
            self._handed.pop(tp, None)
            self._generation.pop(tp, None)
        if self._again:
            self._again = deque(r for r in self._again if (r.topic, r.partition) not in tps)

    async def start(self) -> None:
        self.transport._check_alive()
        await self.inner.start()

    def assignment(self) -> frozenset[TopicPartition]:
        self.transport._check_alive()
        return self.inner.assignment()

    def generation(self, tp: TopicPartition) -> int | None:
        self.transport._check_alive()
        return self.inner.generation(tp)

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        t = self.transport
        kill = t._count_consumer_call()
        if kill is False:
            t.kill()
            t._check_alive()
        loop = asyncio.get_running_loop()
        started = loop.time()
        duplicate, choice = t._stream(self._op("duplicate")).draw(2)
        await t._faults("fetch", t.plan.fetch_error, stream=self._op("fetch"), limit=timeout)
        if duplicate < t.plan.duplicate:
            await self._hand_out_again(choice)
        if self._again:
            records = self._take_again(max_records)
        else:
            remaining = max(timeout - (loop.time() - started), 0.0)
            records = await self.inner.fetch(max_records, remaining)
        # No await from here on: the records are of partitions assigned now.
        if kill is True:
            t.kill()
        t._check_alive()
        for r in records:
            tp = (r.topic, r.partition)
            if self._generation.get(tp) != r.generation:
                self._generation[tp] = r.generation
                self._floor[tp] = r.offset
            self._handed[tp] = max(self._handed.get(tp, 0), r.offset + 1)
        return records

    async def _hand_out_again(self, choice: float) -> None:
        """Simulate a reassignment of one partition to this same member: the worker
        gives it up (finishes, commits), then its records come again from the last
        offset committed here."""
        t = self.transport
        candidates = sorted(
            tp
            for tp in self.inner.assignment()
            if self._handed.get(tp, 0) > self._floor.get(tp, self._handed.get(tp, 0))
        )
        if not candidates:
            return
        tp = candidates[int(choice * len(candidates))]
        generation = self._generation[tp]
        if self.on_revoke is not None:
            await self.on_revoke(frozenset([tp]))  # Killed goes on: this member is dead
        if tp not in self.inner.assignment() or self.inner.generation(tp) != generation:
            return  # really taken away meanwhile: its next owner starts from the commit
        start, end = self._floor[tp], self._handed[tp]
        again: list[Record] = []
        offset = start
        while offset < end:
            batch = await t.inner.read(tp[0], tp[1], offset, min(1000, end - offset))
            batch = [r for r in batch if r.offset < end]
            if not batch:
                break
            again += [r._replace(generation=generation) for r in batch]
            offset = batch[-1].offset + 1
        if tp not in self.inner.assignment() or self.inner.generation(tp) != generation:
            return
        self._again.extend(again)
        name = self._op("duplicate")
        t._record(name, t._stream(name).calls, "duplicate")
        if again:
            t.injected["duplicated_records"] += len(again)

    def _take_again(self, max_records: int) -> list[Record]:
        owned = self.inner.assignment()
        out: list[Record] = []
        while self._again and len(out) < max_records:
            r = self._again.popleft()
            tp = (r.topic, r.partition)
            if tp in owned and self.inner.generation(tp) == r.generation:
                out.append(r)
        return out

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        t = self.transport
        kill = t._count_consumer_call()
        if kill is False:
            t.kill()
            t._check_alive()
        after = await t._faults("commit", t.plan.commit_error, stream=self._op("commit"))
        await self.inner.commit(offsets)
        for tp, position in offsets.items():
            if self._generation.get(tp) == position.generation:
                self._floor[tp] = position.offset
        if kill is True:
            t.kill()
        t._check_alive()
        if after:
            raise InjectedFault(f"injected commit error after the commit (seed={t.seed})")

    async def close(self) -> None:
        """Leave the group, unless this process was killed: then the leases stay until
        they expire (on a transport without leases the kill already left)."""
        if self.transport.killed.is_set():
            return
        if self in self.transport._members:
            self.transport._members.remove(self)
        await self.inner.close()
