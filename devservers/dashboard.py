"""``tidings dashboard`` as a real process on a free 127.0.0.1 port, for the browser
tests, the screenshots and the benchmark; stopped by its PID."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from devservers._process import HOST, free_port, stop, wait_listening

START_WITHIN = 120.0  # seconds: imports on a loaded machine


class Running(NamedTuple):
    base: str  # http://127.0.0.1:PORT
    pid: int


@contextmanager
def run_dashboard(url: str, log: Path, *extra: str) -> Iterator[Running]:
    """``tidings dashboard --url URL --port P`` (and ``extra`` options) on a free port,
    its output in ``log``; yields its address and PID."""
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
        yield Running(f"http://{HOST}:{port}", proc.pid)
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
