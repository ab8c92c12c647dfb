"""Group state on the server: the groups KV bucket and the durable consumers.

A **group** has one durable pull consumer per topic partition, ``<group>-<partition>``,
shared by the group's members; its ack floor is the group's committed offset. Who
pulls what is settled in the ``tidings-groups`` KV bucket (one per account): a key
``<group>.m.<member>`` per live member, with a time to live, and a lease key
``<group>.l.<topic>.<partition>`` per owned partition, holding its member (or, while a
forced offset reset runs, a JSON reset marker). The members' protocol is in
``membership``; :class:`GroupClient` is what they, and the group operations of the
transport, ask of the server.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from tidings.transport import (
    SYSTEM_CLOCK,
    Clock,
    FaultHook,
    GroupInfo,
    GroupPartition,
    MemberInfo,
    StartFrom,
)
from tidings.transports.nats.client import JetStreamClient
from tidings.transports.nats.errors import (
    CONSUMER_NOT_FOUND,
    WRONG_LAST_SEQUENCE,
    NatsApiError,
    translate,
)
from tidings.transports.nats.streams import META_TOPIC, Streams, stream_name

__all__ = [
    "GROUPS_PREFIX",
    "GroupClient",
    "consumer_name",
    "lease_holder",
    "list_groups",
    "reset_marker",
]

GROUPS_BUCKET = "tidings-groups"  # a KV bucket: group members and partition leases
GROUPS_STREAM = "KV_" + GROUPS_BUCKET
GROUPS_PREFIX = f"$KV.{GROUPS_BUCKET}."
META_GROUP = "tidings.group"
META_PARTITION = "tidings.partition"


def consumer_name(group: str, partition: int) -> str:
    """The durable consumer of ``group`` on one partition of a topic's stream."""
    return f"{group}-{partition}"


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


class GroupClient:
    """What group members (and the transport's group operations) ask of the server.

    ``clock`` judges leases and ``fault_hook`` is called at the members' fault points;
    the transport's attributes of those names are these (tests replace them)."""

    def __init__(self, client: JetStreamClient, streams: Streams) -> None:
        self.client = client
        self.streams = streams
        self.url = client.url
        self.config = client.config
        self.clock: Clock = SYSTEM_CLOCK
        self.fault_hook: FaultHook | None = None
        self._bucket_ready = False

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (or not yet open)."""
        return self.client.nc is None

    def connection(self) -> Any:
        """The connection (nats-py's ``NATS``), for subscriptions, pulls and acks."""
        return self.client.connected()

    async def ensure_topic(self, topic: str) -> int:
        """The partition count of ``topic``, its stream created if missing."""
        return await self.streams.ensure(topic)

    async def ensure_bucket(self) -> None:
        """The KV bucket of group members and partition leases (one per account)."""
        if self._bucket_ready:
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
        await self.streams.create_stream(config)
        self._bucket_ready = True

    async def entries(self, group: str | None = None) -> dict[str, tuple[int, bytes | None]]:
        """The keys of the groups bucket under ``group`` (all groups: None), each with
        its last sequence and value; None for a deleted key (its sequence is what a
        compare-and-set claiming it again must name)."""
        await self.ensure_bucket()
        pattern = GROUPS_PREFIX + (f"{group}.>" if group else ">")
        msgs = await self.client.direct_get(
            GROUPS_STREAM, {"multi_last": [pattern], "batch": 100_000}
        )
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
        nc = self.client.connected()
        doing = f"groups bucket write of {key!r} failed"
        timeout = self.client.timeout
        try:
            msg = await nc.request(GROUPS_PREFIX + key, value, timeout=timeout, headers=headers)
        except Exception as exc:
            raise translate(exc, self.url, doing, within=timeout) from exc
        answer = orjson.loads(msg.data) if msg.data else {}
        error = answer.get("error")
        if error:
            if int(error.get("err_code", 0)) in WRONG_LAST_SEQUENCE:
                return None
            raise translate(error, self.url, doing)
        return int(answer["seq"])

    async def forget_topic(self, topic: str) -> None:
        """Delete every group's lease keys of ``topic`` (a deleted topic): a member
        still holding one fails its next renewal and lets the partition go."""
        for key, (_, value) in (await self.entries()).items():
            _, kind, rest = key.split(".", 2)
            if kind == "l" and rest.rpartition(".")[0] == topic and value is not None:
                await self.put_entry(key, b"", ttl=self.config.lease, delete=True)

    async def ensure_consumer(
        self, group: str, topic: str, partition: int, start_from: StartFrom
    ) -> dict[str, Any]:
        """The group's durable consumer of one partition, created if missing."""
        stream, name = stream_name(topic), consumer_name(group, partition)
        try:
            return await self.client.api(f"CONSUMER.INFO.{stream}.{name}")
        except NatsApiError as exc:
            if exc.err_code != CONSUMER_NOT_FOUND:
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
        info = await self.client.api(
            f"CONSUMER.CREATE.{stream}.{name}",
            {"stream_name": stream, "config": config, "action": "create"},
        )
        if start_from == "latest":
            last = int((await self.client.stream_info(stream))["state"].get("last_seq", 0))
            info = await self.reset_consumer(topic, name, last + 1)
        return info

    async def reset_consumer(self, topic: str, name: str, seq: int) -> dict[str, Any]:
        """Restart a consumer's deliveries at stream sequence ``seq`` (0: its ack floor
        + 1), forgetting what it had delivered and not yet seen acknowledged."""
        return await self.client.api(
            f"CONSUMER.RESET.{stream_name(topic)}.{name}", {"seq": seq} if seq else None
        )


async def list_groups(groups: GroupClient) -> list[GroupInfo]:
    """Every group: its partitions' offsets and lag, and its live members."""
    members, owners = _members_and_owners(await groups.entries())
    rows: dict[str, list[GroupPartition]] = {}
    for info in await groups.client.streams():
        meta = info.get("config", {}).get("metadata") or {}
        topic = meta.get(META_TOPIC)
        if isinstance(topic, str):
            await _partition_rows(groups, topic, info, owners, rows)
    out = []
    for group in sorted(set(rows) | set(members)):
        held: dict[str, list[tuple[str, int]]] = {}
        for owned, member in owners.items():
            if owned[0] == group:
                held.setdefault(member, []).append(owned[1:])
        out.append(
            GroupInfo(
                group=group,
                partitions=tuple(sorted(rows.get(group, []), key=lambda r: (r.topic, r.partition))),
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


def _members_and_owners(
    entries: dict[str, tuple[int, bytes | None]],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, int], str]]:
    """Each group's live members (with what they said of themselves), and the holder
    of each leased partition, (group, topic, partition), while that one is live."""
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
    return members, owners


async def _partition_rows(
    groups: GroupClient,
    topic: str,
    info: dict[str, Any],
    owners: dict[tuple[str, str, int], str],
    rows: dict[str, list[GroupPartition]],
) -> None:
    """Add a row to ``rows`` for each group partition of ``topic`` (a durable consumer
    of its stream, ``info``)."""
    stream = stream_name(topic)
    state = info.get("state", {})
    first, last = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
    for c in await groups.client.consumers(stream):
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
