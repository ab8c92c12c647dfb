"""The log the browser tests (and the screenshots) look at: the dashboard tests' seeded
log (tests/dashboard/conftest.py: ``mail`` dead-lettered :data:`NOTES` notes, ``audit``
handled them, then :data:`WAITING` more notes wait for both), made by a real worker.

``tidings run tests.dashboard.browser.seed_app:app --group audit --url URL`` (from the
repository's root) is the worker that drains ``audit``, as :func:`drain` starts it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.dashboard.conftest import Seeded, make_app
from tests.dashboard.conftest import seed as seed_log

ROOT = Path(__file__).resolve().parents[3]
NOTES = 4  # dead letters of group mail
WAITING = 3  # notes that groups mail and audit have not read
CORRELATION = Seeded("").correlation  # of the notes the worker handled

# For `tidings run`: its --url is $TIDINGS_URL when the module is imported.
app = make_app(os.environ.get("TIDINGS_URL", ""))


def seed(url: str) -> None:
    """Fill the log at ``url`` (a new SQLite log) as the module docstring says. In a
    thread of its own: Playwright's synchronous API runs an event loop in this one."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, seed_log(url)).result()


def drain(url: str, log: Path) -> subprocess.Popen[bytes]:
    """Start the worker that drains group ``audit`` (stop it by its PID)."""
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    argv = [sys.executable, "-m", "tidings", "run", f"{__name__}:app", "--group", "audit"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*argv, "--url", url], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
