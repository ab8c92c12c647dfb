"""Appends: JetStream publishes, pipelined, each waiting for its acknowledgment.

An append is a JetStream publish with ``Nats-Msg-Id`` set to the event id, so a
publish repeated within the stream's duplicate window (an outbox relay retrying) is
stored once. Acknowledgments come to one subscription of the connection (a reply
subject per record), not a request each; records of one key are published one after
the other, so that a failed publish never leaves a later event of its key stored
before it (finding 10 of issue 15), and records of different keys are pipelined. A
scheduled append (``append_at``) is a message schedule of the server.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import orjson

from tidings.codec.binary import STRUCTURED_CONTENT_TYPE
from tidings.errors import TransportError
from tidings.partitioning import partition_for
from tidings.transports.nats.client import JetStreamClient
from tidings.transports.nats.errors import translate
from tidings.transports.nats.records import KEY_HEADER, rfc3339
from tidings.transports.nats.streams import Streams, stream_name

__all__ = ["Publisher"]

# (key, value, event id, event type) of a record to publish
Item = tuple[str | None, bytes, str | None, str | None]


class _Pending:
    """The acknowledgments one append waits for: one future for all its records.

    Records of one key are published one after the other (``follow``: the index of the
    next record of the same key, sent once this one is stored)."""

    __slots__ = ("error", "follow", "future", "left", "messages", "seqs")

    def __init__(self, count: int, future: asyncio.Future[None]) -> None:
        self.seqs = [0] * count
        self.left = count
        self.future = future
        self.error: Exception | None = None
        self.follow: dict[int, int] = {}
        # per record: (subject, payload, headers, reply subject)
        self.messages: list[tuple[str, bytes, dict[str, str], str]] = []

    def answer(self, index: int, seq: int | None, error: Exception | None) -> None:
        if seq is not None:
            self.seqs[index] = seq
        elif self.error is None:
            self.error = error
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(None)


class Publisher:
    """The appends of one connection, and the acknowledgments they wait for."""

    def __init__(self, client: JetStreamClient, streams: Streams) -> None:
        self.client = client
        self.streams = streams
        self._acks: dict[str, tuple[_Pending, int]] = {}  # reply subject -> (append, index)
        self._ack_prefix = ""
        self._ack_ids = itertools.count()

    async def start(self) -> None:
        """Subscribe to the acknowledgments (once connected)."""
        nc = self.client.connected()
        self._ack_prefix = nc.new_inbox()
        try:
            await nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)
        except Exception as exc:
            raise translate(exc, self.client.url, "subscribing to publish answers failed") from exc

    def close(self) -> None:
        """Fail the appends still waiting (the connection is closing)."""
        for pending, _ in self._acks.values():
            if not pending.future.done():
                error = TransportError(f"{self.client.url}: closed while publishing")
                pending.future.set_exception(error)
        self._acks.clear()

    async def _on_ack(self, msg: Any) -> None:
        waiting = self._acks.pop(msg.subject, None)
        if waiting is None:
            return
        pending, index = waiting
        if msg.headers and msg.headers.get("Status") == "503":
            self._refused(pending, index, {"code": 503}, "")
            return
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError as exc:
            self._refused(pending, index, exc, f": bad answer {msg.data!r}")
            return
        refused = answer.get("error")
        if refused:
            self._refused(pending, index, refused, "")
        else:
            self._answer(pending, index, int(answer["seq"]), None)
        nxt = pending.follow.pop(index, None)
        if nxt is not None and not pending.future.done():
            await self._send(pending, nxt)

    def _refused(self, pending: _Pending, index: int, cause: Any, what: str) -> None:
        doing = f"publish to {pending.messages[index][0]} failed{what}"
        self._answer(pending, index, None, translate(cause, self.client.url, doing))

    async def publish(
        self, topic: str, records: Sequence[Item], due_ms: int | None
    ) -> list[tuple[int, int]]:
        """Publish ``records`` (key, value, event id, event type), now or scheduled for
        ``due_ms``; wait for every acknowledgment; return each one's (partition, stream
        sequence)."""
        if not records:
            return []
        nc = self.client.connected()
        count = await self.streams.ensure(topic)
        pending = _Pending(len(records), asyncio.get_running_loop().create_future())
        first, partitions, replies = self._messages(nc, pending, topic, count, records, due_ms)
        messages = pending.messages
        try:
            for index in first:
                await nc.publish(
                    *messages[index][:2], reply=messages[index][3], headers=messages[index][2]
                )
        except Exception as exc:
            self._forget(replies, pending)
            raise translate(exc, self.client.url, f"publish to {topic!r} failed") from exc
        timeout = self.client.timeout
        try:
            # asyncio.timeout, not wait_for(shield(...)): the answer reaches the publisher
            # one loop turn after the last acknowledgment instead of three (shield's and
            # wait_for's callbacks), less work on a loop the worker shares. Cancelling
            # this wait cancels pending.future, which nothing else awaits: answers
            # arriving later find it done.
            async with asyncio.timeout(timeout):
                await pending.future
        except TimeoutError as exc:
            self._forget(replies, pending)
            raise translate(
                exc,
                self.client.url,
                f"{pending.left} of {len(records)} records to {topic!r} were not acknowledged "
                f"in {timeout:g}s",
                hint="appending them again is safe (deduplicated by event id)",
            ) from None
        if pending.error is not None:
            raise pending.error
        return list(zip(partitions, pending.seqs, strict=True))

    def _messages(
        self,
        nc: Any,
        pending: _Pending,
        topic: str,
        count: int,
        records: Sequence[Item],
        due_ms: int | None,
    ) -> tuple[list[int], list[int], list[str]]:
        """Make each record's message into ``pending``, registered for its answer:
        the records to send first (the first of each key, and every keyless one),
        the partitions, and the reply subjects."""
        stream = stream_name(topic)
        partitions: list[int] = []
        replies: list[str] = []
        prefix = self._ack_prefix + "."
        acks, ids = self._acks, self._ack_ids
        messages, follow = pending.messages, pending.follow
        first: list[int] = []  # the first record of each key (and every keyless one)
        last_of: dict[str, int] = {}
        for index, (key, value, ident, kind) in enumerate(records):
            partition = partition_for(key, count)
            subject = f"{stream}.{partition}.{kind or '_'}"
            headers = {"Content-Type": STRUCTURED_CONTENT_TYPE}
            if key is not None:
                headers[KEY_HEADER] = key
                before = last_of.get(key)
                if before is None:
                    first.append(index)
                else:
                    follow[before] = index  # sent once ``before`` is stored
                last_of[key] = index
            else:
                first.append(index)
            if due_ms is not None:
                headers["Nats-Schedule"] = "@at " + rfc3339(due_ms)
                headers["Nats-Schedule-Target"] = subject
                subject = f"{stream}.sched.{nc._nuid.next().decode()}"
                if ident is not None:
                    headers["Nats-Msg-Id"] = "scheduled:" + ident
            elif ident is not None:
                headers["Nats-Msg-Id"] = ident
            reply = prefix + str(next(ids))
            acks[reply] = (pending, index)
            replies.append(reply)
            partitions.append(partition)
            messages.append((subject, value, headers, reply))
        return first, partitions, replies

    def _answer(
        self, pending: _Pending, index: int, seq: int | None, error: Exception | None
    ) -> None:
        """Record one record's answer; a failure also fails the later records of its key,
        which were held back and are never sent (the caller appends them again, in
        order, after the failed one)."""
        pending.answer(index, seq, error)
        if error is None:
            return
        nxt = pending.follow.pop(index, None)
        while nxt is not None:
            self._acks.pop(pending.messages[nxt][3], None)
            pending.answer(
                nxt,
                None,
                TransportError(
                    f"{self.client.url}: not published: an earlier event of its key was not stored"
                ),
            )
            nxt = pending.follow.pop(nxt, None)

    async def _send(self, pending: _Pending, index: int) -> None:
        """Publish a record held back behind an earlier one of its key, now stored."""
        subject, value, headers, reply = pending.messages[index]
        try:
            await self.client.connected().publish(subject, value, reply=reply, headers=headers)
        except Exception as exc:
            self._acks.pop(reply, None)
            error = translate(exc, self.client.url, f"publish to {subject} failed")
            self._answer(pending, index, None, error)

    def _forget(self, replies: list[str], pending: _Pending) -> None:
        for reply in replies:
            self._acks.pop(reply, None)
        if not pending.future.done():
            pending.future.cancel()
        elif not pending.future.cancelled():
            pending.future.exception()  # retrieved: no "never retrieved" warning
