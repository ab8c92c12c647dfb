"""The library behind the operating commands: positions, topics, groups, publish
lines, tail and offset resets, called directly on a real SQLite log and on memory://."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from tidings import GroupNotFound, Tidings
from tidings.admin import (
    GROUP_JSON_KEYS,
    GROUP_TOPIC_JSON_KEYS,
    GroupTopic,
    dead_letter_counts,
    delete_topic,
    describe_group,
    group_row_json,
    group_rows,
    group_topic_json,
    group_topics,
    is_internal,
    live_readers,
    parse_position,
    parse_publish_lines,
    parse_time,
    partition_lag,
    publish,
    reset_offsets,
    resolve_start,
    topic_json,
    topic_rows,
)
from tidings.codec import decode, encode
from tidings.dead_letters import DeadLetterLog
from tidings.envelope import Event
from tidings.errors import (
    ConfigError,
    DecodeError,
    EventTooLarge,
    GroupBusy,
    InvalidEventType,
    TopicNotFound,
)
from tidings.tail import TailEntry, TailFilter, tail
from tidings.testing import eventually
from tidings.transport import Consumer, GroupPartition, Record, Transport

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "memory"])
async def app(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[Tidings]:
    """An app on a real SQLite file, and on memory:// (the functions use the protocol only)."""
    base = sqlite_url if request.param == "sqlite" else "memory://"
    async with Tidings(base + "?partitions=4", service="svc") as events:
        yield events


async def publish_spaced(app: Tidings, topic: str, subjects: list[str]) -> list[Event]:
    """One append per event, a few ms apart, so that append times are distinct."""
    out = []
    for i, subject in enumerate(subjects):
        out.append(await app.publish(topic, {"i": i}, type="thing.happened", subject=subject))
        await asyncio.sleep(0.003)
    return out


async def member(
    transport: Transport, group: str, topic: str, commit: dict[int, int] | None = None
) -> Consumer:
    """A live member of ``group`` owning every partition, after committing ``commit``."""
    consumer = transport.consumer(group, [topic])
    await consumer.start()
    if commit:
        await consumer.commit(consumer.at({(topic, p): offset for p, offset in commit.items()}))
    return consumer


async def collect(entries: AsyncIterator[TailEntry]) -> list[TailEntry]:
    return [entry async for entry in entries]


# -- positions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("2026-11-22T08:00:00Z", datetime(2026, 11, 22, 8, tzinfo=UTC)),
        ("2026-11-22T09:00:00+01:00", datetime(2026, 11, 22, 8, tzinfo=UTC)),
        ("2026-11-22T08:00:00", datetime(2026, 11, 22, 8, tzinfo=UTC)),  # naive: UTC
        ("2026-11-22", datetime(2026, 11, 22, tzinfo=UTC)),
    ],
)
def test_times_are_iso_8601_or_an_age_before_now(text: str, expected: datetime) -> None:
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_an_offset_in_the_time_is_kept() -> None:
    parsed = parse_time("2026-11-22T09:00:00+01:00", NOW)
    assert parsed.utcoffset() == timezone(timedelta(hours=1)).utcoffset(None)


@pytest.mark.parametrize("text", ["yesterday", "10", "10x", "m10", "", "99999999999999d"])
def test_a_bad_time_names_the_text_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_time(text, NOW)
    assert repr(text) in str(info.value)
    assert "2026-11-22T10:00:00Z" in str(info.value)
    assert "10m" in str(info.value)


def test_positions_are_earliest_latest_times_and_offsets_only_where_allowed() -> None:
    assert parse_position("earliest", NOW) == "earliest"
    assert parse_position(" latest ", NOW) == "latest"
    assert parse_position("5m", NOW) == NOW - timedelta(minutes=5)
    assert parse_position("42", NOW, offsets=True) == 42
    with pytest.raises(ConfigError, match=r"--from '42' is a bare number.*needs a unit"):
        parse_position("42", NOW, name="--from")
    with pytest.raises(ConfigError, match=r"--to 'soon' is not valid.*an OFFSET"):
        parse_position("soon", NOW, offsets=True, name="--to")


async def test_start_positions_are_resolved_per_partition(app: Tidings) -> None:
    await app.transport.create_topic("t", 2)
    before = await publish_spaced(app, "t", ["a", "b", "c", "d"])
    await asyncio.sleep(0.02)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.005)
    after = await publish_spaced(app, "t", ["a", "b", "c", "d", "e", "f"])
    ends = {p.partition: p.end for p in (await topic_rows(app.transport))[0].partitions}
    assert sum(ends.values()) == len(before) + len(after)

    assert await resolve_start(app.transport, "t", "earliest") == {0: 0, 1: 0}
    assert await resolve_start(app.transport, "t", "latest") == ends
    by_time = await resolve_start(app.transport, "t", cut)
    assert sum(ends[p] - by_time[p] for p in ends) == len(after)
    # An offset applies to every partition, kept within what is stored.
    assert await resolve_start(app.transport, "t", 10**6) == ends
    assert await resolve_start(app.transport, "t", 1) == {p: min(1, e) for p, e in ends.items()}
    with pytest.raises(TopicNotFound, match="'nope' does not exist"):
        await resolve_start(app.transport, "nope", "earliest")


# -- topics and groups ------------------------------------------------------------


async def test_topics_list_partitions_end_offsets_and_sizes(app: Tidings) -> None:
    await app.transport.create_topic("b-topic", 2)
    events = await publish_spaced(app, "a-topic", ["x", "x", "y"])
    rows = await topic_rows(app.transport)
    assert [r.name for r in rows] == ["a-topic", "b-topic"]
    doc = topic_json(rows[0])
    assert doc["topic"] == "a-topic"
    assert doc["events"] == 3
    assert doc["bytes"] == sum(len(encode(e)) for e in events)
    assert len(doc["partitions"]) == 4  # the URL's default partition count
    assert sorted(p["end"] for p in doc["partitions"]) == [0, 0, 1, 2]
    assert sum(p["bytes"] for p in doc["partitions"]) == doc["bytes"]
    assert topic_json(rows[1])["events"] == 0


async def test_group_rows_show_committed_end_lag_and_the_owning_member(app: Tidings) -> None:
    await publish_spaced(app, "t", [f"s{i}" for i in range(8)])
    ends = {p.partition: p.end for p in (await topic_rows(app.transport))[0].partitions}
    live = await member(app.transport, "mailer", "t", {p: e // 2 for p, e in ends.items()})
    try:
        rows = await group_rows(app.transport)
        assert [(r.group, r.topic, r.partition) for r in rows] == [
            ("mailer", "t", p) for p in range(4)
        ]
        for r in rows:
            assert r.committed == ends[r.partition] // 2
            assert r.end == ends[r.partition]
            assert r.lag == ends[r.partition] - ends[r.partition] // 2
            assert r.member == live.member
        assert sum(r.lag for r in rows) == 8 - sum(e // 2 for e in ends.values())
    finally:
        await live.close()
    rows = await group_rows(app.transport, "mailer")
    assert {r.member for r in rows} == {None}  # closed: no live member owns anything


async def test_partition_lag_keeps_the_append_times_it_read_when_given_stamps(
    app: Tidings,
) -> None:
    await publish_spaced(app, "t", [f"s{i}" for i in range(8)])
    live = await member(app.transport, "mailer", "t", {p: 0 for p in range(4)})
    await live.close()
    rows = [r for r in await group_rows(app.transport) if r.lag]
    now = app.transport.clock.time_ms() / 1000 + 5
    stamps: dict[tuple[str, int, int], int] = {}
    plain = [await partition_lag(app.transport, r, now) for r in rows]
    kept = [await partition_lag(app.transport, r, now, stamps) for r in rows]
    assert kept == plain
    assert all(lag.seconds >= 5 for lag in kept)
    assert set(stamps) == {("t", r.partition, 0) for r in rows}
    read = 0
    real = app.transport.read

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal read
        read += 1
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    app.transport.read = counted  # type: ignore[method-assign]
    try:
        assert [await partition_lag(app.transport, r, now, stamps) for r in rows] == plain
        assert read == 0  # the kept append times: nothing read again
    finally:
        app.transport.read = real  # type: ignore[method-assign]


def test_group_json_has_exactly_the_documented_keys() -> None:
    from tidings.transport import GroupPartition

    row = GroupPartition("g", "t", 3, 5, 9, member="m-1")
    assert tuple(group_row_json(row, 2)) == GROUP_JSON_KEYS
    assert group_row_json(row, 2) == {
        "group": "g",
        "topic": "t",
        "partition": 3,
        "committed": 5,
        "end": 9,
        "lag": 4,
        "lost": 0,
        "dlq": 2,
        "health": None,  # no samples kept: not judged
        "health_reason": None,
        "health_complete": None,
    }


def test_group_topics_sum_a_groups_partitions_per_topic_with_a_status() -> None:
    rows = [
        GroupPartition("a", "t", 0, 5, 9, member="m-2"),  # lag 4
        GroupPartition("a", "t", 1, 3, 3, member="m-1"),
        GroupPartition("a", "t", 2, None, 2, member="m-2", lost=1),  # lag 2
        GroupPartition("a", "u", 0, 1, 1, member="m-1"),
        GroupPartition("a", "v", 0, 0, 4, member="m-1"),
        GroupPartition("a", "v", 1, 0, 4),  # nobody holds it
        GroupPartition("b", "t", 0, 0, 7),
    ]
    dlq = {("a", "t", 0): 2, ("a", "t", 2): 1, ("a", "v", 1): 5, ("b", "u", 0): 9}
    lines = group_topics(rows, dlq)
    assert lines == [
        GroupTopic("a", "t", 3, lag=6, lost=1, dlq=3, members=("m-1", "m-2"), held=3),
        GroupTopic("a", "u", 1, lag=0, lost=0, dlq=0, members=("m-1",), held=1),
        GroupTopic("a", "v", 2, lag=8, lost=0, dlq=5, members=("m-1",), held=1),
        GroupTopic("b", "t", 1, lag=7, lost=0, dlq=0, members=(), held=0),
    ]
    assert [line.status for line in lines] == ["lagging", "ok", "partial", "stopped"]
    assert tuple(group_topic_json(lines[0])) == GROUP_TOPIC_JSON_KEYS
    assert group_topic_json(lines[0]) == {
        "group": "a",
        "topic": "t",
        "partitions": 3,
        "lag": 6,
        "lost": 1,
        "dlq": 3,
        "members": ["m-1", "m-2"],
        "status": "lagging",
        "health": None,
        "health_reason": None,
        "health_complete": None,
    }
    assert group_topics([], dlq) == []


def test_lag_health_judges_each_group_and_topic_from_the_samples_the_log_keeps() -> None:
    from tidings.admin import LagStatus, health_json, lag_health, partition_health
    from tidings.transport import GroupPartition, LagSample

    stuck = tuple(LagSample(1_000 * i, 7, 30) for i in range(10))
    moving = tuple(LagSample(1_000 * i, 10 * i, 0) for i in range(10))
    rows = [
        GroupPartition("a", "t", 0, 7, 37, member="m-1", samples=stuck),
        GroupPartition("a", "t", 1, 90, 90, member="m-1", samples=moving),
        GroupPartition("a", "u", 0, 0, 3, member="m-1", samples=stuck[:2]),
    ]
    health = lag_health(rows, 10_000)
    assert health is not None
    assert [(line, h.status) for line, h in health.items()] == [
        (("a", "t"), LagStatus.ERR),
        (("a", "u"), LagStatus.OK),  # two samples: too few to judge
    ]
    assert health_json(health[("a", "t")]) == {
        "health": "ERR",
        "health_reason": "t[0] STALL: offset 7 has not moved for 10 samples while lag is 30",
        "health_complete": 1.0,
    }
    assert health_json(health[("a", "u")])["health_complete"] == 0.2
    # The lag now (the row's), not the newest sample's, is the one reported.
    assert health[("a", "u")].partitions[("a", "u", 0)].lag == 3
    parts = partition_health(health, rows)
    assert [h.status if h else None for h in parts] == [
        LagStatus.STALL, LagStatus.OK, LagStatus.OK
    ]  # fmt: skip
    # A log that keeps no samples (samples None): nothing judged, every row "-".
    bare = [GroupPartition("a", "t", 0, 7, 37)]
    assert lag_health(bare, 10_000) is None
    assert partition_health(None, bare) == [None]


def test_a_groups_internal_topics_are_its_own_retry_and_dlq() -> None:
    assert is_internal("mail", "mail.retry")
    assert is_internal("mail", "mail.dlq")
    assert not is_internal("mail", "audit.retry")  # another group's: not mail's
    assert not is_internal("mail", "mail")
    assert not is_internal("mail", "tasks")


async def test_group_rows_leave_out_the_retry_topic_unless_asked_and_count_dead_letters(
    app: Tidings,
) -> None:
    await app.transport.create_topic("t", 2)
    await app.transport.create_topic("mailer.retry", 2)
    await (await member(app.transport, "mailer", "t")).close()
    consumer = app.transport.consumer("mailer", ["mailer.retry"])
    await consumer.start()
    await consumer.commit(consumer.at({("mailer.retry", 0): 0, ("mailer.retry", 1): 0}))
    await consumer.close()
    dead = DeadLetterLog(app.transport, "mailer")
    await dead.create_topics()
    stop = asyncio.Event()
    for partition, offset in ((1, 0), (1, 1), (0, 4)):
        record = Record("t", partition, offset, 0, "k", b"{}")
        await dead.write(dead.entry(record, OSError("no"), reason="failed"), stop)
    await dead.mark("purged", [next(iter(dead.entries))], stop)  # no longer waiting

    rows = await group_rows(app.transport)
    assert {(r.topic, r.partition) for r in rows} == {("t", 0), ("t", 1)}
    everything = await group_rows(app.transport, "mailer", internal=True)
    assert {(r.topic, r.partition) for r in everything} == {
        ("t", 0), ("t", 1), ("mailer.retry", 0), ("mailer.retry", 1)
    }  # fmt: skip
    counts = await dead_letter_counts(app.transport, everything)
    assert counts == {("mailer", "t", 1): 1, ("mailer", "t", 0): 1}
    lines = group_topics(everything, counts)
    assert [(x.topic, x.partitions, x.dlq, x.status) for x in lines] == [
        ("mailer.retry", 2, 0, "stopped"),
        ("t", 2, 2, "stopped"),
    ]
    assert await dead_letter_counts(app.transport, []) == {}


async def test_an_unknown_group_is_an_error_listing_the_known_ones(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a"])
    await (await member(app.transport, "audit", "t")).close()
    with pytest.raises(GroupNotFound, match=r"'audti' does not exist.*known groups: audit"):
        await group_rows(app.transport, "audti")
    with pytest.raises(GroupNotFound, match="known groups: audit"):
        await describe_group(app.transport, "nope")


# -- publish lines ---------------------------------------------------------------


def lines(*docs: object) -> list[bytes]:
    return [d if isinstance(d, bytes) else orjson.dumps(d) for d in docs]


def test_short_form_lines_become_events_of_the_cli_app() -> None:
    app = Tidings("memory://", service="tidings-cli")
    events = parse_publish_lines(
        lines(
            {"type": "task.created", "data": {"id": 1}, "subject": "t-1"},
            b"   ",
            {"type": "task.deleted", "data": None, "correlationid": "req-2"},
        ),
        app,
        subject="default-subject",
        correlation_id="req-1",
    )
    assert [(e.type, e.data, e.subject, e.correlationid) for e in events] == [
        ("task.created", {"id": 1}, "t-1", "req-1"),
        ("task.deleted", None, "default-subject", "req-2"),
    ]
    assert {e.source for e in events} == {"tidings-cli"}
    assert len({e.id for e in events}) == 2


def test_cloudevents_lines_are_published_as_they_are() -> None:
    original = Event(type="task.created", source="taskapi", data={"id": 7}, subject="t-7")
    (event,) = parse_publish_lines([encode(original)], Tidings("memory://", service="cli"))
    assert (event.id, event.source, event.time, event.data) == (
        original.id,
        "taskapi",
        original.time,
        {"id": 7},
    )
    assert decode(encode(event)).subject == "t-7"


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (b'{"type": "a.b", "data": {x}}', DecodeError, "stdin line 3: not valid JSON"),
        (b"[1, 2]", DecodeError, "stdin line 3: expected a JSON object, got list"),
        (b'{"type": "Task Created", "data": 1}', InvalidEventType, "stdin line 3: event type"),
        (b'{"type": "a.b", "dta": 1}', DecodeError, "stdin line 3: unknown key(s) dta"),
        (b'{"type": "a.b"}', DecodeError, "stdin line 3: missing 'data'"),
        (b'{"type": "a.b", "data": 1, "subject": 5}', DecodeError, "'subject' must be a string"),
        (
            b'{"specversion": "1.0", "type": "a.b", "id": "1"}',
            DecodeError,
            "stdin line 3: required attribute 'source' is missing",
        ),
        (b'{"type": "a.b", "data": "' + b"x" * 3000 + b'"}', EventTooLarge, "stdin line 3: "),
    ],
)
def test_a_bad_line_is_reported_with_its_number(
    bad: bytes, error: type[Exception], message: str
) -> None:
    app = Tidings("memory://", service="cli", max_event_bytes=2048)
    good = orjson.dumps({"type": "a.b", "data": 1})
    with pytest.raises(error) as info:
        parse_publish_lines([good, good, bad, good], app)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_invalid_type_keeps_the_invalid_event_type_message() -> None:
    with pytest.raises(InvalidEventType, match=r"'Created' is not lower-case 'domain.action'"):
        parse_publish_lines(
            lines({"type": "Created", "data": 1}), Tidings("memory://", service="c")
        )


def test_no_events_on_stdin_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="no events on stdin"):
        parse_publish_lines([b"", b"  \n"], Tidings("memory://", service="c"))


async def test_publishing_to_a_missing_topic_is_refused_unless_created(app: Tidings) -> None:
    events = parse_publish_lines(lines({"type": "a.b", "data": 1}), app)
    with pytest.raises(TopicNotFound, match="'typo' does not exist"):
        await publish(app, "typo", events)
    assert await topic_rows(app.transport) == []
    await publish(app, "typo", events, create=True)
    assert [r.events for r in await topic_rows(app.transport)] == [1]


# -- tail ---------------------------------------------------------------------------


async def test_tail_merges_partitions_in_append_order(app: Tidings) -> None:
    published = await publish_spaced(app, "t", [f"s{i}" for i in range(10)])
    entries = await collect(tail(app.transport, "t"))
    assert len({e.record.partition for e in entries}) > 1  # the merge had work to do
    assert [e.event.id for e in entries if e.event] == [e.id for e in published]
    stamps = [(e.record.timestamp, e.record.partition) for e in entries]
    assert stamps == sorted(stamps)


async def test_tail_filters_by_type_subject_and_correlation_id(app: Tidings) -> None:
    await app.publish("t", 1, type="task.created", subject="a", correlation_id="r1")
    await app.publish("t", 2, type="task.created", subject="b", correlation_id="r2")
    await app.publish("t", 3, type="task.deleted", subject="a", correlation_id="r2")

    async def data(where: TailFilter) -> list[int]:
        entries = await collect(tail(app.transport, "t", where=where))
        return sorted(e.event.data for e in entries if e.event)

    assert await data(TailFilter(types=frozenset({"task.created"}))) == [1, 2]
    assert await data(TailFilter(subject="a")) == [1, 3]
    assert await data(TailFilter(correlation_id="r2")) == [2, 3]
    assert await data(TailFilter(frozenset({"task.deleted"}), "a", "r2")) == [3]
    assert await data(TailFilter(frozenset({"task.deleted"}), "b")) == []
    with pytest.raises(InvalidEventType):
        TailFilter(types=frozenset({"Task.Created"}))


async def test_tail_stops_after_the_limit_of_matching_events(app: Tidings) -> None:
    published = await publish_spaced(app, "t", [f"s{i}" for i in range(6)])
    entries = await collect(tail(app.transport, "t", limit=4))
    assert [e.event.id for e in entries if e.event] == [e.id for e in published[:4]]


async def test_tail_from_a_time_shows_only_later_events(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a", "b", "c"])
    await asyncio.sleep(0.02)
    cut = datetime.now(UTC)
    later = await publish_spaced(app, "t", ["a", "d"])
    start = await resolve_start(app.transport, "t", cut)
    entries = await collect(tail(app.transport, "t", start))
    assert [e.event.id for e in entries if e.event] == [e.id for e in later]
    start = await resolve_start(app.transport, "t", parse_time("1h", datetime.now(UTC)))
    assert len(await collect(tail(app.transport, "t", start))) == 5


async def test_undecodable_records_are_reported_and_do_not_count(app: Tidings) -> None:
    await app.transport.create_topic("t", 1)
    await app.transport.append("t", [(None, b"not json")])
    await asyncio.sleep(0.003)
    good = await app.publish("t", 1, type="a.b")
    entries = await collect(tail(app.transport, "t", limit=1))
    assert [(e.record.offset, e.event is None) for e in entries] == [(0, True), (1, False)]
    assert "not valid UTF-8 JSON" in (entries[0].error or "")
    assert entries[1].event is not None
    assert entries[1].event.id == good.id


async def test_tail_ends_at_the_end_it_found_without_follow(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a", "b"])
    entries = tail(app.transport, "t")
    first = await anext(entries)
    await app.publish("t", 9, type="a.b", subject="a")  # appended after the start
    rest = await collect(entries)
    assert [e.event.data for e in [first, *rest] if e.event] == [{"i": 0}, {"i": 1}]


async def test_follow_prints_new_events_until_stopped(app: Tidings) -> None:
    await publish_spaced(app, "t", ["old"])
    start = await resolve_start(app.transport, "t", "latest")
    stop = asyncio.Event()
    seen: list[TailEntry] = []

    async def follow() -> None:
        async for entry in tail(app.transport, "t", start, follow=True, stop=stop, poll=0.05):
            seen.append(entry)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    new = await publish_spaced(app, "t", ["x", "y", "z"])
    await eventually(lambda: len(seen) == 3, timeout=5)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert [e.event.id for e in seen if e.event] == [e.id for e in new]


async def test_tail_of_a_missing_topic_is_topic_not_found(app: Tidings) -> None:
    with pytest.raises(TopicNotFound, match="'nope' does not exist"):
        await collect(tail(app.transport, "nope"))


# -- offsets ---------------------------------------------------------------------


async def test_reset_moves_every_topic_of_the_group_and_returns_old_and_new(
    app: Tidings,
) -> None:
    await publish_spaced(app, "a", ["1", "2", "3", "4", "5"])
    await app.transport.create_topic("b", 1)
    await publish_spaced(app, "b", ["1", "2"])
    consumer = app.transport.consumer("g", ["a", "b"])
    await consumer.start()
    ends = {(r.topic, r.partition): r.end for r in await group_rows(app.transport, "g")}
    await consumer.commit(consumer.at(ends))
    await consumer.close()

    changes = await reset_offsets(app.transport, "g", "earliest")
    assert {(c.topic, c.partition): (c.old, c.new) for c in changes} == {
        tp: (end, 0) for tp, end in ends.items()
    }
    assert {r.committed for r in await group_rows(app.transport, "g")} == {0}

    changes = await reset_offsets(app.transport, "g", "latest", topic="b")
    assert [(c.topic, c.old, c.new) for c in changes] == [("b", 0, 2)]
    rows = await group_rows(app.transport, "g")
    assert {r.topic: r.committed for r in rows if r.topic == "b"} == {"b": 2}
    assert {r.committed for r in rows if r.topic == "a"} == {0}


async def test_reset_leaves_the_retry_topic_alone_unless_asked(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a", "b"])
    await app.transport.create_topic("g.retry", 1)
    await app.transport.append("g.retry", [("a", b"{}"), ("a", b"{}")])
    consumer = app.transport.consumer("g", ["t", "g.retry"])
    await consumer.start()
    await consumer.commit(consumer.at({("g.retry", 0): 1}))
    await consumer.close()

    changes = await reset_offsets(app.transport, "g", "latest")
    assert {c.topic for c in changes} == {"t"}
    retry = [r for r in await group_rows(app.transport, "g", internal=True) if r.topic == "g.retry"]
    assert [r.committed for r in retry] == [1]  # a replay not handled yet stays due
    changes = await reset_offsets(app.transport, "g", "latest", internal=True)
    assert {c.topic for c in changes} == {"t", "g.retry"}
    assert [(c.old, c.new) for c in changes if c.topic == "g.retry"] == [(1, 2)]
    named = await reset_offsets(app.transport, "g", "earliest", topic="g.retry")
    assert [(c.topic, c.old, c.new) for c in named] == [("g.retry", 2, 0)]


async def test_reset_of_a_group_with_only_its_retry_topic_names_no_topic(app: Tidings) -> None:
    await app.transport.create_topic("g.retry", 1)
    consumer = app.transport.consumer("g", ["g.retry"])
    await consumer.start()
    await consumer.commit(consumer.at({("g.retry", 0): 0}))
    await consumer.close()
    with pytest.raises(ConfigError, match="group 'g' has no topics yet; name one with --topic"):
        await reset_offsets(app.transport, "g", "earliest")
    changes = await reset_offsets(app.transport, "g", "earliest", internal=True)
    assert [(c.topic, c.partition) for c in changes] == [("g.retry", 0)]


async def test_reset_is_refused_while_the_group_has_live_members(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a", "b", "c"])
    ends = {p.partition: p.end for p in (await topic_rows(app.transport))[0].partitions}
    live = await member(app.transport, "g", "t", ends)
    try:
        with pytest.raises(GroupBusy, match=r"1 live member.*--force"):
            await reset_offsets(app.transport, "g", "earliest")
        assert {r.committed for r in await group_rows(app.transport, "g")} == set(ends.values())
        changes = await reset_offsets(app.transport, "g", "earliest", force=True)
        assert {c.new for c in changes} == {0}
        assert {r.committed for r in await group_rows(app.transport, "g")} == {0}
    finally:
        await live.close()


async def test_a_dry_run_changes_nothing(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a", "b"])
    await (await member(app.transport, "g", "t")).close()  # committed at the start: 0
    changes = await reset_offsets(app.transport, "g", "latest", dry_run=True)
    assert sum(c.new for c in changes) == 2
    assert {r.committed for r in await group_rows(app.transport, "g")} == {0}


async def test_reset_of_an_unknown_group_or_topic_is_refused(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a"])
    await (await member(app.transport, "g", "t")).close()
    with pytest.raises(GroupNotFound, match="'h' does not exist"):
        await reset_offsets(app.transport, "h", "earliest")
    with pytest.raises(TopicNotFound, match="'nope' does not exist"):
        await reset_offsets(app.transport, "g", "earliest", topic="nope")


# -- deleting a topic ---------------------------------------------------------------


async def test_delete_topic_removes_it_and_the_offsets_of_stopped_groups(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a", "b"])
    await publish_spaced(app, "u", ["a"])
    ends = {p.partition: p.end for p in (await topic_rows(app.transport))[0].partitions}
    await (await member(app.transport, "g", "t", ends)).close()  # offsets, no live member
    assert await delete_topic(app.transport, "t") == []
    assert [i.name for i in await topic_rows(app.transport)] == ["u"]
    assert [r for r in await group_rows(app.transport) if r.topic == "t"] == []


async def test_delete_topic_is_refused_while_a_group_reads_it_unless_forced(app: Tidings) -> None:
    await publish_spaced(app, "t", ["a", "b"])
    await publish_spaced(app, "u", ["a"])
    live = await member(app.transport, "reader", "t")
    other = await member(app.transport, "elsewhere", "u")  # live, but on another topic
    try:
        with pytest.raises(GroupBusy) as refused:
            await delete_topic(app.transport, "t")
        message = str(refused.value)
        assert "live members: reader (1 live member(s)); stop their workers" in message
        assert "elsewhere" not in message
        assert "--force" in message
        assert {i.name: i.events for i in await topic_rows(app.transport)} == {"t": 2, "u": 1}
        assert await delete_topic(app.transport, "t", force=True) == ["reader"]
        # Its records went; the live reader may have made it again, empty.
        rows = {i.name: i.events for i in await topic_rows(app.transport)}
        assert rows.get("t", 0) == 0
        assert rows["u"] == 1
    finally:
        await live.close()
        await other.close()


async def test_a_groups_dead_letter_and_retry_topics_are_read_by_its_live_group(
    app: Tidings,
) -> None:
    await app.transport.create_topic("g.dlq", 1)
    await app.transport.create_topic("g.retry", 1)
    await app.transport.create_topic("h.dlq", 1)
    live = await member(app.transport, "g", "t")
    try:
        for topic in ("g.dlq", "g.retry"):
            assert [i.group for i in await live_readers(app.transport, topic)] == ["g"]
            with pytest.raises(GroupBusy, match="live members: g "):
                await delete_topic(app.transport, topic)
        assert await delete_topic(app.transport, "h.dlq") == []  # group h is not live
    finally:
        await live.close()


async def test_delete_of_a_missing_or_invalid_topic_is_refused(app: Tidings) -> None:
    with pytest.raises(TopicNotFound, match="'nope' does not exist"):
        await delete_topic(app.transport, "nope")
    with pytest.raises(ConfigError, match="not valid"):
        await delete_topic(app.transport, "no spaces")
