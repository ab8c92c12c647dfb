"""The audit log's hash chain on real files, and the audit service end to end."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from pydantic import BaseModel

from taskapi import audit_log
from taskapi.audit_log import AuditLog, VerifyReport, genesis, verify, verify_main
from taskapi.events import API, TOPIC, TaskCreated, register
from taskapi.services import audit as audit_service
from taskapi.services import base_app
from taskapi.settings import Settings
from tests.taskapi.helpers import audited, run_until
from tidings import ConfigError, Event, Tidings, encode
from tidings.admin import group_rows, reset_offsets
from tidings.dead_letters import Filter, open_log, replay

DAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
FILE = "audit-2026-11-30.jsonl"


def event(title: str, when: datetime = DAY, type: str = "task.created") -> Event:
    return Event(type=type, source="test", data={"task_id": title, "title": title}, time=when)


def read(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


async def filled(folder: Path, count: int = 4) -> tuple[Path, list[bytes]]:
    audit = AuditLog(folder)
    for i in range(count):
        assert await audit.append(event(f"t{i}", DAY + timedelta(seconds=i)))
    return folder / FILE, read(folder / FILE)


async def test_lines_chain_and_verify(tmp_path: Path) -> None:
    events = [event(f"t{i}") for i in range(3)]
    audit = AuditLog(tmp_path)
    for e in events:
        assert await audit.append(e)
    lines = read(tmp_path / FILE)
    prev = genesis("2026-11-30")
    assert prev == hashlib.sha256(b"taskapi-audit:2026-11-30").hexdigest()
    for n, (line, e) in enumerate(zip(lines, events, strict=True), 1):
        doc = orjson.loads(line)
        assert line == orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)  # compact, sorted
        assert doc["n"] == n
        assert doc["prev"] == prev
        assert doc["event"] == orjson.loads(encode(e))
        assert datetime.fromisoformat(doc["audited_at"]).tzinfo is not None
        assert doc["audited_at"].endswith("Z")
        prev = hashlib.sha256(line).hexdigest()
    assert verify(tmp_path) == VerifyReport(ok=True, files=1, lines=3)


async def test_events_of_two_utc_days_go_to_two_files(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    late = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    paris = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # 23:30 UTC
    for e in (event("a", late), event("b", late + timedelta(seconds=2)), event("c", paris)):
        await audit.append(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE, "audit-2026-12-01.jsonl"]
    assert [orjson.loads(x)["event"]["data"]["title"] for x in read(tmp_path / FILE)] == ["a", "c"]
    assert orjson.loads(read(tmp_path / "audit-2026-12-01.jsonl")[0])["n"] == 1
    assert verify(tmp_path) == VerifyReport(ok=True, files=2, lines=3)


def rewrite(path: Path, lines: list[bytes], tail: bytes = b"\n") -> None:
    path.write_bytes(b"\n".join(lines) + tail)


async def test_a_changed_character_is_reported_at_the_next_line(tmp_path: Path) -> None:
    path, lines = await filled(tmp_path)
    assert b'"title":"t1"' in lines[1]
    lines[1] = lines[1].replace(b'"title":"t1"', b'"title":"T1"')
    rewrite(path, lines)
    report = verify(tmp_path)
    assert (report.ok, report.file, report.line) == (False, FILE, 3)
    assert report.problem == (
        "line 3 does not match the hash of line 2: line 2 was changed or a line was removed"
    )


async def test_a_deleted_line_is_reported_missing(tmp_path: Path) -> None:
    path, lines = await filled(tmp_path, 5)
    rewrite(path, lines[:1] + lines[3:])  # lines 2 and 3 gone
    report = verify(tmp_path)
    assert (report.ok, report.line, report.lines) == (False, 2, 1)
    assert report.problem is not None
    assert report.problem.startswith("missing line(s) 2-3: line 4 follows line 1")


async def test_a_cut_last_line_is_reported(tmp_path: Path) -> None:
    path, _ = await filled(tmp_path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 30)
    report = verify(tmp_path)
    assert (report.ok, report.line) == (False, 4)
    assert report.problem is not None
    assert "cut short" in report.problem


async def test_reordered_lines_are_reported(tmp_path: Path) -> None:
    path, lines = await filled(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(path, lines)
    report = verify(tmp_path)
    assert (report.ok, report.line) == (False, 2)
    assert report.problem is not None
    assert "reordered" in report.problem


async def test_a_renamed_file_or_wrong_day_is_reported(tmp_path: Path) -> None:
    path, _ = await filled(tmp_path, 2)
    path.rename(tmp_path / "audit-2026-11-29.jsonl")
    report = verify(tmp_path)
    assert (report.file, report.line) == ("audit-2026-11-29.jsonl", 1)
    assert report.problem is not None
    assert "does not start the chain" in report.problem


async def test_a_duplicate_event_is_appended_once(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    e = event("t")
    assert await audit.append(e)
    assert not await audit.append(e)
    assert len(read(tmp_path / FILE)) == 1


async def test_a_restart_continues_the_chain_and_dedupes_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks and window: the backward reading crosses chunk boundaries.
    monkeypatch.setattr(audit_log, "_CHUNK", 100)
    monkeypatch.setattr(audit_log, "RECENT", 3)
    events = [event(f"t{i}") for i in range(5)]
    first = AuditLog(tmp_path)
    await asyncio.gather(*(first.append(e) for e in events))  # concurrent: still chained
    again = AuditLog(tmp_path)  # a restarted process
    assert not await again.append(events[4])  # in the last 3 lines
    assert await again.append(events[1])  # beyond the window: audited again (the inbox's job)
    assert await again.append(event("new"))
    assert [orjson.loads(x)["n"] for x in read(tmp_path / FILE)] == [1, 2, 3, 4, 5, 6, 7]
    assert verify(tmp_path).ok


async def test_two_writers_on_one_folder_keep_one_chain(tmp_path: Path) -> None:
    # Two AuditLogs stand for two processes of the group: flock and a size check.
    one, two = AuditLog(tmp_path), AuditLog(tmp_path)
    events = [event(f"t{i}") for i in range(6)]
    for i, e in enumerate(events):
        assert await (one if i % 2 else two).append(e)
    assert not await one.append(events[4])  # written by the other
    assert [orjson.loads(x)["n"] for x in read(tmp_path / FILE)] == [1, 2, 3, 4, 5, 6]
    assert verify(tmp_path).ok


async def test_idle_files_are_forgotten_and_reloaded(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    days = [event(f"d{i}", DAY + timedelta(days=i)) for i in range(6)]
    for e in days:
        assert await audit.append(e)
    assert len(audit._chains) == 4
    assert not await audit.append(days[0])  # its file's state reloaded from disk
    assert await audit.append(event("more", DAY))
    assert verify(tmp_path) == VerifyReport(ok=True, files=6, lines=7)


async def test_a_partial_last_line_is_cut_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, lines = await filled(tmp_path, 3)
    with path.open("ab") as f:
        f.write(b'{"audited_at":"2026-')  # a crash in the middle of a write
    assert not verify(tmp_path).ok
    with caplog.at_level(logging.WARNING, logger="taskapi.audit_log"):
        assert await AuditLog(tmp_path).append(event("after"))
    assert "partial line of 20 bytes" in caplog.text
    now = read(path)
    assert now[:3] == lines
    assert orjson.loads(now[3])["n"] == 4
    assert verify(tmp_path) == VerifyReport(ok=True, files=1, lines=4)


async def test_a_damaged_last_line_stops_appends(tmp_path: Path) -> None:
    path, lines = await filled(tmp_path, 2)
    rewrite(path, [*lines, b"not json"])
    with pytest.raises(audit_log.AuditLogError, match="last line is not an audit line"):
        await AuditLog(tmp_path).append(event("x"))


def test_verify_of_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no audit files in"):
        verify(tmp_path / "absent")
    with pytest.raises(ConfigError, match="no audit files in"):
        verify(tmp_path)


async def test_verify_main_exit_codes_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "audit"
    assert verify_main([str(folder)]) == 2
    assert capsys.readouterr().err.strip() == f"taskapi audit verify: no audit files in {folder}"

    path, lines = await filled(folder, 3)
    await AuditLog(folder).append(event("next day", DAY + timedelta(days=1)))
    assert verify_main(["--data", str(tmp_path)]) == 0  # DIR from the settings
    assert capsys.readouterr().out == "ok: 2 files, 4 lines, chain intact\n"
    assert verify_main([str(folder), "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc == {"ok": True, "files": 2, "lines": 4, "problem": None, "file": None, "line": None}

    rewrite(path, [lines[0], lines[2]])
    assert verify_main([str(folder)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"BROKEN: {FILE} line 2: missing line(s) 2: line 3 follows line 1")
    assert verify_main([str(folder), "--json"]) == 1
    doc = orjson.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["file"], doc["line"], doc["lines"]) == (False, FILE, 2, 1)


# -- the service --------------------------------------------------------------------


def appended(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage().startswith("audited ") for r in caplog.records)


async def test_the_service_audits_every_event_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.from_env(tmp_path, env={})
    publisher = register(Tidings(settings.tidings_url, service="test"))

    async def caught_up() -> bool:
        rows = await group_rows(publisher.transport, "audit")
        return bool(rows) and all(r.lag == 0 for r in rows)

    caplog.set_level(logging.INFO, logger="taskapi.services.audit")
    async with publisher:
        now = datetime.now(UTC)
        sent = [
            await publisher.publish(
                TOPIC, TaskCreated(task_id=f"t{i}", title=f"task {i}", created_at=now)
            )
            for i in range(3)
        ]
        # A type it does not know: audited as it is.
        sent.append(await publisher.publish(TOPIC, {"task_id": "t0"}, type="task.archived"))
        # A known type at a version newer than this build knows: it cannot be read, so it
        # is a dead letter until the audit service is deployed with its model.
        future = Event(type="task.created", source="api-v3", data={"id": 7}, dataversion=3)
        await publisher.publish_events(TOPIC, [future])

        async def all_audited() -> bool:
            return len(audited(settings)) == len(sent) and await caught_up()

        await run_until(settings, all_audited)
        docs = audited(settings)
        assert sorted(d["event"]["id"] for d in docs) == sorted(e.id for e in sent)
        assert {d["event"]["id"]: d["event"] for d in docs}[sent[3].id] == orjson.loads(
            encode(sent[3])
        )
        assert verify(settings.audit_dir).ok
        assert appended(caplog) == len(sent)
        [(dead, state)] = (await open_log(publisher.transport, "audit")).listing()
        assert (dead.event_id, dead.reason, state) == (future.id, "poison", "dead")
        assert dead.error_type.endswith("UnsupportedVersion")
        assert "version 3 of task.created is newer than this service knows" in dead.error_message

        # Deployed with version 3, the audit service audits it on replay, as written.
        class TaskCreatedV3(BaseModel):
            id: int

        def with_v3(name: str, settings: Settings) -> Tidings:
            app = base_app(name, settings)
            app.event("task.created", version=3, owner=API, breaking=True)(TaskCreatedV3)
            return app

        monkeypatch.setattr(audit_service, "base_app", with_v3)
        assert await replay(publisher.transport, "audit", Filter()) == 1
        sent.append(future)
        await run_until(settings, all_audited)
        docs = audited(settings)
        assert {d["event"]["id"]: d["event"] for d in docs}[future.id] == orjson.loads(
            encode(future)
        )
        assert not (await open_log(publisher.transport, "audit")).listing()

        # A replay of the whole topic, and new events: each audited once, chain intact.
        changes = await reset_offsets(publisher.transport, "audit", "earliest", force=True)
        assert sum(c.old or 0 for c in changes) == len(sent)
        assert {c.new for c in changes} == {0}
        sent += [await publisher.publish(TOPIC, {"n": i}, type="task.poked") for i in range(2)]
        caplog.clear()
        await run_until(settings, all_audited)
        assert await caught_up()
        docs = audited(settings)
        assert sorted(d["event"]["id"] for d in docs) == sorted(e.id for e in sent)
        assert "not audited again" not in caplog.text  # the inbox skipped the replay
        assert appended(caplog) == 2
        assert verify(settings.audit_dir) == VerifyReport(
            ok=True, files=len({d["event"]["time"][:10] for d in docs}), lines=len(sent)
        )
