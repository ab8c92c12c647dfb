"""One librdkafka group member, of all of a group's topics, on its own polling thread.

The thread polls all the time, not only while someone fetches: librdkafka runs the
rebalance callbacks inside ``poll``, so a member whose worker is busy in a slow handler
must still answer a rebalance (and stay within ``max.poll.interval.ms``). Polled
messages go into a buffer that :meth:`Member.take` takes from (for
:meth:`KafkaConsumer.fetch <tidings.transports.kafka.consumer.KafkaConsumer.fetch>`);
once it holds ``BUFFER`` messages the thread takes at most one per poll (a ``poll``
returns one message at most), which bounds it while still serving the callbacks.
Pausing the partitions instead cost ~0.9 s after each resume on Tansu (a backlog
drained at ~2,500 events/s instead of ~11,000).

Every call into the librdkafka consumer is made on that thread. Commits are requests it
serves between polls: a commit made from another thread while this one polls in a loop
waited forever in confluent-kafka 2.16 (measured; a 1 ms pause between polls let it
through). ``on_revoke`` is bridged to the event loop and waited for on the polling
thread, which serves commit requests meanwhile, so the owner finishes and commits
before librdkafka gives the partitions up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from tidings.errors import ConfigError, TransportError
from tidings.transport import Consumer, Position, Record, RevokeCallback, StartFrom, TopicPartition
from tidings.transports.kafka.client import TransportClient
from tidings.transports.kafka.errors import fenced, member_warning, translate
from tidings.transports.kafka.start import fix_start

__all__ = ["Member"]

log = logging.getLogger("tidings.kafka")

# Seconds for the first assignment: at least 60, and twice the session timeout plus
# 10 s, since a member that died without leaving holds a join up for about a session
# (on Tansu 1.8 of it: a held join, a refused SyncGroup, another join; decision 0011).
JOIN_TIMEOUT = 60.0
REVOKE_TIMEOUT = 60.0  # how long on_revoke may hold a rebalance
BUFFER = 2000  # messages polled ahead of fetch; beyond it, one per poll at most
POLL = 0.02  # seconds one poll may block: how long a commit request may wait to be served


async def _wrap(awaitable: Awaitable[None]) -> None:
    await awaitable


class Member(Consumer):
    """One librdkafka group member, of all of a group's topics, on its own polling thread.

    Leases: each partition has a generation, counted here (librdkafka's group generation
    is not exposed per partition, and the broker does not fence a member that holds a
    partition again after losing it). It is raised when the partition is assigned, when
    it is revoked (after ``on_revoke`` has committed), when it is lost, and when a forced
    reset moves it; a fetched record carries the generation it was fetched under, and a
    commit whose generation is not the current one of an owned partition is dropped.
    """

    def __init__(
        self,
        client: TransportClient[Any],
        group: str,
        topics: Sequence[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self._client = client
        self._consumer: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Owned partitions and their lease generations, replaced (never changed in
        # place) under the lock by the polling thread, with _assigned its key set; and
        # the last generation of every partition ever owned (they only grow).
        self._leases: dict[TopicPartition, int] = {}
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._generations: dict[TopicPartition, int] = {}
        self._joined: asyncio.Future[None] | None = None
        self.arrived: asyncio.Event | None = None  # set when the buffer gains messages
        self._buffer: deque[Any] = deque()
        # Polling thread only: handled offsets of owned partitions the broker has not
        # taken (a commit it refused for its own stale generation, or during a
        # rebalance), to commit again once the group has settled, under the same lease.
        self._unsaved: dict[TopicPartition, Position] = {}
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._accepting = True  # False once the polling thread serves no more requests
        self._stop = threading.Event()
        self._closed_down: asyncio.Future[None] | None = None
        # Why the polling thread ended, if it failed (a ConfigError at start, else
        # ConsumerDead); set on that thread before it serves its last requests.
        self.error: TransportError | ConfigError | None = None
        self.closed = False
        self._eager = True  # eager rebalancing (range): on_assign may assign with offsets

    # -- the polling thread ------------------------------------------------------------

    def _main(self, conf: dict[str, Any]) -> None:
        from confluent_kafka import Consumer as RdConsumer

        try:
            try:
                self._consumer = RdConsumer(conf)
            except Exception as exc:
                raise translate(
                    exc, f"group {self.group!r}: creating its consumer", client="consumer"
                ) from None
            self._consumer.subscribe(
                list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )  # fmt: skip
            while not self._stop.is_set():
                self._serve()
                self._poll()
        except BaseException as exc:  # reported to start, fetch and commit
            log.exception("Kafka consumer of group %r stopped", self.group)
            self.error = translate(
                exc,
                f"the Kafka consumer of group {self.group!r} (topics {', '.join(self.topics)})",
                dead=True,  # ConsumerDead; a setting librdkafka refused stays a ConfigError
            )
            self._to_loop(self._fail, self.error)
        finally:
            self._close_sync()

    def dead(self) -> TransportError | ConfigError:
        """A fresh copy of the error the polling thread ended with (raised again and
        again, one instance would collect every traceback)."""
        error = self.error
        assert error is not None
        copy = type(error)(*error.args)
        copy.__cause__ = error.__cause__
        return copy

    def _serve(self, wait: float = 0.0) -> None:
        """Run the requests (commits) waiting for this thread; wait a little for one."""
        try:
            fn, future = self._requests.get(timeout=wait) if wait else self._requests.get_nowait()
        except queue.Empty:
            return
        while True:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to whoever asked
                    future.set_exception(exc)
            try:
                fn, future = self._requests.get_nowait()
            except queue.Empty:
                return

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the polling thread (where every consumer call is made)."""
        future: Future[Any] = Future()
        with self._lock:
            if self.error is not None:
                raise self.dead()
            if not self._accepting:
                raise TransportError(f"consumer of group {self.group!r} is closed")
            self._requests.put((fn, future))
        return await asyncio.wrap_future(future)

    def _poll(self) -> None:
        # poll for the first message (returns as soon as one arrives), then take what
        # is queued without waiting: consume(n, timeout) alone would wait for n.
        first = self._consumer.poll(POLL)
        if first is None:
            return
        room = BUFFER - len(self._buffer)
        msgs = [first, *self._consumer.consume(room, 0)] if room > 0 else [first]
        # As little Python per message as can be here: this thread competes with the
        # event loop for the GIL. Partitions revoked meanwhile are left out by fetch.
        good = [m for m in msgs if m.error() is None]
        if len(good) != len(msgs):
            for m in msgs:
                err = m.error()
                if err is None:
                    continue
                if err.fatal():
                    raise translate(err, f"group {self.group!r}")
                log.warning("group %r: %s", self.group, member_warning(err))
        if good:
            with self._lock:
                self._buffer.extend(good)
            self._to_loop(self._wake)

    def _drop(self, gone: frozenset[TopicPartition]) -> None:
        # Called with the lock held: buffered messages of partitions no longer read here.
        kept = [m for m in self._buffer if (m.topic(), m.partition()) not in gone]
        self._buffer.clear()
        self._buffer.extend(kept)

    def _own(
        self,
        added: frozenset[TopicPartition] = frozenset(),
        gone: frozenset[TopicPartition] = frozenset(),
    ) -> None:
        """Polling thread, lock held: a new lease for each partition of ``added`` and
        ``gone`` (a new generation), ``gone`` no longer owned, buffered messages of both
        dropped; ``added`` may hold owned partitions (a forced reset)."""
        generations = self._generations
        for tp in added | gone:
            generations[tp] = generations.get(tp, 0) + 1
        self._drop(added | gone)
        leases = {tp: g for tp, g in self._leases.items() if tp not in gone}
        leases.update((tp, generations[tp]) for tp in added)
        self._leases = leases
        self._assigned = frozenset(leases)

    def _close_sync(self) -> None:
        try:
            if self._consumer is not None:
                # Leaves the group; on_revoke runs for what is owned (after a failure
                # its commits raise ConsumerDead).
                self._consumer.close()
        except Exception:
            log.exception("closing the Kafka consumer of group %r failed", self.group)
        finally:
            with self._lock:
                self._leases, self._assigned = {}, frozenset()
                self._accepting = False
            self._serve()  # whatever came in before the door closed
            self._to_loop(self._settle_closed)

    # -- rebalance callbacks (polling thread) ----------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        added = frozenset((tp.topic, tp.partition) for tp in partitions) - self._assigned
        starts = fix_start(consumer, partitions, self.start_from, self.group, eager=self._eager)
        with self._lock:
            self._own(added=added)
        # Where the group starts on partitions it never committed on is committed with
        # the rest below, so that a restart resumes there (kafka/start.py); refused, it
        # stays unsaved, to be committed again like any handled offset.
        leases = self._leases
        self._unsaved.update(
            (tp, Position(o, leases[tp])) for tp, o in starts.items() if tp in leases
        )
        # The rebalance is over (this runs at the end of each one, even with nothing
        # added): commit what the broker refused meanwhile of the partitions kept.
        self._save(self._assigned)
        self._to_loop(self._settle_joined)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        gone = frozenset((tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self._drop(gone)
        self._hand_back(gone)  # the owner finishes and commits, under the lease it had
        self._save(gone)  # refused before, and nothing new since: the owner did not commit
        self._forget(gone)
        with self._lock:
            self._own(gone=gone)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Maybe someone else's already (session expired, or this thread polled too
        # late): their lease ends first, so that nothing handled under it is committed,
        # now or if they come back; then the owner drops what it has of them, as for a
        # revocation (its commits are fenced).
        gone = frozenset((tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self._own(gone=gone)
        self._forget(gone)
        log.warning(
            "group %r: partitions %s lost without revocation; what is handled of them "
            "is not committed",
            self.group, sorted(gone),
        )  # fmt: skip
        self._hand_back(gone)

    def _hand_back(self, gone: frozenset[TopicPartition]) -> None:
        """Run ``on_revoke(gone)`` on the event loop and wait for it, serving the commits
        it makes meanwhile (polling thread)."""
        if gone and self.on_revoke is not None and self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(_wrap(self.on_revoke(gone)), self._loop)
            deadline = time.monotonic() + REVOKE_TIMEOUT
            while not future.done() and time.monotonic() < deadline:
                self._serve(wait=0.01)  # the owner's commits, made while it lets go
            try:
                future.result(0)
            except Exception:
                future.cancel()
                log.exception("on_revoke of group %r failed; giving %s up", self.group, gone)

    def _forget(self, tps: frozenset[TopicPartition]) -> None:
        self._unsaved = {tp: p for tp, p in self._unsaved.items() if tp not in tps}

    def _save(self, tps: frozenset[TopicPartition]) -> None:
        """Commit the unsaved offsets of ``tps`` still owned under the lease they were
        handled under (polling thread). What fails stays unsaved."""
        leases = self._leases
        want = {
            tp: p for tp, p in self._unsaved.items() if tp in tps and leases.get(tp) == p.generation
        }
        if not want or self._consumer is None:
            return
        try:
            self._commit_sync(want)
        except Exception as exc:
            log.info("group %r: unsaved offsets %s not committed yet: %s", self.group, want, exc)

    # -- hand-offs to the event loop ---------------------------------------------------

    def _to_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def _wake(self) -> None:
        if self.arrived is not None:
            self.arrived.set()

    def _settle_joined(self) -> None:
        if self._joined is not None and not self._joined.done():
            self._joined.set_result(None)

    def _settle_closed(self) -> None:
        if self._closed_down is not None and not self._closed_down.done():
            self._closed_down.set_result(None)

    def _fail(self, error: TransportError | ConfigError) -> None:
        if self._joined is not None and not self._joined.done():
            self._joined.set_exception(error)
        self._wake()

    # -- the protocol --------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group; return once the first assignment is known (maybe empty)."""
        self._loop = loop = asyncio.get_running_loop()
        for topic in self.topics:  # subscribing to a missing topic is an error in Kafka
            await self._client.create_topic(topic)
        conf = self._client.config.consumer(self.group, self.start_from)
        self._eager = "cooperative" not in str(conf.get("partition.assignment.strategy"))
        conf["client.id"] = f"{conf['client.id']}-{self.member}"  # groups() shows it
        self._joined = loop.create_future()
        self._closed_down = loop.create_future()
        if self.arrived is None:
            self.arrived = asyncio.Event()
        self._thread = threading.Thread(
            target=self._main, args=(conf,), name=f"kafka-{self.group}", daemon=True
        )
        self._thread.start()
        patience = max(JOIN_TIMEOUT, 2 * self._client.config.session_timeout_ms / 1000 + 10)
        try:
            await asyncio.wait_for(asyncio.shield(self._joined), patience)
        except TimeoutError:
            await self.close()
            raise TransportError(
                f"group {self.group!r}: no assignment from {self._client.url} after "
                f"{patience:.0f} s; is the broker reachable and the group coordinator up?"
            ) from None
        except (TransportError, ConfigError):
            await self.close()
            raise

    def take(self, max_records: int) -> tuple[list[Any], dict[TopicPartition, int]]:
        """Up to ``max_records`` polled messages, oldest first (not waiting), and the
        leases they were polled under (owned partitions -> generation)."""
        with self._lock:
            buffer = self._buffer
            if max_records >= len(buffer):
                out = list(buffer)
                buffer.clear()
            else:
                out = [buffer.popleft() for _ in range(max_records)]
            return out, self._leases

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        raise NotImplementedError("a member's messages are fetched by its KafkaConsumer")

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        """Commit synchronously; positions of partitions not owned now, or owned under
        another lease than the one they carry, are dropped (fenced).

        A commit the broker refuses for a stale generation (or a rebalance under way)
        while this member still owns the partitions under the same lease is not
        forgotten: the offsets are committed again with the next commit, at the end of
        the rebalance (``_save`` in ``_on_assign``) or when the partitions are revoked.
        Dropping it left the group's offset behind what was handled, and the records
        from there were read and handled again when the partitions came back
        (docs/kafka.md, "Open").
        """
        if self.error is not None:
            raise self.dead()
        if self._consumer is None or not any(tp in self._assigned for tp in offsets):
            return
        await self._call(lambda: self._commit_owned(offsets))

    def _commit_owned(self, offsets: Mapping[TopicPartition, Position]) -> None:
        # Polling thread, where the leases change: checked and committed in one step.
        leases = self._leases
        fresh = {tp: p for tp, p in offsets.items() if leases.get(tp) == p.generation}
        if len(fresh) != len(offsets):
            log.info(
                "group %r: commit of %s fenced (not owned, or owned under a newer lease)",
                self.group,
                {tp: p for tp, p in offsets.items() if tp not in fresh},
            )
        want = {tp: p for tp, p in self._unsaved.items() if leases.get(tp) == p.generation}
        want.update(fresh)
        if not want:
            return
        self._unsaved.update(want)  # until the broker has taken them
        try:
            self._commit_sync(want)
        except Exception as exc:
            if fenced(exc):
                log.info(
                    "group %r: commit refused (%s); kept to commit again once the group "
                    "has settled",
                    self.group, exc,
                )  # fmt: skip
                return
            raise translate(exc, f"group {self.group!r}: commit failed") from exc

    def _commit_sync(self, want: Mapping[TopicPartition, Position]) -> None:
        """Commit ``want`` (polling thread); forget what the broker took."""
        from confluent_kafka import TopicPartition as RdTopicPartition

        tps = [RdTopicPartition(t, p, pos.offset) for (t, p), pos in want.items()]
        result = self._consumer.commit(offsets=tps, asynchronous=False)
        for c in result or []:
            tp = (c.topic, c.partition)
            if c.error is None:
                if self._unsaved.get(tp) == want.get(tp):
                    self._unsaved.pop(tp, None)
            else:
                log.info("group %r: commit of %s refused: %s; kept", self.group, tp, c.error)

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assigned

    def generation(self, tp: TopicPartition) -> int | None:
        return self._leases.get(tp)

    async def reset(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Move owned partitions to ``offsets`` and commit them there (a forced reset)."""
        await self._call(lambda: self._reset_sync(offsets))

    def _reset_sync(self, offsets: Mapping[TopicPartition, int]) -> None:
        # Polling thread. As a revocation and a new assignment in one: the owner
        # finishes and commits under the old lease, then a new one begins at the offsets.
        from confluent_kafka import TopicPartition as RdTopicPartition

        moved = frozenset(tp for tp in offsets if tp in self._assigned)
        if not moved:
            return
        with self._lock:
            self._drop(moved)
        self._hand_back(moved)
        self._forget(moved)  # the reset overrides what the broker refused before
        moved &= self._assigned  # lost meanwhile: not this member's to move any more
        with self._lock:
            self._own(added=moved)
        for topic, partition in moved:
            self._consumer.seek(RdTopicPartition(topic, partition, offsets[(topic, partition)]))
        self._commit_owned({tp: Position(offsets[tp], self._leases[tp]) for tp in moved})

    @property
    def joined(self) -> bool:
        """Whether this member joined its group (its first assignment came) and is open."""
        j = self._joined
        return (
            not self.closed
            and j is not None
            and j.done()
            and not j.cancelled()
            and j.exception() is None
        )

    async def close(self) -> None:
        """Leave the group (on_revoke runs for what is owned); commit nothing."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        if self._closed_down is not None and self._thread is not None:
            # The thread's last act is consumer.close(), whose on_revoke needs this loop.
            await self._closed_down
            await asyncio.to_thread(self._thread.join, 5)
        with self._lock:
            self._buffer.clear()
            self._leases, self._assigned = {}, frozenset()
