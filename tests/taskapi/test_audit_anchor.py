"""The audit files' heads anchored in the log (decision 0032): when the audit service
publishes checkpoints (every N lines, a day roll on an injected clock, at stop), and what
``verify`` finds against them: lines cut from the end, a truncated file, a missing day,
a rewritten file, lines not yet anchored; unkeyed files from before the key."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import date, timedelta
from pathlib import Path

import orjson
import pytest

from taskapi.audit_anchor import Checkpoint, Checkpoints, read_checkpoints
from taskapi.audit_chain import load_key
from taskapi.audit_log import AuditLog, Head
from taskapi.audit_verify import verify, verify_log
from taskapi.events import CHECKPOINTS, TOPIC, TaskCreated, register
from taskapi.settings import Settings
from tests.taskapi.helpers import audited, run_until
from tests.taskapi.test_audit import DAY, FILE, KEY, event, read, rewrite
from tidings import Tidings
from tidings.testing import eventually

DAY2 = "audit-2026-12-01.jsonl"


class Today:
    """An injected UTC date, moved by the test; ``looks`` counts the calls."""

    def __init__(self) -> None:
        self.day = date(2026, 11, 30)
        self.looks = 0

    def __call__(self) -> date:
        self.looks += 1
        return self.day


async def test_a_checkpoint_every_n_lines_of_a_day_and_at_a_day_roll() -> None:
    today = Today()
    async with register(Tidings("memory://", service="taskapi-audit")) as app:
        points = Checkpoints(app, KEY.id, every=3, today=today)
        published = []
        for n in range(1, 8):
            published += await points.appended(Head("2026-11-30", n, f"mac{n}"))
        assert [(h.day, h.lines) for h in published] == [("2026-11-30", 3), ("2026-11-30", 6)]
        assert await points.appended(Head("2026-12-01", 1, "other1")) == []
        assert points.pending() == [Head("2026-11-30", 7, "mac7"), Head("2026-12-01", 1, "other1")]
        today.day = date(2026, 12, 1)  # midnight: every file's last lines are anchored
        rolled = await points.appended(Head("2026-12-01", 2, "other2"))
        assert [(h.day, h.lines) for h in rolled] == [("2026-11-30", 7), ("2026-12-01", 2)]
        assert points.pending() == []
        found = await read_checkpoints(app.transport)
    assert [(c.day, c.lines, c.mac, c.kid) for c in found] == [
        ("2026-11-30", 3, "mac3", KEY.id),
        ("2026-11-30", 6, "mac6", KEY.id),
        ("2026-11-30", 7, "mac7", KEY.id),
        ("2026-12-01", 2, "other2", KEY.id),
    ]
    assert [c.offset for c in found] == [0, 1, 2, 3]


async def test_at_stop_the_last_heads_are_anchored_after_the_appends_under_way() -> None:
    async with register(Tidings("memory://", service="taskapi-audit")) as app:
        today = Today()
        points = Checkpoints(app, KEY.id, every=100, today=today, tick=0.01)
        stop = asyncio.Event()
        runner = asyncio.create_task(points.run(stop))
        await eventually(lambda: today.looks > 1, what="run() looking at the day")
        async with points.writing():
            await points.appended(Head("2026-11-30", 1, "mac1"))
            looks = today.looks
            stop.set()  # the worker stops while an append is under way
            # Its next look at the day is run()'s last (the stop is set): from there it
            # only waits for this append (had it anchored mac1, it would be done).
            await eventually(lambda: today.looks > looks, what="run() saw the stop")
            assert not runner.done()
            await points.appended(Head("2026-11-30", 2, "mac2"))
        await asyncio.wait_for(runner, 10)
        [anchored] = await read_checkpoints(app.transport)
    assert (anchored.lines, anchored.mac) == (2, "mac2")
    async with Tidings("memory://other", service="x") as empty:
        assert await read_checkpoints(empty.transport) == []  # no topic: no checkpoint


async def test_a_failed_checkpoint_is_published_with_the_next_one_and_none_twice() -> None:
    async with register(Tidings("memory://", service="taskapi-audit")) as app:
        points = Checkpoints(app, KEY.id, every=1, today=Today())
        real = app.publish

        async def down(*args: object, **options: object) -> object:
            raise OSError("the log is down")

        app.publish = down  # type: ignore[method-assign]
        with pytest.raises(OSError, match="the log is down"):
            await points.appended(Head("2026-11-30", 1, "mac1"))
        assert points.pending() == [Head("2026-11-30", 1, "mac1")]  # given back
        app.publish = real  # type: ignore[method-assign]
        # two handlers at once: one checkpoint of the newest head, not two
        await asyncio.gather(
            points.appended(Head("2026-11-30", 2, "mac2")),
            points.appended(Head("2026-11-30", 3, "mac3")),
        )
        found = await read_checkpoints(app.transport)
    assert sorted(c.lines for c in found) == sorted({c.lines for c in found})
    assert max(c.lines for c in found) == 3


async def test_an_idle_service_anchors_its_files_when_the_day_rolls_over() -> None:
    today = Today()
    async with register(Tidings("memory://", service="taskapi-audit")) as app:
        points = Checkpoints(app, KEY.id, every=100, today=today, tick=0.01)
        stop = asyncio.Event()
        runner = asyncio.create_task(points.run(stop))
        await points.appended(Head("2026-11-30", 1, "mac1"))
        assert points.pending() == [Head("2026-11-30", 1, "mac1")]
        today.day = date(2026, 12, 1)  # no event comes: the tick sees the new day
        await eventually(lambda: points.pending() == [], what="the day roll's checkpoint")
        stop.set()
        await asyncio.wait_for(runner, 10)
        [rolled] = await read_checkpoints(app.transport)
    assert (rolled.day, rolled.lines) == ("2026-11-30", 1)


async def test_at_start_the_lines_a_killed_service_left_unanchored_are_anchored(
    tmp_path: Path,
) -> None:
    audit = AuditLog(tmp_path, KEY)
    day1 = [await audit.append(event(f"a{i}", DAY + timedelta(seconds=i))) for i in range(3)]
    day2 = await audit.append(event("b", DAY + timedelta(days=1)))
    assert day1[-1] is not None
    assert day2 is not None
    with (tmp_path / FILE).open("ab") as f:
        f.write(b'{"audited_at":"2026-')  # and a partial line: no head of its own
    async with register(Tidings("memory://", service="taskapi-audit")) as app:
        before = Checkpoints(app, KEY.id, every=100)
        assert await before.publish([day1[-1]]) == [day1[-1]]  # day 1 was anchored
        # the service killed, then started again: it anchors what was left unanchored
        again = Checkpoints(app, KEY.id, every=100, folder=tmp_path)
        assert again.on_disk == [day1[-1], day2]
        assert await again.resume() == [day2]
        assert again.anchored == {"2026-11-30": 3, "2026-12-01": 1}
        found = await read_checkpoints(app.transport)
    assert [(c.day, c.lines) for c in found] == [("2026-11-30", 3), ("2026-12-01", 1)]
    (tmp_path / FILE).write_bytes((tmp_path / FILE).read_bytes().rsplit(b"\n", 1)[0] + b"\n")
    report = verify(tmp_path, KEY, found)
    assert (report.ok, report.checkpoints, report.unanchored) == (True, 2, {})


def anchor(head: Head | None, offset: int = 0) -> Checkpoint:
    assert head is not None
    return Checkpoint(head.day, head.lines, head.mac, KEY.id, offset)


async def anchored(folder: Path, count: int = 4) -> tuple[Path, list[bytes], list[Checkpoint]]:
    """A day's file of ``count`` lines with a checkpoint after line 2 and at the end."""
    audit = AuditLog(folder, KEY)
    heads = [await audit.append(event(f"t{i}", DAY + timedelta(seconds=i))) for i in range(count)]
    path = folder / FILE
    return path, read(path), [anchor(heads[1], 0), anchor(heads[-1], 1)]


async def test_an_intact_anchored_file_and_its_lines_not_yet_anchored(tmp_path: Path) -> None:
    _path, _, points = await anchored(tmp_path)
    report = verify(tmp_path, KEY, points)
    assert (report.ok, report.lines, report.checkpoints, report.unanchored) == (True, 4, 2, {})
    await AuditLog(tmp_path, KEY).append(event("later", DAY + timedelta(minutes=5)))
    report = verify(tmp_path, KEY, points)
    assert (report.ok, report.unanchored) == (True, {FILE: 1})


async def test_a_removed_last_line_is_reported_against_the_checkpoint(tmp_path: Path) -> None:
    path, lines, points = await anchored(tmp_path)
    rewrite(path, lines[:-1])  # the chain of lines 1-3 is intact: only the anchor sees it
    assert verify(tmp_path, KEY).ok
    report = verify(tmp_path, KEY, points)
    assert (report.ok, report.file, report.line) == (False, FILE, 4)
    assert report.problem == (
        "the file has 3 line(s), the checkpoint at offset 1 says 4: lines were cut from its end"
    )


async def test_a_truncated_file_is_reported_at_its_cut_line(tmp_path: Path) -> None:
    path, lines, points = await anchored(tmp_path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 30)  # into the middle of line 4
    report = verify(tmp_path, KEY, points)
    assert (report.ok, report.file, report.line) == (False, FILE, 4)
    assert report.problem is not None
    assert "cut short" in report.problem
    rewrite(path, lines[:1])  # cut at a line's end, below both checkpoints
    report = verify(tmp_path, KEY, points)
    assert (report.ok, report.line) == (False, 2)
    assert report.problem is not None
    assert report.problem.startswith("the file has 1 line(s), the checkpoint at offset 0 says 2")


async def test_a_missing_day_is_reported_by_its_checkpoints(tmp_path: Path) -> None:
    await anchored(tmp_path)
    other = AuditLog(tmp_path, KEY)
    head = await other.append(event("next", DAY + timedelta(days=1)))
    points = [anchor(head, 7)]
    (tmp_path / DAY2).unlink()
    report = verify(tmp_path, KEY, points)
    assert (report.ok, report.file, report.line, report.files) == (False, DAY2, 1, 1)
    assert report.problem == "the file is missing: the checkpoint at offset 7 says it has 1 line(s)"
    (tmp_path / FILE).unlink()  # no file at all: the checkpoints still say what is missing
    report = verify(tmp_path, KEY, points)
    assert (report.ok, report.file) == (False, DAY2)


async def test_a_file_rewritten_with_the_key_differs_from_its_checkpoint(tmp_path: Path) -> None:
    # Whoever holds the key can write a new chain, but not the MACs the log anchored.
    path, _, points = await anchored(tmp_path, 2)
    path.unlink()
    audit = AuditLog(tmp_path, KEY)
    await audit.append(event("forged", DAY))
    await audit.append(event("forged too", DAY))
    report = verify(tmp_path, KEY, points)
    assert (report.ok, report.file, report.line) == (False, FILE, 2)
    assert report.problem == (
        "line 2 is not the line the checkpoint at offset 0 anchored (another MAC): the file "
        "was rewritten"
    )


def unkeyed_file(folder: Path, count: int) -> list[bytes]:
    """A file in the format before the key: ``prev``, the SHA-256 of the line before."""
    prev = hashlib.sha256(b"taskapi-audit:2026-11-30").hexdigest()
    lines = []
    for n in range(1, count + 1):
        e = orjson.loads(orjson.dumps({"id": f"e{n}", "time": "2026-11-30T09:00:00Z"}))
        doc = {"audited_at": "2026-11-30T09:00:01Z", "event": e, "n": n, "prev": prev}
        lines.append(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
        prev = hashlib.sha256(lines[-1]).hexdigest()
    folder.mkdir(exist_ok=True)
    rewrite(folder / FILE, lines)
    return lines


async def test_an_unkeyed_file_is_verified_by_its_hash_chain_and_sealed_by_a_keyed_line(
    tmp_path: Path,
) -> None:
    lines = unkeyed_file(tmp_path, 3)
    report = verify(tmp_path, KEY)
    assert (report.ok, report.unkeyed) == (True, {FILE: 3})
    head = await AuditLog(tmp_path, KEY).append(event("sealing", DAY))
    assert head is not None
    assert head.lines == 4
    report = verify(tmp_path, KEY, [anchor(head)])
    assert (report.ok, report.lines, report.unkeyed, report.unanchored) == (True, 4, {FILE: 3}, {})
    # the keyed line covers the unkeyed ones: a change to the last of them is caught now
    now = read(tmp_path / FILE)
    rewrite(tmp_path / FILE, [*now[:2], now[2].replace(b'"e3"', b'"E3"'), now[3]])
    report = verify(tmp_path, KEY)
    assert (report.ok, report.line) == (False, 4)
    # an unkeyed line after keyed ones was inserted
    rewrite(tmp_path / FILE, [*now, lines[0].replace(b'"n":1', b'"n":5')])
    report = verify(tmp_path, KEY)
    assert (report.ok, report.line) == (False, 5)
    assert report.problem == "line 5 is unkeyed after keyed lines: it was inserted"


async def test_the_service_checkpoints_every_n_lines_and_at_stop(tmp_path: Path) -> None:
    settings = Settings.from_env(tmp_path, env={"TASKAPI_AUDIT_CHECKPOINT": "2"})
    assert settings.audit_checkpoint_every == 2
    async with register(Tidings(settings.tidings_url, service="test")) as publisher:
        for i in range(5):
            task = TaskCreated(task_id=f"t{i}", title=f"task {i}", created_at=DAY)
            # one partition: handled one after the other, so the counts are exact
            await publisher.publish(TOPIC, task, time=DAY, key="one")

        async def all_audited() -> bool:
            return len(audited(settings)) == 5

        await run_until(settings, all_audited)
        found = await read_checkpoints(publisher.transport)
    # 2 and 4 while handling (an event's handler publishes its checkpoint), 5 at stop
    assert [(c.day, c.lines) for c in found] == [("2026-11-30", 2), ("2026-11-30", 4),
                                                 ("2026-11-30", 5)]  # fmt: skip
    report = await verify_log(settings.audit_dir, load_key(settings), settings.tidings_url)
    assert (report.ok, report.checkpoints, report.unanchored) == (True, 3, {})
    assert CHECKPOINTS == "audit-checkpoints"
    path, lines = settings.audit_dir / FILE, read(settings.audit_dir / FILE)
    rewrite(path, lines[:-1])  # the newest line, removed after the service stopped
    report = await verify_log(settings.audit_dir, load_key(settings), settings.tidings_url)
    assert (report.ok, report.file, report.line) == (False, FILE, 5)
