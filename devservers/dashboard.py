"""``tidings dashboard`` as a real process on a free 127.0.0.1 port, for the browser
tests, the screenshots and the benchmark; stopped by its PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from devservers._process import HOST, free_port, stop, wait_listening

START_WITHIN = 120.0  # seconds: imports on a loaded machine
COUNTED_WITHIN = 300.0  # seconds: the dead letters read at start, on a loaded machine
COUNTING = b"counting..."  # what a page shows until its group's dead letters are read


class Running(NamedTuple):
    base: str  # http://127.0.0.1:PORT
    pid: int


def wait_counted(base: str, path: str = "/", within: float = COUNTED_WITHIN) -> float:
    """Ask ``path`` until it no longer says "counting..." (the dead letters the dashboard
    reads in the background at start) and the live updates name nothing still being
    read (the catalog, the dead-letter lists); the seconds that took. TimeoutError
    after ``within`` seconds."""
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(base + path, timeout=within) as answer:
                body = answer.read()
        except urllib.error.HTTPError as refused:
            body = refused.read()
        if COUNTING not in body and _read_all(base, within):
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise TimeoutError(f"{base}{path} still says counting... after {within:.0f} s")
        time.sleep(0.2)


def _read_all(base: str, within: float) -> bool:
    """Whether one live frame of the dashboard at ``base`` names nothing being read."""
    with urllib.request.urlopen(base + "/live?frames=1", timeout=within) as answer:
        lines = answer.read().decode().splitlines()
    frame = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
    return not frame.get("reading")


@contextmanager
def run_dashboard(url: str, log: Path, *extra: str, counted: bool = False) -> Iterator[Running]:
    """``tidings dashboard --url URL --port P`` (and ``extra`` options) on a free port,
    its output in ``log``; yields its address and PID (with ``counted``: once its pages
    no longer say "counting...", see :func:`wait_counted`)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    argv = [sys.executable, "-m", "tidings", "dashboard", "--url", url, "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*argv, *extra], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
    try:
        wait_listening(proc, port, log, START_WITHIN, "tidings dashboard")
        base = f"http://{HOST}:{port}"
        if counted:
            wait_counted(base)
        yield Running(base, proc.pid)
    finally:
        stop(proc)


def page_paths(*, group: str, topic: str, entry: str, correlation: str) -> dict[str, str]:
    """The address of each of the dashboard's pages, by name, on these names."""
    return {
        "overview": "/",
        "group": f"/groups/{group}",
        "dead-letters": f"/groups/{group}/dead-letters",
        "dead-letter": f"/groups/{group}/dead-letters/{entry}",
        "events": f"/events/{topic}",
        "trace": f"/trace?id={correlation}",
        "catalog": "/catalog",
        "actions": "/actions",
    }
