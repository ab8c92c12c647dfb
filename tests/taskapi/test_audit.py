"""The audit log's keyed chain on real files (decision 0032), and the audit service end
to end; the checkpoints are tests/taskapi/test_audit_anchor.py's."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from pydantic import BaseModel

from taskapi import audit_log
from taskapi.audit_chain import AuditKey, genesis, key_id, load_key
from taskapi.audit_log import AuditLog, Head
from taskapi.audit_verify import VerifyReport, WrongKey, verify, verify_log, verify_main
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
KEY = AuditKey(bytes(range(32)), "test")


def event(title: str, when: datetime = DAY, type: str = "task.created") -> Event:
    return Event(type=type, source="test", data={"task_id": title, "title": title}, time=when)


def read(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


async def filled(folder: Path, count: int = 4) -> tuple[Path, list[bytes]]:
    audit = AuditLog(folder, KEY)
    for i in range(count):
        assert await audit.append(event(f"t{i}", DAY + timedelta(seconds=i)))
    return folder / FILE, read(folder / FILE)


def ok(files: int, lines: int, unanchored: dict[str, int] | None = None) -> VerifyReport:
    """An intact report of files never checkpointed: every line not yet anchored."""
    return VerifyReport(ok=True, files=files, lines=lines, unanchored=unanchored or {})


async def test_lines_chain_with_their_macs_and_verify(tmp_path: Path) -> None:
    events = [event(f"t{i}") for i in range(3)]
    audit = AuditLog(tmp_path, KEY)
    heads = [await audit.append(e) for e in events]
    lines = read(tmp_path / FILE)
    prev = genesis("2026-11-30")
    assert prev == hashlib.sha256(b"taskapi-audit:2026-11-30").hexdigest()
    for n, (line, e, head) in enumerate(zip(lines, events, heads, strict=True), 1):
        doc = orjson.loads(line)
        body, mac = line[: line.index(b',"mac":')] + b"}", doc.pop("mac")
        assert body == orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)  # compact, sorted
        assert line.endswith(b',"mac":"' + mac.encode() + b'"}')  # the MAC last
        assert mac == hmac.new(KEY.secret, prev.encode() + b"\n" + body, "sha256").hexdigest()
        assert (doc["n"], doc["kid"]) == (n, key_id(KEY.secret))
        assert doc["event"] == orjson.loads(encode(e))
        assert datetime.fromisoformat(doc["audited_at"]).tzinfo is not None
        assert doc["audited_at"].endswith("Z")
        assert head == Head("2026-11-30", n, mac)
        prev = mac
    assert verify(tmp_path, KEY) == ok(1, 3, {FILE: 3})


async def test_events_of_two_utc_days_go_to_two_files(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, KEY)
    late = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    paris = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # 23:30 UTC
    for e in (event("a", late), event("b", late + timedelta(seconds=2)), event("c", paris)):
        await audit.append(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE, "audit-2026-12-01.jsonl"]
    assert [orjson.loads(x)["event"]["data"]["title"] for x in read(tmp_path / FILE)] == ["a", "c"]
    assert orjson.loads(read(tmp_path / "audit-2026-12-01.jsonl")[0])["n"] == 1
    assert verify(tmp_path, KEY) == ok(2, 3, {FILE: 2, "audit-2026-12-01.jsonl": 1})


def rewrite(path: Path, lines: list[bytes], tail: bytes = b"\n") -> None:
    path.write_bytes(b"\n".join(lines) + tail)


@pytest.mark.parametrize("changed", [0, 1, 3], ids=["first", "middle", "newest"])
async def test_a_changed_byte_in_any_line_is_reported_at_that_line(
    tmp_path: Path, changed: int
) -> None:
    path, lines = await filled(tmp_path)
    title = f'"title":"t{changed}"'.encode()
    assert title in lines[changed]
    lines[changed] = lines[changed].replace(title, title.upper())  # one byte: t -> T
    rewrite(path, lines)
    report = verify(tmp_path, KEY)
    assert (report.ok, report.file, report.line) == (False, FILE, changed + 1)
    if changed:
        assert report.problem == (
            f"line {changed + 1} was changed: its MAC does not match it and line {changed}"
        )
    else:
        assert report.problem is not None
        assert report.problem.startswith("line 1 was changed, or does not start the chain")


async def test_a_line_resealed_without_the_key_is_still_caught(tmp_path: Path) -> None:
    # An editor who recomputes a plain SHA-256 chain, as the unkeyed format had, gets
    # nowhere: the MAC needs the key.
    path, lines = await filled(tmp_path, 2)
    body = lines[1][: lines[1].index(b',"mac":')] + b"}"
    forged = body.replace(b'"title":"t1"', b'"title":"T1"')
    fake = hashlib.sha256(lines[0] + forged).hexdigest().encode()
    rewrite(path, [lines[0], forged[:-1] + b',"mac":"' + fake + b'"}'])
    report = verify(tmp_path, KEY)
    assert (report.ok, report.line) == (False, 2)


async def test_a_deleted_line_is_reported_missing(tmp_path: Path) -> None:
    path, lines = await filled(tmp_path, 5)
    rewrite(path, lines[:1] + lines[3:])  # lines 2 and 3 gone
    report = verify(tmp_path, KEY)
    assert (report.ok, report.line, report.lines) == (False, 2, 1)
    assert report.problem is not None
    assert report.problem.startswith("missing line(s) 2-3: line 4 follows line 1")


async def test_a_cut_last_line_is_reported(tmp_path: Path) -> None:
    path, _ = await filled(tmp_path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 30)
    report = verify(tmp_path, KEY)
    assert (report.ok, report.line) == (False, 4)
    assert report.problem is not None
    assert "cut short" in report.problem


async def test_reordered_lines_are_reported(tmp_path: Path) -> None:
    path, lines = await filled(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(path, lines)
    report = verify(tmp_path, KEY)
    assert (report.ok, report.line) == (False, 2)
    assert report.problem is not None
    assert "reordered" in report.problem


async def test_a_renamed_file_or_wrong_day_is_reported(tmp_path: Path) -> None:
    path, _ = await filled(tmp_path, 2)
    path.rename(tmp_path / "audit-2026-11-29.jsonl")
    report = verify(tmp_path, KEY)
    assert (report.file, report.line) == ("audit-2026-11-29.jsonl", 1)
    assert report.problem is not None
    assert "does not start the chain of its day" in report.problem


async def test_a_duplicate_event_is_appended_once(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, KEY)
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
    first = AuditLog(tmp_path, KEY)
    await asyncio.gather(*(first.append(e) for e in events))  # concurrent: still chained
    again = AuditLog(tmp_path, KEY)  # a restarted process
    assert not await again.append(events[4])  # in the last 3 lines
    assert await again.append(events[1])  # beyond the window: audited again (the inbox's job)
    assert await again.append(event("new"))
    assert [orjson.loads(x)["n"] for x in read(tmp_path / FILE)] == [1, 2, 3, 4, 5, 6, 7]
    assert verify(tmp_path, KEY).ok


async def test_two_writers_on_one_folder_keep_one_chain(tmp_path: Path) -> None:
    # Two AuditLogs stand for two processes of the group: flock and a size check.
    one, two = AuditLog(tmp_path, KEY), AuditLog(tmp_path, KEY)
    events = [event(f"t{i}") for i in range(6)]
    for i, e in enumerate(events):
        assert await (one if i % 2 else two).append(e)
    assert not await one.append(events[4])  # written by the other
    assert [orjson.loads(x)["n"] for x in read(tmp_path / FILE)] == [1, 2, 3, 4, 5, 6]
    assert verify(tmp_path, KEY).ok


async def test_idle_files_are_forgotten_and_reloaded(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, KEY)
    days = [event(f"d{i}", DAY + timedelta(days=i)) for i in range(6)]
    for e in days:
        assert await audit.append(e)
    assert len(audit._chains) == 4
    assert not await audit.append(days[0])  # its file's state reloaded from disk
    assert await audit.append(event("more", DAY))
    report = verify(tmp_path, KEY)
    assert (report.ok, report.files, report.lines) == (True, 6, 7)


async def test_a_partial_last_line_is_cut_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, lines = await filled(tmp_path, 3)
    with path.open("ab") as f:
        f.write(b'{"audited_at":"2026-')  # a crash in the middle of a write
    assert not verify(tmp_path, KEY).ok
    with caplog.at_level(logging.WARNING, logger="taskapi.audit_log"):
        assert await AuditLog(tmp_path, KEY).append(event("after"))
    assert "partial line of 20 bytes" in caplog.text
    now = read(path)
    assert now[:3] == lines
    assert orjson.loads(now[3])["n"] == 4
    assert verify(tmp_path, KEY) == ok(1, 4, {FILE: 4})


async def test_a_damaged_last_line_stops_appends(tmp_path: Path) -> None:
    path, lines = await filled(tmp_path, 2)
    rewrite(path, [*lines, b"not json"])
    with pytest.raises(audit_log.AuditLogError, match="last line is not an audit line"):
        await AuditLog(tmp_path, KEY).append(event("x"))


async def test_another_key_is_a_clear_error_for_the_verifier_and_the_writer(
    tmp_path: Path,
) -> None:
    await filled(tmp_path, 2)
    other = AuditKey(b"another key, 32 bytes long......", "$TASKAPI_AUDIT_KEY")
    with pytest.raises(WrongKey) as caught:
        verify(tmp_path, other)
    assert str(caught.value) == (
        f"the audit files were written with key id {KEY.id}; the key given "
        f"($TASKAPI_AUDIT_KEY) has key id {other.id}: it is not their key"
    )
    with pytest.raises(audit_log.AuditLogError, match="cannot continue the chain with another"):
        await AuditLog(tmp_path, other).append(event("x"))


def test_the_key_file_is_made_once_private_and_outside_the_audit_folder(tmp_path: Path) -> None:
    settings = Settings.from_env(tmp_path, env={})
    with pytest.raises(ConfigError, match="no audit key: set \\$TASKAPI_AUDIT_KEY"):
        load_key(settings)  # a verifier never makes one
    made = load_key(settings, create=True)
    assert made.source == str(tmp_path / "audit.key")
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
    assert len(made.secret) == 32
    assert load_key(settings, create=True) == made == load_key(settings)
    assert repr(made) == f"AuditKey(id={made.id}, source={made.source!r})"  # not the key
    from_env = load_key(Settings.from_env(tmp_path, env={"TASKAPI_AUDIT_KEY": "s" * 20}))
    assert (from_env.secret, from_env.source) == (b"s" * 20, "$TASKAPI_AUDIT_KEY")
    inside = {"TASKAPI_AUDIT_KEY_FILE": str(tmp_path / "audit" / "key")}
    with pytest.raises(ConfigError, match="inside the audit folder"):
        load_key(Settings.from_env(tmp_path, env=inside), create=True)


def test_verify_of_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no audit files in"):
        verify(tmp_path / "absent", KEY)
    with pytest.raises(ConfigError, match="no audit files in"):
        verify(tmp_path, KEY)


async def test_verify_main_exit_codes_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKAPI_AUDIT_KEY", raising=False)
    monkeypatch.delenv("TIDINGS_URL", raising=False)
    folder = tmp_path / "audit"
    keyed = ["--key-file", str(tmp_path / "audit.key"), "--no-log"]
    assert verify_main([str(folder), *keyed[:2]]) == 2
    assert capsys.readouterr().err.strip().startswith("taskapi audit verify: no audit key: set")
    (tmp_path / "audit.key").write_text(KEY.secret.hex() + "\n")
    assert verify_main([str(folder), *keyed]) == 2
    assert capsys.readouterr().err.strip().endswith(f"no audit files in {folder}")

    path, lines = await filled(folder, 3)
    await AuditLog(folder, KEY).append(event("next day", DAY + timedelta(days=1)))
    assert verify_main(["--data", str(tmp_path), "--no-log"]) == 0  # DIR, key from the data
    out, err = capsys.readouterr()
    assert out == (
        "ok: 2 files, 4 lines, chain intact; 0 checkpoints held; not yet anchored: 4 lines "
        f"({FILE} 3, audit-2026-12-01.jsonl 1)\n"
    )
    assert "checkpoints not read (--no-log)" in err
    assert verify_main([str(folder), *keyed, "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc == {
        "ok": True, "files": 2, "lines": 4, "problem": None, "file": None, "line": None,
        "checkpoints": 0, "unanchored": {FILE: 3, "audit-2026-12-01.jsonl": 1}, "unkeyed": {},
    }  # fmt: skip
    # Without --no-log the log must exist: no checkpoints read is not "intact".
    absent = [str(folder), *keyed[:2], "--url", f"sqlite:///{tmp_path}/none.db"]
    assert await asyncio.to_thread(verify_main, absent) == 2  # asyncio.run: off this loop
    assert "there is no event log at" in capsys.readouterr().err

    rewrite(path, [lines[0], lines[2]])
    assert verify_main([str(folder), *keyed]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"BROKEN: {FILE} line 2: missing line(s) 2: line 3 follows line 1")
    assert verify_main([str(folder), *keyed, "--json"]) == 1
    doc = orjson.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["file"], doc["line"], doc["lines"]) == (False, FILE, 2, 1)

    (tmp_path / "other.key").write_text("ab" * 32)  # not the files' key: exit 2, said so
    assert verify_main([str(folder), "--key-file", str(tmp_path / "other.key"), "--no-log"]) == 2
    assert "it is not their key" in capsys.readouterr().err


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
        future = Event(type="task.created", source="api-v4", data={"id": 7}, dataversion=4)
        await publisher.publish_events(TOPIC, [future])

        async def all_audited() -> bool:
            return len(audited(settings)) == len(sent) and await caught_up()

        await run_until(settings, all_audited)
        docs = audited(settings)
        assert sorted(d["event"]["id"] for d in docs) == sorted(e.id for e in sent)
        assert {d["event"]["id"]: d["event"] for d in docs}[sent[3].id] == orjson.loads(
            encode(sent[3])
        )
        assert verify(settings.audit_dir, load_key(settings)).ok
        assert appended(caplog) == len(sent)
        [(dead, state)] = (await open_log(publisher.transport, "audit")).listing()
        assert (dead.event_id, dead.reason, state) == (future.id, "poison", "dead")
        assert dead.error_type.endswith("UnsupportedVersion")
        assert "version 4 of task.created is newer than this service knows" in dead.error_message

        # Deployed with version 4, the audit service audits it on replay, as written.
        class TaskCreatedV4(BaseModel):
            id: int

        def with_v4(name: str, settings: Settings) -> Tidings:
            app = base_app(name, settings)
            app.event("task.created", version=4, owner=API, breaking=True)(TaskCreatedV4)
            return app

        monkeypatch.setattr(audit_service, "base_app", with_v4)
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
        report = await verify_log(settings.audit_dir, load_key(settings), settings.tidings_url)
        days = {d["event"]["time"][:10] for d in docs}
        assert (report.ok, report.files, report.lines) == (True, len(days), len(sent))
        # each run_until stopped the service: every day's last line was anchored then
        assert (report.unanchored, report.checkpoints > 0) == ({}, True)
