"""The crash matrix: real processes SIGKILLed at each dangerous point, then the
invariants checked on the real files.

Each scenario runs children of ``tests/crash/child.py`` on one SQLite log and one
service database in ``tmp_path``; a child kills itself (SIGKILL) at the exact point
the scenario is about, the parent checks that it died there (exit -9, and evidence
in the files that the point was reached), starts a successor, waits for it to catch
up and stops it with SIGTERM. Then, for every scenario:

- **lost = 0**: every accepted event (a committed outbox row, or a publish that
  returned) has an effect, or, where a handler fails on purpose, exactly one
  unresolved dead letter;
- **duplicate effects = 0**: the ``effects`` table has each event id at most once
  (its rows have no unique key, so a second effect would show);
- **per-key order**: each key's effects, in commit order, have rising sequence numbers.

The counts (published, log records, delivered, handler re-runs, redeliveries the
inbox removed, duplicate effects, lost) are printed (``pytest -s``) and are in every
assertion message; ``docs/reliability.md`` has the table.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from tests.crashkit import Children
from tidings import Tidings
from tidings.codec import decode
from tidings.dead_letters import DeadLetter, Filter, State, dlq_topic, replay, retry_topic
from tidings.errors import TopicNotFound
from tidings.outbox import Outbox

from . import child

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEADLINE = 40.0  # seconds for any one wait
KEYS = 20


@dataclass(frozen=True, slots=True)
class Attempt:
    """One handler call, from ``attempts.txt``."""

    id: str
    key: str
    seq: int
    pid: int
    fails: bool


@dataclass
class Counts:
    scenario: str
    published: int = 0  # distinct events accepted
    log_records: int = 0  # records of them in the log (a relay re-publishes)
    delivered: int = 0  # distinct events with an effect
    dead_lettered: int = 0  # distinct events with an unresolved dead letter
    reruns: int = 0  # handler calls beyond one per effect (a call cut off by the kill)
    max_runs: int = 0  # the most calls of the handler that one event had (not failing)
    inbox_removed: int = 0  # redeliveries the inbox passed without calling the handler
    replay_skipped: int = 0  # replayed copies of an already resolved dead letter
    duplicate_effects: int = 0
    lost: int = 0
    out_of_order: int = 0  # keys whose effects are not in sequence order
    notes: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"[{self.scenario}] published={self.published} log_records={self.log_records} "
            f"delivered={self.delivered} dead_lettered={self.dead_lettered} "
            f"reruns={self.reruns} max_runs={self.max_runs} inbox_removed={self.inbox_removed} "
            f"replay_skipped={self.replay_skipped} duplicate_effects={self.duplicate_effects} "
            f"lost={self.lost} out_of_order={self.out_of_order}{extra}"
        )


class Crash(Children):
    """The files of one scenario, the children working on them, and what they say."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, deadline=DEADLINE)
        self.app = Tidings(child.log_url(folder), service="crash-test")
        self.app.topic(child.TOPIC, partitions=child.PARTITIONS)
        self.engine = sa.create_engine(child.db_url(folder))

    def start(self, mode: str, *options: str) -> subprocess.Popen[bytes]:
        """A child of ``tests/crash/child.py`` in ``mode`` on this scenario's files."""
        return self.spawn("tests.crash.child", mode, *options, str(self.dir), name=mode)

    # -- what the files say ---------------------------------------------------------

    async def publish(
        self, count: int, fail: Callable[[str, int], bool] | None = None
    ) -> list[str]:
        events = []
        for i in range(count):
            key, seq = child.item(i, KEYS)
            data = child.payload(key, seq, bool(fail and fail(key, seq)))
            events.append(self.app.build(data, type=child.TYPE, subject=key))
        await self.app.publish_events(child.TOPIC, events)
        return [e.id for e in events]

    def effects(self) -> list[tuple[int, str, str, int, int]]:
        """(n, event_id, key, seq, pid) in commit order."""
        t = child.effects
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.n, t.c.event_id, t.c.key, t.c.seq, t.c.pid))
            return sorted((r[0], r[1], r[2], r[3], r[4]) for r in rows)

    def attempts(self) -> list[Attempt]:
        path = self.dir / child.ATTEMPTS
        text = path.read_text() if path.exists() else ""
        out = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            event_id, key, seq, pid, outcome = line.split()
            out.append(Attempt(event_id, key, int(seq), int(pid), outcome == "F"))
        return out

    def orders(self) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(child.orders.c.event_id).order_by(child.orders.c.id))
            return [r[0] for r in rows]

    def marks(self) -> int:
        """The inbox marks committed (of every handler)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM tidings_inbox")).scalar_one())

    def marked(self) -> set[str]:
        """The event ids of the group's inbox marks committed."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT event_id FROM tidings_inbox WHERE consumer LIKE :group"),
                {"group": f"{child.GROUP}:%"},
            )
            return {r[0] for r in rows}

    def outbox_pending(self) -> int:
        outbox = Outbox(self.app, self.engine, topic=child.TOPIC)
        with self.engine.connect() as conn:
            count = sa.select(sa.func.count()).select_from(outbox.table)
            return int(conn.execute(count).scalar_one())

    async def records(self, topic: str) -> list[bytes]:
        out: list[bytes] = []
        for info in await self.app.transport.topics():
            if info.name == topic:
                for p in info.partitions:
                    out += [
                        r.value for r in await self.app.transport.read(topic, p.partition, 0, 10**6)
                    ]
        return out

    async def log_ids(self) -> list[str]:
        return [decode(value).id for value in await self.records(child.TOPIC)]

    async def lag(self) -> int:
        for info in await self.app.transport.groups():
            if info.group == child.GROUP:
                return info.lag
        return -1

    async def committed(self, topic: str = child.TOPIC) -> int:
        return sum((await self.committed_by_partition(topic)).values())

    async def committed_by_partition(self, topic: str = child.TOPIC) -> dict[int, int]:
        for info in await self.app.transport.groups():
            if info.group == child.GROUP:
                return {p.partition: p.committed or 0 for p in info.partitions if p.topic == topic}
        return {}

    async def dead_letters(self) -> list[tuple[DeadLetter, State]]:
        """Every entry of group fx with its state (an empty list if it has none)."""
        from tidings.dead_letters import open_log

        try:
            log = await open_log(self.app.transport, child.GROUP)
        except TopicNotFound:
            return []
        return log.listing(include_resolved=True)

    async def unresolved(self) -> set[str]:
        """The events with an unresolved dead letter."""
        return {
            e.event_id
            for e, s in await self.dead_letters()
            if s in ("dead", "replayed") and e.event_id is not None
        }

    async def replayed_marks(self) -> int:
        """Entries named by ``replayed`` marks in the dead-letter topic."""
        named = 0
        for value in await self.records(dlq_topic(child.GROUP)):
            doc = orjson.loads(value)
            if doc.get("kind") == "mark" and doc.get("state") == "replayed":
                named += len(doc["entries"])
        return named

    def stats(self, proc: subprocess.Popen[bytes] | None = None) -> Counter[str]:
        """The Stats of ``proc``, or of every child that stopped gracefully, summed."""
        total: Counter[str] = Counter()
        pattern = f"stats-{proc.pid}.json" if proc is not None else "stats-*.json"
        for path in self.dir.glob(pattern):
            total.update(json.loads(path.read_text()))
        return total

    async def caught_up(self, published: list[str]) -> bool:
        """Lag 0, and every event has an effect or an unresolved dead letter."""
        if await self.lag() != 0:
            return False
        done = {row[1] for row in self.effects()}
        if len(done) < len(set(published)):
            done |= await self.unresolved()
        return done >= set(published)

    # -- the invariants ---------------------------------------------------------------

    async def tally(self, scenario: str, published: list[str]) -> Counts:
        effects = self.effects()
        per_id = Counter(row[1] for row in effects)
        dead = await self.unresolved()
        runs = Counter(a.id for a in self.attempts() if not a.fails)
        counts = Counts(scenario)
        counts.published = len(set(published))
        counts.log_records = len(await self.records(child.TOPIC))
        counts.delivered = len(per_id)
        counts.dead_lettered = len(dead)
        counts.reruns = sum(n - 1 for n in runs.values() if n > 1)
        counts.max_runs = max(runs.values(), default=0)
        stats = self.stats()
        counts.inbox_removed = stats["duplicates"]
        counts.replay_skipped = stats["skipped"]
        counts.duplicate_effects = sum(n - 1 for n in per_id.values())
        counts.lost = len(set(published) - set(per_id) - dead)
        seqs: dict[str, list[int]] = defaultdict(list)
        for _, _, key, seq, _ in effects:
            seqs[key].append(seq)
        counts.out_of_order = sum(1 for s in seqs.values() if s != sorted(set(s)))
        return counts

    def check(self, counts: Counts, published: list[str]) -> None:
        """The invariants every scenario keeps (and the counts, printed)."""
        print(f"\n{counts}")
        assert counts.lost == 0, counts
        assert counts.duplicate_effects == 0, counts
        assert counts.out_of_order == 0, counts
        # One crash per scenario: a handler's work outside the database (the line in
        # attempts.txt) is repeated at most once.
        assert counts.max_runs <= 2, counts
        assert counts.delivered + counts.dead_lettered == counts.published, counts
        assert {row[1] for row in self.effects()} <= set(published), counts


@pytest.fixture
async def crash(tmp_path: Path) -> AsyncIterator[Crash]:
    await child.setup_db(tmp_path)
    c = Crash(tmp_path)
    try:
        async with c.app:
            yield c
    finally:
        c.shutdown()
        c.engine.dispose()


# -- the producer side: outbox and relay ---------------------------------------------


async def test_producer_killed_after_its_commits_before_any_relay(crash: Crash) -> None:
    """Kill point: the producer, right after committing its last business row and
    outbox row, before any relay ran. Invariant: every committed row is published
    and has exactly one effect, in order per key."""
    producer = crash.start("produce", "--count", "400", "--keys", str(KEYS))
    await crash.killed(producer)
    published = crash.orders()
    assert len(published) == 400
    assert crash.outbox_pending() == 400
    assert await crash.records(child.TOPIC) == []  # nothing relayed yet

    worker = crash.start("worker", "--relay")
    await crash.until("the relay and the worker", lambda: crash.caught_up(published), [worker])
    await crash.stop(worker)
    counts = await crash.tally("producer", published)
    crash.check(counts, published)
    assert counts.delivered == counts.published == counts.log_records == 400, counts
    assert crash.outbox_pending() == 0


async def test_relay_killed_after_publishing_before_deleting(crash: Crash) -> None:
    """Kill point: the relay, right after the log acknowledged its second batch and
    before it deleted those rows. Invariant: the batch is published again (at least
    once, same event ids) and the inbox keeps it to one effect each."""
    outbox = Outbox(crash.app, crash.engine, topic=child.TOPIC)
    published = child.produce_rows(crash.engine, outbox, 600, KEYS, one_transaction=True)
    relay = crash.start("relay", "--kill-after-append", "2", "--batch", "100")
    await crash.killed(relay)
    assert len(await crash.records(child.TOPIC)) == 200, crash.report()
    assert crash.outbox_pending() == 500  # the second batch is in the log and still here

    worker = crash.start("worker", "--relay")  # its relay takes over once the lease ran out
    await crash.until("the relay and the worker", lambda: crash.caught_up(published), [worker])
    await crash.stop(worker)
    counts = await crash.tally("relay", published)
    crash.check(counts, published)
    assert counts.delivered == counts.published == 600, counts
    assert counts.log_records == 700, counts  # the second batch twice
    assert Counter(await crash.log_ids()).most_common(1)[0][1] == 2
    # Its second copies were passed by the inbox (more only if the worker lost a lease
    # and got events again, which is not a failure).
    assert counts.inbox_removed >= 100, counts
    assert counts.reruns == 0, counts
    assert crash.outbox_pending() == 0


# -- the consumer side ---------------------------------------------------------------


async def test_consumer_killed_after_effects_before_the_offset_commit(crash: Crash) -> None:
    """Kill point: the worker at an offset commit, after the effects of the events it
    commits were committed with their inbox marks. Invariant: a successor gets those
    events again and the inbox passes them: no second effect."""
    published = await crash.publish(1000)
    victim = crash.start("worker", "--kill-at-commit-after", "300")
    await crash.killed(victim)
    effected = len(crash.effects())
    committed = await crash.committed()
    assert effected > committed, (effected, committed)  # the window was open

    successor = crash.start("worker")
    took = await crash.until("the successor", lambda: crash.caught_up(published), [successor])
    await crash.stop(successor)
    counts = await crash.tally("consumer after effect, before commit", published)
    counts.notes.update(effected_at_kill=effected, committed_at_kill=committed)
    crash.check(counts, published)
    assert counts.delivered == 1000, counts
    # The effected but uncommitted events came back, and the inbox passed them.
    assert counts.inbox_removed >= effected - committed, counts
    print(f"successor caught up {took:.2f}s after it started")


async def test_consumer_killed_after_a_batch_commit_before_its_offsets(crash: Crash) -> None:
    """Kill point: right after the inbox's third batch commit (a lane's run of events,
    effects and marks in one transaction), before the worker committed their offsets.
    Invariant: a successor gets those events again and the inbox passes them all."""
    published = await crash.publish(1000)
    victim = crash.start("worker", "--kill-after-batch-commit", "3")
    await crash.killed(victim)
    effected = len(crash.effects())
    committed = await crash.committed()
    marks = crash.marks()
    assert effected > committed, (effected, committed)  # the window was open
    assert marks == effected  # each effect committed with its mark, nothing else

    successor = crash.start("worker")
    await crash.until("the successor", lambda: crash.caught_up(published), [successor])
    await crash.stop(successor)
    counts = await crash.tally("consumer after a batch commit, before its offsets", published)
    counts.notes.update(effected_at_kill=effected, committed_at_kill=committed)
    crash.check(counts, published)
    assert counts.delivered == 1000, counts
    assert counts.inbox_removed >= effected - committed, counts
    assert counts.reruns == 0, counts  # no handler call was cut off


async def test_consumer_killed_in_the_middle_of_a_batch(crash: Crash) -> None:
    """Kill point: inside the 137th handler call of a fetch of up to 500 events, its
    effect written but not committed, other partitions' handlers running. Invariant:
    the cut-off call is run again, the completed ones are not repeated."""
    published = await crash.publish(1000)
    victim = crash.start("worker", "--kill-in-handler", "137")
    await crash.killed(victim)
    mine = [a for a in crash.attempts() if a.pid == victim.pid]
    assert len(mine) >= 137
    effected_at_kill = len(crash.effects())
    committed = await crash.committed()
    assert effected_at_kill < len(mine), "the 137th call's effect must not be committed"
    # No effect without its mark, no mark without its effect (a batch's savepoints).
    assert {row[1] for row in crash.effects()} == crash.marked(), crash.report()
    found = re.search(r"fetched=(\d+) in fetches of \[(\d+)", crash.output(victim))
    assert found, crash.report()
    fetched, first_fetch = int(found[1]), int(found[2])
    # The first fetch alone held more than the victim began: it died inside a batch.
    assert first_fetch > len(mine), crash.report()

    successor = crash.start("worker")
    await crash.until("the successor", lambda: crash.caught_up(published), [successor])
    await crash.stop(successor)
    counts = await crash.tally("consumer mid-batch", published)
    counts.notes.update(
        first_fetch=first_fetch,
        fetched_at_kill=fetched,
        calls_by_victim=len(mine),
        effected_at_kill=effected_at_kill,
        committed_at_kill=committed,
    )
    crash.check(counts, published)
    assert counts.delivered == 1000, counts
    assert counts.reruns >= 1, counts  # at least the call that was cut off
    assert counts.inbox_removed >= effected_at_kill - committed, counts


# -- dead letters --------------------------------------------------------------------

BAD_KEYS = {"k0", "k1", "k2", "k3"}


def fails(key: str, seq: int) -> bool:
    """The events that fail until healed: the 6th event of four keys."""
    return key in BAD_KEYS and seq == 5


def expected_dead(published: list[str], sequenced: bool) -> set[str]:
    """The events that end in the dead letters: the failing ones, and in a sequenced
    group every later event of their keys (parked behind them)."""
    out = set()
    for i, event_id in enumerate(published):
        key, seq = child.item(i, KEYS)
        if fails(key, seq) or (sequenced and key in BAD_KEYS and seq > 5):
            out.add(event_id)
    return out


@pytest.mark.parametrize(
    ("when", "sequenced"),
    [("after", True), ("before", True), ("after", False)],
    ids=["after-append-sequenced", "before-append-sequenced", "after-append-unsequenced"],
)
async def test_consumer_killed_while_writing_a_dead_letter(
    crash: Crash, when: str, sequenced: bool
) -> None:
    """Kill point: right after (or right before) the third dead-letter append, before
    the offset of that event was committed. Invariant: each event that failed (or, in
    a sequenced group, was parked behind one) has exactly one unresolved dead letter,
    the others exactly one effect; nothing lost, nothing dead-lettered twice."""
    published = await crash.publish(800, fails)
    mode = ["--sequenced"] if sequenced else []
    victim = crash.start("worker", *mode, "--kill-dlq-write", "3", "--dlq-kill-when", when)
    await crash.killed(victim)
    written = [e for e, _ in await crash.dead_letters()]
    at_kill = len(written)
    # Dead letters of several partitions may be in flight together: "after" the third
    # one returned, at least three are there (a fourth may have shared its commit);
    # "before" the third was made, at most two (the second may not have landed).
    if when == "after":
        assert at_kill >= 3, crash.report()
        # Some written entry's event was not committed: the successor meets it again.
        committed = await crash.committed_by_partition()
        assert any(committed.get(e.partition, 0) <= e.offset for e in written), committed
    else:
        assert at_kill <= 2, crash.report()

    successor = crash.start("worker", *mode)
    await crash.until("the successor", lambda: crash.caught_up(published), [successor])
    await crash.stop(successor)
    scenario = f"dead-letter write ({when} append, {'sequenced' if sequenced else 'unsequenced'})"
    counts = await crash.tally(scenario, published)
    entries = await crash.dead_letters()
    counts.notes.update(entries_at_kill=at_kill, entries=len(entries))
    crash.check(counts, published)
    wanted = expected_dead(published, sequenced)
    per_event = Counter(e.event_id for e, _ in entries)
    assert set(per_event) == wanted, counts
    assert max(per_event.values()) == 1, f"an event dead-lettered twice: {counts}"
    assert counts.dead_lettered == len(wanted), counts
    assert counts.delivered == 800 - len(wanted), counts
    reasons = Counter(e.reason for e, _ in entries)
    assert reasons["failed"] == len(BAD_KEYS), reasons
    if when == "after":  # and it did, and did not write it again
        assert "already dead-lettered" in crash.output(successor), crash.report()


async def test_replay_killed_after_sending_before_marking(crash: Crash) -> None:
    """Kill points: ``dlq replay`` right after its second batch reached the retry topic
    and before that batch was marked replayed; then the worker handling the replays,
    after the effect of a replayed event and before its ``resolved`` mark (and its
    offset commit); then the replay is run again, and a successor finishes.
    Invariant: every dead letter is handled once (one effect each), all end resolved,
    and the sequenced group's keys keep their order through failure and replay."""
    published = await crash.publish(800, fails)
    first = crash.start("worker", "--sequenced")
    await crash.until("the dead letters", lambda: crash.caught_up(published), [first])
    await crash.stop(first)
    wanted = expected_dead(published, sequenced=True)
    before = await crash.tally("before the replay", published)
    crash.check(before, published)
    assert before.dead_lettered == len(wanted) == 140, before

    (crash.dir / child.HEALED).touch()
    replayer = crash.start("replay", "--kill-after-retry-append", "2", "--batch", "40")
    await crash.killed(replayer)
    sent_by_victim = len(await crash.records(retry_topic(child.GROUP)))
    marked = await crash.replayed_marks()
    assert (sent_by_victim, marked) == (80, 40), crash.report()

    # The worker handling those 80 replays dies before writing its 10th resolved mark.
    victim = crash.start(
        "worker", "--sequenced", "--kill-dlq-write", "10", "--dlq-kill-when", "before"
    )
    await crash.killed(victim)
    by_victim = sum(1 for row in crash.effects() if row[4] == victim.pid)
    resolved_at_kill = sum(1 for _, s in await crash.dead_letters() if s == "resolved")
    committed_at_kill = await crash.committed(retry_topic(child.GROUP))
    assert resolved_at_kill <= 9, crash.report()  # marks of other partitions may be in flight
    assert by_victim > resolved_at_kill, "the 10th replay's effect was not committed"

    again = await replay(crash.app.transport, child.GROUP, Filter())  # what is still "dead"
    successor = crash.start("worker", "--sequenced")

    async def all_resolved() -> bool:
        return (
            await crash.lag() == 0
            and len({row[1] for row in crash.effects()}) == len(published)
            and all(s == "resolved" for _, s in await crash.dead_letters())
        )

    await crash.until("the replays handled", all_resolved, [successor])
    await crash.stop(successor)
    counts = await crash.tally("dead-letter replay", published)
    retry_records = len(await crash.records(retry_topic(child.GROUP)))
    counts.notes.update(
        sent_by_killed_replay=sent_by_victim,
        marked_by_killed_replay=marked,
        effects_by_killed_worker=by_victim,
        resolved_at_kill=resolved_at_kill,
        sent_by_second_replay=again,
        retry_records=retry_records,
    )
    crash.check(counts, published)
    assert counts.delivered == 800, counts
    assert counts.dead_lettered == 0, counts
    assert 60 <= again <= 100, counts  # the unmarked batch (less what was resolved), the rest
    # Every retry record the successor read was handled for the first time, skipped as
    # already resolved, or passed by the inbox: no replay had a second effect.
    mine = sum(1 for row in crash.effects() if row[4] == successor.pid)
    stats = crash.stats(successor)
    assert mine == 140 - by_victim, counts
    assert mine + stats["skipped"] + stats["duplicates"] >= retry_records - committed_at_kill, (
        counts
    )
    assert stats["duplicates"] >= 1, counts  # at least the 10th replay, effected by the victim
