"""The README's first command runs `taskapi demo`: the whole system on the embedded log,
seeded through the API, every effect in and every group caught up."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_seeds_tasks_and_every_service_catches_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    ports = ["--port", "0", "--smtp-port", "0", "--http-port", "0", "--dashboard-port", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "taskapi", "demo", "--data", str(tmp_path), *ports,
         "--exit-when-done", "--timeout", "90"],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "where to look:" in out
    assert "/docs" in out
    assert re.search(r"  dashboard      http://127\.0\.0\.1:\d+/ ", out), out
    for group in ("email", "slack", "push", "audit", "reminders", "task-board"):
        assert f"  {group:<10} lag 0" in out
    assert "stopped cleanly" in out
    assert "task board (GET /board, " in out  # the task-board projection, served by the API
    # Seeded: 4 created, 1 updated+assigned, 1 completed, 1 deleted = 8 events.
    assert out.count(" audit ") >= 8
    index = (tmp_path / "mail" / "index.jsonl").read_text().splitlines()
    mails = {(json.loads(line)["rcpt_tos"][0], json.loads(line)["subject"]) for line in index}
    assert {
        ("alice@example.com", "New task: Write the quarterly report"),
        ("bob@example.com", "New task: Review pull request #42"),
        ("carol@example.com", "Assigned to you: Order team lunch"),
        ("bob@example.com", "Completed: Review pull request #42"),
    } <= mails
    assert (tmp_path / "events.db").exists()
    # Then one of carol's task events before and after erasing her (decision 0036).
    before, _, after = out.partition("DELETE /people/carol: 204")
    shown_before = before.split("(tail --reveal):\n", 1)[1].splitlines()[0]
    assert '"assignee": "carol"' in shown_before
    assert '"title": "Order team lunch"' in shown_before
    shown_after = after.split("the same event now:\n", 1)[1].splitlines()[0]
    assert shown_after == shown_before.replace('"carol"', '"[erased]"')
    assert "chain intact" in after.split("taskapi audit verify", 1)[1]
    assert b"carol" not in (tmp_path / "events.db").read_bytes()  # ciphertext only


def test_the_taskapi_command_explains_its_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskapi"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "usage: taskapi COMMAND" in result.stderr
    assert "service NAME" in result.stderr


def test_an_unknown_service_is_refused_with_the_list(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskapi", "service", "fax", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "invalid choice: 'fax'" in result.stderr
    assert "email" in result.stderr


def test_ctrl_c_stops_every_part_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    ports = ["--port", "0", "--smtp-port", "0", "--http-port", "0", "--dashboard-port", "0"]
    demo = subprocess.Popen(
        [sys.executable, "-m", "taskapi", "demo", "--data", str(tmp_path), *ports],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        for line in demo.stdout:  # the demo prints as it goes; stop reading once it runs
            lines.append(line)
            if line.startswith("effects as they happen") or time.monotonic() > deadline:
                break
        assert any(line.startswith("effects as they happen") for line in lines), "".join(lines)
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, "".join(lines) + rest
    assert "stopped cleanly" in rest
    logs = tmp_path / "logs"
    assert sorted(p.stem for p in logs.glob("*.log")) == sorted(
        [
            "api",
            "sinks",
            "email",
            "slack",
            "push",
            "audit",
            "reminders",
            "task-board",
            "escalation",
            "dashboard",
        ]
    )
