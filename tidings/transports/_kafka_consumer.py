"""One Kafka consumer-group member: a ``confluent_kafka.Consumer`` on its own thread.

The thread polls all the time, not only while someone fetches: librdkafka runs the
rebalance callbacks inside ``poll``, so a member whose worker is busy in a slow handler
must still answer a rebalance (and stay within ``max.poll.interval.ms``). Polled
messages go into a buffer that :meth:`KafkaConsumer.fetch` takes from; once it holds
``BUFFER`` messages the thread takes at most one per poll (a ``poll`` returns one
message at most), which bounds it while still serving the callbacks. Pausing the
partitions instead cost ~0.9 s after each resume on Tansu (a backlog drained at
~2,500 events/s instead of ~11,000).

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
from typing import TYPE_CHECKING, Any

from tidings.errors import ConfigError, TransportError
from tidings.transport import Consumer, Position, Record, RevokeCallback, StartFrom, TopicPartition
from tidings.transports.kafka_wire import from_kafka

if TYPE_CHECKING:
    from tidings.transports.kafka import KafkaTransport

__all__ = ["KafkaConsumer"]

log = logging.getLogger("tidings.kafka")

JOIN_TIMEOUT = 60.0  # seconds for the first assignment (docs/kafka.md: Tansu's joins)
REVOKE_TIMEOUT = 60.0  # how long on_revoke may hold a rebalance
SETTLE_TIMEOUT = 10.0  # how long a leaving member waits for its group to be Stable
SAVE_TIMEOUT = 10.0  # seconds to ask a partition's committed offset in a rebalance callback
BUFFER = 2000  # messages polled ahead of fetch; beyond it, one per poll at most
POLL = 0.02  # seconds one poll may block: how long a commit request may wait to be served


SHARED = 20_000  # records kept for the transport's other groups (then forgotten at once)


def to_record(msg: Any) -> Record:
    key = msg.key()
    return Record(
        msg.topic(),
        msg.partition(),
        msg.offset(),
        msg.timestamp()[1],
        key.decode("utf-8", "replace") if key is not None else None,
        from_kafka(msg.value(), msg.headers()),
    )


def to_records(
    msgs: list[Any], owned: frozenset[TopicPartition], shared: dict[Any, Record] | None
) -> list[Record]:
    """The Records of polled messages of partitions still ``owned``.

    With ``shared`` (several groups read through one transport), a record converted for
    one group is reused by the others: they read the same records at about the same
    time, and the conversion (``from_kafka``) is most of what reading costs here. Keyed
    by position and timestamp, since a topic deleted and created again reuses offsets.
    """
    out = []
    for m in msgs:
        topic, partition = m.topic(), m.partition()
        if (topic, partition) not in owned:
            continue  # revoked since it was polled
        if shared is None:
            out.append(to_record(m))
            continue
        place = (topic, partition, m.offset(), m.timestamp()[1])
        record = shared.get(place)
        if record is None:
            if len(shared) >= SHARED:
                shared.clear()  # cheaper than evicting one by one
            record = shared[place] = to_record(m)
        out.append(record)
    return out


async def _wrap(awaitable: Awaitable[None]) -> None:
    await awaitable


class KafkaConsumer(Consumer):
    """A member of a tidings group on Kafka: one librdkafka group member per topic.

    librdkafka's cooperative-sticky assignor balances the *number* of partitions over
    all the topics a member subscribes to, not topic by topic: a worker joining a group
    that reads ``tasks`` and its retry topic was given the 8 idle retry partitions and
    none of ``tasks`` (tests/transports/test_broker_processes.py). With one member per
    topic, each topic is shared among exactly the members that read it, evenly.
    """

    def __init__(
        self,
        transport: KafkaTransport,
        group: str,
        topics: Sequence[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self._transport = transport
        self._members = [_Member(transport, group, [t], start_from, on_revoke) for t in topics]
        self._arrived: asyncio.Event | None = None
        self._turn = 0  # which member's records a fetch takes first
        self.closed = False

    async def start(self) -> None:
        """Join the group (every member); return once each assignment is known."""
        self._arrived = asyncio.Event()
        for m in self._members:
            m.member, m._arrived = self.member, self._arrived
        self._transport._live.add(self)
        try:
            for m in self._members:  # one at a time: each join is one rebalance
                await m.start()
        except BaseException:
            await self.close()
            raise

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        if self._arrived is None or self.closed:
            raise TransportError(f"consumer of group {self.group!r} is not started or closed")
        deadline = time.monotonic() + timeout
        while True:
            self._arrived.clear()
            out: list[Any] = []
            count = len(self._members)
            self._turn = (self._turn + 1) % count
            for i in range(count):
                member = self._members[(self._turn + i) % count]
                if member._error is not None:
                    raise member._error
                out += member.take(max_records - len(out))
                if len(out) >= max_records:
                    break
            if out:
                transport = self._transport
                shared = transport._shared if len(transport._live) > 1 else None
                return to_records(out, self.assignment(), shared)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:  # asyncio.timeout: wait_for would wrap the wait in a task (3.11)
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                return []

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        """Commit synchronously; offsets of partitions not owned now are dropped (fenced)."""
        await asyncio.gather(
            *(
                m.commit({tp: o for tp, o in offsets.items() if tp[0] == m.topics[0]})
                for m in self._members
                if any(tp[0] == m.topics[0] for tp in offsets)
            )
        )

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset().union(*(m.assignment() for m in self._members))

    def generation(self, tp: TopicPartition) -> int | None:
        for m in self._members:
            if tp[0] == m.topics[0]:
                return m.generation(tp)
        return None

    @property
    def kafka_members(self) -> int:
        """How many librdkafka group members this is (one per topic)."""
        return len(self._members)

    def seek_soon(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Move owned partitions of ``topic`` before the next poll (a forced reset)."""
        for m in self._members:
            if m.topics[0] == topic:
                m.seek_soon(topic, offsets)

    async def close(self) -> None:
        """Leave the group (on_revoke runs for what is owned); commit nothing.

        The members leave one at a time, each once the group is Stable (at most
        ``SETTLE_TIMEOUT`` each): on Tansu, a member that leaves while it leads a
        rebalance under way (one that another member's join or leave began, or the
        second round of a cooperative one) leaves the group waiting for it forever, and
        the members left are never given its partitions (docs/kafka.md, difference 6).
        Each leave begins a rebalance of its own, so the next member waits for it too.
        """
        if self.closed:
            return
        self.closed = True
        self._transport._live.discard(self)
        for m in self._members:
            if m.joined:
                await self._transport.settled(self.group, SETTLE_TIMEOUT)
            await m.close()


class _Member(Consumer):
    """One librdkafka group member, of one topic, on its own polling thread."""

    def __init__(
        self,
        transport: KafkaTransport,
        group: str,
        topics: Sequence[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self._transport = transport
        self._consumer: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._joined: asyncio.Future[None] | None = None
        self._arrived: asyncio.Event | None = None  # set when the buffer gains messages
        self._buffer: deque[Any] = deque()
        self._seeks: dict[TopicPartition, int] = {}  # forced resets, applied before a poll
        # Polling thread only: handled offsets the broker has not taken (a commit refused
        # for a stale generation, or made while a lost partition was away), to commit
        # once the group has settled; and partitions lost, which may come back.
        self._unsaved: dict[TopicPartition, int] = {}
        self._lost: frozenset[TopicPartition] = frozenset()
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._accepting = True  # False once the polling thread serves no more requests
        self._stop = threading.Event()
        self._closed_down: asyncio.Future[None] | None = None
        self._error: TransportError | ConfigError | None = (
            None  # the polling thread's end, if it failed
        )
        self.closed = False

    # -- the polling thread ------------------------------------------------------------

    def _main(self, conf: dict[str, Any]) -> None:
        from confluent_kafka import Consumer as RdConsumer

        try:
            try:
                self._consumer = RdConsumer(conf)
            except Exception as exc:
                from tidings.transports.kafka import refused_settings

                raise refused_settings(exc, "consumer") from None
            self._consumer.subscribe(
                list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )  # fmt: skip
            while not self._stop.is_set():
                self._serve()
                self._apply_seeks()
                self._poll()
        except BaseException as exc:  # reported to start and fetch on the loop
            log.exception("Kafka consumer of group %r stopped", self.group)
            self._to_loop(self._fail, exc)
        finally:
            self._close_sync()

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
                    raise TransportError(f"group {self.group!r}: {err.str()}")
                log.warning("group %r: %s", self.group, err.str())
        if good:
            with self._lock:
                self._buffer.extend(good)
            self._to_loop(self._wake)

    def _apply_seeks(self) -> None:
        from confluent_kafka import TopicPartition as RdTopicPartition

        with self._lock:
            seeks, self._seeks = self._seeks, {}
            if seeks:
                self._drop(frozenset(seeks))
        for (topic, partition), offset in seeks.items():
            self._unsaved.pop((topic, partition), None)  # a forced reset overrides it
            if (topic, partition) in self._assigned:
                self._consumer.seek(RdTopicPartition(topic, partition, offset))

    def _drop(self, gone: frozenset[TopicPartition]) -> None:
        # Called with the lock held: buffered messages of partitions no longer read here.
        kept = [m for m in self._buffer if (m.topic(), m.partition()) not in gone]
        self._buffer.clear()
        self._buffer.extend(kept)

    def _close_sync(self) -> None:
        try:
            if self._consumer is not None:
                self._consumer.close()  # leaves the group; on_revoke runs for what is owned
        except Exception:
            log.exception("closing the Kafka consumer of group %r failed", self.group)
        finally:
            self._assigned = frozenset()
            with self._lock:
                self._accepting = False
            self._serve()  # whatever came in before the door closed
            self._to_loop(self._settle_closed)

    # -- rebalance callbacks (polling thread) ----------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        added = frozenset((tp.topic, tp.partition) for tp in partitions)
        self._assigned = self._assigned | added
        self._lost = self._lost - added
        # The rebalance is over (this runs at the end of each one, even with nothing
        # added): commit what was refused meanwhile, before the added partitions'
        # committed offsets are fetched, so that no handled record is read again.
        self._save(self._assigned, check=added)
        self._to_loop(self._settle_joined)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        gone = frozenset((tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self._drop(gone)
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
        self._save(gone)  # refused before, and nothing new since: the owner did not commit
        self._unsaved = {tp: o for tp, o in self._unsaved.items() if tp not in gone}
        self._assigned = self._assigned - gone

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Maybe someone else's already: commits would be refused, so on_revoke is not
        # called. What is handled of them meanwhile is kept (``_unsaved``) in case they
        # come back to this member.
        gone = frozenset((tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self._drop(gone)
        self._lost = self._lost | gone
        self._assigned = self._assigned - gone

    def _save(
        self, tps: frozenset[TopicPartition], check: frozenset[TopicPartition] = frozenset()
    ) -> None:
        """Commit the unsaved offsets of ``tps`` (polling thread); those of ``check``
        (partitions just assigned, possibly owned by another member meanwhile) only
        where they are ahead of the group's committed offset. What fails stays unsaved."""
        from confluent_kafka import TopicPartition as RdTopicPartition

        want = {tp: o for tp, o in self._unsaved.items() if tp in tps}
        if not want or self._consumer is None:
            return
        try:
            ask = [RdTopicPartition(t, p) for (t, p) in want if (t, p) in check]
            for c in self._consumer.committed(ask, timeout=SAVE_TIMEOUT) if ask else []:
                tp = (c.topic, c.partition)
                if c.error is None and c.offset >= want[tp]:
                    del want[tp]  # the group is there already, or further on
                    self._unsaved.pop(tp, None)
            if want:
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
        if self._arrived is not None:
            self._arrived.set()

    def _settle_joined(self) -> None:
        if self._joined is not None and not self._joined.done():
            self._joined.set_result(None)

    def _settle_closed(self) -> None:
        if self._closed_down is not None and not self._closed_down.done():
            self._closed_down.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        error = (
            exc
            if isinstance(exc, TransportError | ConfigError)
            else TransportError(f"Kafka consumer of group {self.group!r}: {exc}")
        )
        self._error = error
        if self._joined is not None and not self._joined.done():
            self._joined.set_exception(error)
        self._wake()

    # -- the protocol --------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group; return once the first assignment is known (maybe empty)."""
        self._loop = loop = asyncio.get_running_loop()
        for topic in self.topics:  # subscribing to a missing topic is an error in Kafka
            await self._transport.create_topic(topic)
        conf = self._transport.config.consumer(self.group, self.start_from)
        conf["client.id"] = f"{conf['client.id']}-{self.member}"  # groups() shows it
        self._joined = loop.create_future()
        self._closed_down = loop.create_future()
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._thread = threading.Thread(
            target=self._main, args=(conf,), name=f"kafka-{self.group}", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._joined), JOIN_TIMEOUT)
        except TimeoutError:
            await self.close()
            raise TransportError(
                f"group {self.group!r}: no assignment from {self._transport.url} after "
                f"{JOIN_TIMEOUT:.0f} s; is the broker reachable and the group coordinator up?"
            ) from None
        except (TransportError, ConfigError):
            await self.close()
            raise

    def take(self, max_records: int) -> list[Any]:
        """Up to ``max_records`` polled messages, oldest first (not waiting)."""
        with self._lock:
            buffer = self._buffer
            if max_records >= len(buffer):
                out = list(buffer)
                buffer.clear()
                return out
            return [buffer.popleft() for _ in range(max_records)]

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        raise NotImplementedError("a member's messages are fetched by its KafkaConsumer")

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        """Commit synchronously; offsets of partitions not owned now are dropped (fenced).

        A commit the broker refuses for a stale generation (or a rebalance under way)
        while this member still owns the partitions is not forgotten: the offsets are
        committed again with the next commit, at the end of the rebalance (``_save`` in
        ``_on_assign``) or when the partitions are revoked. Dropping it left the group's
        offset behind what was handled, and the records from there were read and handled
        again when the partitions came back (docs/kafka.md, "Open").
        """
        if self._consumer is None:
            return
        if not any(tp in self._assigned or tp in self._lost for tp in offsets):
            return
        plain = {tp: position.offset for tp, position in offsets.items()}
        await self._call(lambda: self._commit_owned(plain))

    def _commit_owned(self, offsets: Mapping[TopicPartition, int]) -> None:
        # Polling thread. Offsets of a lost partition are kept, not committed: it may
        # come back (``_on_assign``); those of any other partition not owned are dropped.
        owned = self._assigned
        for tp, o in offsets.items():
            if tp in self._lost and tp not in owned:
                self._unsaved[tp] = o
        want = {tp: o for tp, o in self._unsaved.items() if tp in owned}
        want.update({tp: o for tp, o in offsets.items() if tp in owned})
        if not want:
            return
        self._unsaved.update(want)  # until the broker has taken them
        try:
            self._commit_sync(want)
        except Exception as exc:
            if self._fenced(exc):
                log.info(
                    "group %r: commit refused (%s); kept to commit again once the group "
                    "has settled",
                    self.group, exc,
                )  # fmt: skip
                return
            raise TransportError(f"group {self.group!r}: commit failed: {exc}") from exc

    def _commit_sync(self, want: Mapping[TopicPartition, int]) -> None:
        """Commit ``want`` (polling thread); forget what the broker took."""
        from confluent_kafka import TopicPartition as RdTopicPartition

        tps = [RdTopicPartition(t, p, o) for (t, p), o in want.items()]
        result = self._consumer.commit(offsets=tps, asynchronous=False)
        for c in result or []:
            tp = (c.topic, c.partition)
            if c.error is None:
                if self._unsaved.get(tp) == want.get(tp):
                    self._unsaved.pop(tp, None)
            else:
                log.info("group %r: commit of %s refused: %s; kept", self.group, tp, c.error)

    @staticmethod
    def _fenced(exc: Exception) -> bool:
        from confluent_kafka import KafkaError

        err = exc.args[0] if exc.args else None
        return isinstance(err, KafkaError) and err.code() in (
            KafkaError.ILLEGAL_GENERATION,
            KafkaError.UNKNOWN_MEMBER_ID,
            KafkaError.REBALANCE_IN_PROGRESS,
            KafkaError._STATE,
            KafkaError._ASSIGNMENT_LOST,
        )

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assigned

    def generation(self, tp: TopicPartition) -> int | None:
        return 0 if tp in self._assigned else None  # fenced by the broker's own generation

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

    def seek_soon(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Move owned partitions of ``topic`` before the next poll (a forced reset)."""
        with self._lock:
            self._seeks.update({(topic, p): o for p, o in offsets.items()})
            self._drop(frozenset((topic, p) for p in offsets))

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
        self._assigned = frozenset()
