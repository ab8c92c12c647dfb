"""What the crash tests share: child processes (``python -m tests....``) started with the
repository on their path, each writing its own log in the test's folder; waits with a
deadline that fail saying what each child wrote; and every child killed by its PID at
the end, whatever happened.

Used by tests/crash (the crash matrix), tests/sagas/test_saga_crash.py and
tests/test_worker_keyed_crash.py; what each one checks stays in its own file.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 60.0  # seconds for any one wait: far past what a loaded machine needs

Check = Callable[[], bool] | Callable[[], Awaitable[bool]]


class Children:
    """The child processes of one test, in ``folder``: ``child-N[-name].log`` each."""

    def __init__(self, folder: Path, deadline: float = DEADLINE) -> None:
        self.dir = folder
        self.deadline = deadline
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}  # pid -> its log

    def spawn(self, module: str, *args: str, name: str = "") -> subprocess.Popen[bytes]:
        """Start ``python -m module *args`` in the repository, with no ambient
        ``TIDINGS_URL``; its output goes to its log."""
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        env.pop("TIDINGS_URL", None)
        log = self.dir / f"child-{len(self.procs)}{'-' + name if name else ''}.log"
        with log.open("wb") as out:
            argv = [sys.executable, "-m", module, *args]
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def report(self) -> str:
        """Each child's exit code and the end of its log."""
        return "\n".join(
            f"--- {self.logs[p.pid].name} pid {p.pid} (exit {p.poll()}):\n{self.output(p)[-3000:]}"
            for p in self.procs
        )

    async def until(
        self,
        what: str,
        check: Check,
        alive: Iterable[subprocess.Popen[bytes]] = (),
        *,
        timeout: float | None = None,
        detail: Callable[[], str] | None = None,
    ) -> float:
        """Wait until ``check()`` (sync or async) is true; fail if a child of ``alive``
        exits first or after ``timeout`` (default: the deadline), with ``detail()`` and
        the report. Returns the seconds waited."""
        limit = self.deadline if timeout is None else timeout
        start = time.monotonic()
        running = list(alive)
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return time.monotonic() - start
            gone = [p.pid for p in running if p.poll() is not None]
            failed = f"child {gone[0]} exited while waiting for {what}" if gone else None
            if failed is None and time.monotonic() - start > limit:
                failed = f"{what}: not within {limit:.0f}s"
            if failed is not None:
                said = f"; {detail()}" if detail is not None else ""
                pytest.fail(f"{failed}{said}\n{self.report()}")
            await asyncio.sleep(0.05)

    async def exit_code(self, proc: subprocess.Popen[bytes], timeout: float | None = None) -> int:
        """Wait for ``proc`` to exit; fail if it still runs after ``timeout``."""
        await self.until(
            f"child {proc.pid} to exit", lambda: proc.poll() is not None, timeout=timeout
        )
        assert proc.returncode is not None
        return proc.returncode

    async def killed(self, proc: subprocess.Popen[bytes]) -> str:
        """Wait for ``proc`` to SIGKILL itself at its kill point; the line it said so in."""
        code = await self.exit_code(proc)
        assert code == -signal.SIGKILL, f"exit {code}, not SIGKILL\n{self.report()}"
        said = [line for line in self.output(proc).splitlines() if "SIGKILL" in line]
        assert len(said) == 1, self.report()
        return said[0]

    async def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM ``proc`` and wait for its exit 0."""
        proc.send_signal(signal.SIGTERM)
        code = await self.exit_code(proc)
        assert code == 0, f"exit {code}\n{self.report()}"

    def shutdown(self) -> None:
        """SIGKILL every child still running, by its PID, and reap them."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
