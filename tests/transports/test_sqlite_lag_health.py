"""Lag health on the SQLite log: a real worker's heartbeats fill the log's sample
table, and ``tidings groups`` (in this process and in another) judges it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from tidings import Tidings, Worker
from tidings.admin import LagStatus, LagWindows, group_rows, lag_health
from tidings.lag_health import WINDOW
from tidings.testing import SteppedClock, eventually
from tidings.transports.sqlite import SQLiteTransport

TOPIC = "tasks"


class TaskCreated(BaseModel):
    task_id: str
    seq: int


def groups_json(url: str, *args: str) -> list[dict[str, object]]:
    """``tidings groups --json`` in another process (its own, real, clock)."""
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "groups", "--json", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return (
        [json.loads(line) for line in result.stdout.splitlines()]
        if "--watch" in args
        else (json.loads(result.stdout))
    )


async def health_of(app: Tidings, clock: SteppedClock) -> tuple[LagStatus, str, int]:
    """The group's health as this process judges it by ``clock``, and how many samples
    its partition has."""
    rows = await group_rows(app.transport, "mailer")
    health = lag_health(rows, clock.time_ms())
    assert health is not None  # the SQLite log keeps samples
    line = health[("mailer", TOPIC)]
    (row,) = rows
    return line.status, line.reason, len(row.samples or ())


async def test_a_handler_that_stops_handling_shows_stall_then_stop_once_its_worker_is_gone(
    tmp_path: Path,
) -> None:
    # A 2 s lease: a heartbeat, and so a sample, every 0.67 s (long enough that a
    # loaded machine does not lose the lease: a rebalance waiting for the stuck handler
    # would only renew, not sample).
    url = f"sqlite:///{tmp_path / 'events.db'}?partitions=1&lease=2"
    app = Tidings(url, service="test")
    app.event("task.created", subject="task_id")(TaskCreated)
    clock = SteppedClock()
    app.transport.clock = clock
    stuck = asyncio.Event()
    release = asyncio.Event()

    @app.subscriber(TOPIC, group="mailer")
    async def handle(payload: TaskCreated) -> None:
        if payload.seq == 1:  # the second event never finishes until released
            stuck.set()
            await release.wait()

    async with app:
        await app.publish_many(TOPIC, [TaskCreated(task_id="k", seq=i) for i in range(5)])
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(app).run(stop))
        try:
            await eventually(stuck.is_set, what="the handler stuck on event 1")

            async def stalled() -> bool:
                status, _, count = await health_of(app, clock)
                return status is LagStatus.ERR and count == WINDOW

            await eventually(stalled, timeout=60, what="STALL after a window of samples")
            status, reason, _ = await health_of(app, clock)
            (row,) = await group_rows(app.transport, "mailer")
            assert row.committed is not None
            assert row.committed <= 1  # event 1 is never done
            assert reason == (
                f"{TOPIC}[0] STALL: offset {row.committed} has not moved for 10 samples "
                f"while lag is {row.lag}"
            )

            # Another process sees it too, by its own clock, from the log file.
            def seen_stalled() -> bool:
                [doc] = groups_json(url)
                return doc["health"] == "ERR" and "STALL" in str(doc["health_reason"])

            await eventually(
                lambda: asyncio.to_thread(seen_stalled), timeout=60, what="tidings groups: STALL"
            )
            # In threads: the worker's heartbeats go on while the commands run.
            [row] = await asyncio.to_thread(groups_json, url, "--partitions")
            assert (row["health"], row["health_complete"]) == ("STALL", 1.0)
            shown = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tidings", "groups", "--url", url],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            table = shown.stdout.splitlines()
            assert table[0].split()[-2:] == ["STATUS", "HEALTH"]
            assert table[1].split()[-2:] == ["lagging", "ERR"]
        finally:
            stop.set()
            release.set()
            await asyncio.wait_for(task, 30)

        # No member samples the partition now, and events keep coming. Once no sample
        # has come for longer than the window spans, it has stopped (time stepped).
        await app.publish_many(TOPIC, [TaskCreated(task_id="k", seq=i) for i in range(5, 8)])
        rows = await group_rows(app.transport, "mailer")
        (row,) = rows
        assert row.samples is not None
        assert row.lag == 3
        span = row.samples[-1].ts_ms - row.samples[0].ts_ms
        clock.step_wall(span / 1000 + 1)
        status, reason, _ = await health_of(app, clock)
        assert status is LagStatus.ERR
        assert reason.startswith(f"{TOPIC}[0] STOP: no sample for ")
        assert reason.endswith("while lag is 3")


async def test_the_log_keeps_only_the_last_window_of_samples(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}?partitions=2&lease=1"
    t = SQLiteTransport(url)
    await t.start()
    try:
        await t.create_topic(TOPIC, 2)
        await t.append(TOPIC, [(f"k{i}", b"v") for i in range(6)])
        consumer = t.consumer("mailer", [TOPIC])
        await consumer.start()
        try:

            async def full() -> bool:
                rows = await group_rows(t, "mailer")
                return all(len(r.samples or ()) == WINDOW for r in rows)

            await eventually(full, timeout=60, what="a full window of samples")
            # Heartbeats go on; the table does not grow past a window per partition.
            before = (await group_rows(t, "mailer"))[0].samples or ()

            async def moved() -> bool:
                rows = await group_rows(t, "mailer")
                return (rows[0].samples or ())[-1] != before[-1]

            await eventually(moved, timeout=60, what="another sample")
        finally:
            await consumer.close()
        with sqlite3.connect(tmp_path / "events.db") as conn:
            counts = conn.execute(
                "SELECT partition, count(*) FROM lag_samples GROUP BY partition"
            ).fetchall()
        assert counts == [(0, WINDOW), (1, WINDOW)]
    finally:
        await t.close()


async def test_a_log_made_before_lag_samples_gets_the_table(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    url = f"sqlite:///{path}?partitions=1"
    async with Tidings(url, service="test") as app:
        await app.publish(TOPIC, {"n": 1}, type="task.created", subject="a")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE lag_samples")  # as an older tidings left it
    async with Tidings(url, service="test") as app:
        consumer = app.transport.consumer("mailer", [TOPIC])
        await consumer.start()
        await consumer.close()
        [row] = await group_rows(app.transport, "mailer")
        assert row.samples is not None
        assert len(row.samples) == 1


async def test_deleting_a_topic_deletes_its_samples(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with Tidings(f"sqlite:///{path}?partitions=1", service="test") as app:
        await app.publish(TOPIC, {"n": 1}, type="task.created", subject="a")
        consumer = app.transport.consumer("mailer", [TOPIC])
        await consumer.start()
        await consumer.close()
        await app.transport.delete_topic(TOPIC)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM lag_samples").fetchone() == (0,)


async def test_watch_redraws_and_judges_from_the_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}?partitions=1"
    async with Tidings(url, service="test") as app:
        await app.publish(TOPIC, {"n": 1}, type="task.created", subject="a")
        consumer = app.transport.consumer("mailer", [TOPIC])
        await consumer.start()
        await consumer.close()
    docs = await asyncio.to_thread(groups_json, url, "--watch", "0.05", "--count", "3")
    assert len(docs) == 3  # one JSON list per redraw, each on one line
    assert all(doc[0]["health"] == "OK" for doc in docs)
    assert all(doc[0]["health_complete"] == 0.1 for doc in docs)  # the log's one sample


async def test_a_log_that_keeps_no_samples_is_judged_only_while_watching() -> None:
    app = Tidings("memory://?partitions=1", service="test")
    async with app:
        await app.publish(TOPIC, {"n": 1}, type="task.created", subject="a")
        consumer = app.transport.consumer("mailer", [TOPIC])
        await consumer.start()
        await consumer.commit(consumer.at({(TOPIC, 0): 0}))  # started, one event behind
        rows = await group_rows(app.transport, "mailer")
        assert rows[0].samples is None
        assert lag_health(rows, 0) is None  # one look: "-"
        windows = LagWindows()
        seen = []
        for i in range(WINDOW):
            health = lag_health(await group_rows(app.transport, "mailer"), 1_000 * i, windows)
            assert health is not None
            seen.append(health[("mailer", TOPIC)].status)
        await consumer.close()
    # Nothing moves while the watch polls: too few samples first, then STALL.
    assert seen == [LagStatus.OK] * (WINDOW - 1) + [LagStatus.ERR]


def test_count_without_watch_is_a_usage_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "groups", "--count", "2", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--count N counts redraws of --watch" in result.stderr
