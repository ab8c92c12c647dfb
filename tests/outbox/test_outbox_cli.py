"""``tidings outbox relay|status``: real relay processes killed and stopped, a
standby taking over, and one-line errors for bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tidings import Tidings, cli
from tidings.outbox import Outbox

from .conftest import TaskCreated, log_events

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LEASE = 2.0


def tidings(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Relay processes started by a test; each is stopped by its PID at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def start_relay(
    processes: list[subprocess.Popen[bytes]], db: str, log_url: str, stderr: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    with stderr.open("wb") as err:
        command = [sys.executable, "-m", "tidings", "outbox", "relay", "--db", db]
        command += ["--url", log_url, "--lease", str(LEASE), "--poll-interval", "0.01"]
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    processes.append(proc)
    return proc


def add(engine: sa.Engine, outbox: Outbox, numbers: range) -> None:
    with Session(engine) as session, session.begin():
        for n in numbers:
            outbox.add(session, TaskCreated(task_id=f"t-{n % 3}", n=n))


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        await asyncio.sleep(0.05)


async def test_a_killed_relay_process_is_taken_over_after_its_lease(
    app: Tidings,
    outbox: Outbox,
    engine: sa.Engine,
    db_url: str,
    sqlite_url: str,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    add(engine, outbox, range(100))
    proc = start_relay(processes, db_url, app.url, tmp_path / "relay.err")
    async with app:

        async def relayed(n: int) -> bool:
            return len(await log_events(app)) >= n

        await wait_for(lambda: relayed(100), what="the relay process relaying 100 events")
        status = await outbox.status()
        assert status.holder is not None
        assert status.holder.split("-")[-2] == str(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        died = time.monotonic()
        add(engine, outbox, range(100, 150))
        standby = outbox.relay(lease=LEASE, poll_interval=0.01)
        assert await standby.relay_once() == 0
        assert not standby.holding  # the dead relay's lease still runs
        stop = asyncio.Event()
        task = asyncio.create_task(standby.run(stop))
        try:
            await wait_for(lambda: relayed(150), what="the standby relaying the rest")
            took = time.monotonic() - died
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        events = await log_events(app)
    assert LEASE * 0.5 <= took < LEASE + 5
    numbers = sorted(e.data["n"] for e in events)
    assert numbers == list(range(150))  # none lost (a kill mid-pass could duplicate)
    per_key: dict[str | None, list[int]] = {}
    for e in events:
        per_key.setdefault(e.key, []).append(e.data["n"])
    assert per_key == {f"t-{k}": list(range(k, 150, 3)) for k in range(3)}


async def test_sigterm_stops_a_relay_process_and_hands_over_at_once(
    app: Tidings,
    outbox: Outbox,
    engine: sa.Engine,
    db_url: str,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    proc = start_relay(processes, db_url, app.url, tmp_path / "relay.err")
    async with app:

        async def held() -> bool:
            return (await outbox.status()).holder is not None

        await wait_for(held, what="the relay process holding the lease")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = (tmp_path / "relay.err").read_text()
        assert "released the lease" in err
        assert "stopped: 0 event(s) relayed" in err
        assert (await outbox.status()).holder is None
        add(engine, outbox, range(3))
        standby = outbox.relay(lease=60)
        try:
            assert await standby.relay_once() == 3  # no wait for the 2 s lease
        finally:
            await standby.close()


def test_status_prints_the_backlog_and_the_holder(
    outbox: Outbox, engine: sa.Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = tidings("outbox", "status", "--db", db_url, capsys=capsys)
    assert code == 0
    assert "pending    0 (0 due, 0 scheduled)" in out
    assert "oldest due -" in out
    assert "relay      none (no relay holds the lease)" in out
    add(engine, outbox, range(2))
    with Session(engine) as session, session.begin():
        outbox.add(session, TaskCreated(task_id="t-1"), deliver_at=time_in(3600))
    with engine.begin() as conn:
        conn.execute(
            sa.update(outbox.lease_table).values(holder="host-1-abc", expires_at=time.time() + 8)
        )
    code, out, _ = tidings("outbox", "status", "--db", db_url, capsys=capsys)
    assert code == 0
    assert "pending    3 (2 due, 1 scheduled, next at 20" in out
    assert "s ago" in out
    assert "relay      host-1-abc (lease renewed, " in out
    assert ", renewal 0)" in out
    code, out, _ = tidings("outbox", "status", "--db", db_url, "--json", capsys=capsys)
    doc = json.loads(out)
    assert (doc["pending"], doc["due"], doc["scheduled"]) == (3, 2, 1)
    assert doc["holder"] == "host-1-abc"
    assert 0 < doc["lease_expires_in_s"] <= 8
    assert (doc["lease_renewals"], doc["lease_s"]) == (0, None)
    assert doc["oldest_age_s"] >= 0
    assert doc["table"] == "tidings_outbox"


def test_status_shows_an_overdue_holder_as_such(
    app: Tidings,
    outbox: Outbox,
    engine: sa.Engine,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A holder that stopped renewing a minute ago: still named (only a standby that
    watched the row for a lease length may take it), and shown overdue."""
    relay = outbox.relay(lease=10.0, holder="host-2-def")

    async def hold_and_die() -> None:
        async with app:
            assert await relay.relay_once() == 0
            await relay.close(release=False)

    asyncio.run(hold_and_die())
    with engine.begin() as conn:
        lease = outbox.lease_table
        conn.execute(sa.update(lease).values(expires_at=lease.c.expires_at - 70))
    code, out, _ = tidings("outbox", "status", "--db", db_url, capsys=capsys)
    assert code == 0
    assert "relay      host-2-def (lease overdue by 1.0 min by the wall clock, renewal 1: " in out
    code, out, _ = tidings("outbox", "status", "--db", db_url, "--json", capsys=capsys)
    doc = json.loads(out)
    assert (doc["holder"], doc["lease_renewals"], doc["lease_s"]) == ("host-2-def", 1, 10.0)
    assert -70 < doc["lease_expires_in_s"] <= -60  # a few seconds late on a busy machine


def time_in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def one_error_line(code: int, err: str, expected_code: int, says: str) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tidings: error: ")
    assert says in lines[0]


def test_status_errors_are_one_line(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = tidings("outbox", "status", "--db", db_url, capsys=capsys)
    one_error_line(code, err, 2, "no outbox table 'tidings_outbox'")
    code, _, err = tidings(
        "outbox", "status", "--db", f"sqlite:///{tmp_path}/no/such/app.db", capsys=capsys
    )
    one_error_line(code, err, 1, "unable to open database file")
    code, _, err = tidings("outbox", "status", "--db", "nosuch://x", capsys=capsys)
    one_error_line(code, err, 2, "cannot open the outbox database")
    code, _, err = tidings("outbox", "status", capsys=capsys)
    one_error_line(code, err, 2, "the following arguments are required: --db")


def test_relay_usage_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path}/app.db"
    code, _, err = tidings("outbox", "relay", "--db", db, "--batch", "0", capsys=capsys)
    one_error_line(code, err, 2, "--batch: expected a whole number >= 1, got '0'")
    code, _, err = tidings("outbox", "relay", "--db", db, "--lease", "0.01", capsys=capsys)
    one_error_line(code, err, 2, "lease must be at least 0.1 seconds")
    code, _, err = tidings("outbox", "relay", "--db", db, "--poll-interval", "x", capsys=capsys)
    one_error_line(code, err, 2, "--poll-interval: expected a number of seconds > 0")
    code, _, err = tidings(
        "outbox", "relay", "--db", db, "--url", f"sqlite:///{tmp_path}/no/log.db", capsys=capsys
    )
    one_error_line(code, err, 2, "of the SQLite log does not exist")
    code, _, err = tidings("outbox", capsys=capsys)
    one_error_line(code, err, 2, "required: ACTION")
