"""The README's first command runs `taskapi demo`: the whole system on the embedded log,
seeded through the API, every effect in and every group caught up."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devservers._process import stop
from taskapi.system import Part, System

pytestmark = pytest.mark.integration


def parts_left_in(folder: Path) -> list[int]:
    """The PIDs of the processes working in ``folder``: the demo's parts (each runs with
    the data folder as its working directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:  # gone meanwhile, or not ours to look at
                continue
            if cwd == folder or folder in cwd.parents:
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def demo(
    folder: Path, *options: str, stderr: int = subprocess.STDOUT
) -> Iterator[subprocess.Popen[str]]:
    """``taskapi demo`` on ``folder`` (free ports), in a session of its own as a
    terminal's foreground job. At the end, whatever happened: SIGTERM (the demo stops
    its parts as on Ctrl-C), SIGKILL if it is still there after 60 s, then SIGKILL by
    PID for any part left in ``folder`` (a demo killed before stopping them)."""
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    ports = ["--port", "0", "--smtp-port", "0", "--http-port", "0", "--dashboard-port", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "taskapi", "demo", "--data", str(folder), *ports, *options],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        stop(process, grace=60)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        for pid in parts_left_in(folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_demo_seeds_tasks_and_every_service_catches_up(tmp_path: Path) -> None:
    with demo(tmp_path, "--exit-when-done", "--timeout", "90", stderr=subprocess.PIPE) as process:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, out + err
        assert parts_left_in(tmp_path) == []  # every part stopped
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
    with demo(tmp_path) as process:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        for line in process.stdout:  # the demo prints as it goes; stop reading once it runs
            lines.append(line)
            if line.startswith("effects as they happen") or time.monotonic() > deadline:
                break
        assert any(line.startswith("effects as they happen") for line in lines), "".join(lines)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, "".join(lines) + rest
        assert "stopped cleanly" in rest
        assert parts_left_in(tmp_path) == []
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


def test_an_interrupted_stop_still_sends_every_part_its_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C while the demo waits for its services to stop: the sinks, not
    yet signalled, must not be left running."""
    system = System(tmp_path)
    for name in ("api", "sinks"):
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        system.parts[name] = Part(name, [sys.executable], tmp_path / f"{name}.log", sleeper)

    def interrupted(name: str, *, timeout: float = 20.0) -> int | None:
        raise KeyboardInterrupt  # while waiting for the first part

    monkeypatch.setattr(system, "stop", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            system.stop_all()
        for part in system.parts.values():
            assert part.process is not None
            assert part.process.wait(timeout=60) == -signal.SIGTERM, part.name
    finally:
        for part in system.parts.values():
            if part.process is not None and part.process.poll() is None:
                part.process.kill()
                part.process.wait(10)
