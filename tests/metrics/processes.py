"""A ``tidings run --metrics-port 0`` process for the metrics tests: its app module,
the port it logged, and stopping it by its PID."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

PORT_LINE = re.compile(r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics")

# Group "g" retries every event for ever (each partition waits behind its first): with
# five events published, its lag stays at 5 while it runs, and it counts retries.
APP = """\
from tidings import Retry, Tidings

app = Tidings({url!r}, service="metrics-process")


@app.subscriber("t", group="g", retry=Retry(max_attempts=None, base_delay=0.05, max_delay=0.5))
async def handle(data):
    raise RuntimeError("not now")
"""


def write_app(tmp_path: Path) -> str:
    """The app module in ``tmp_path``; returns the log's URL."""
    url = f"sqlite:///{tmp_path}/log.db"
    (tmp_path / "metrics_app.py").write_text(APP.format(url=url))
    return url


def publish(tmp_path: Path, url: str, numbers: range) -> None:
    for n in numbers:
        done = subprocess.run(
            [sys.executable, "-m", "tidings", "publish", "t", "thing.happened",
             "--data", f'{{"n": {n}}}', "--create", "--url", url],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


class RunningWorker:
    """``tidings run metrics_app:app --metrics-port 0`` in ``tmp_path``; its stderr is
    read by a thread (so the pipe never fills) and kept in ``lines``."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", "run", "metrics_app:app", *extra],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def port(self, timeout: float = 60.0) -> int:
        """The metrics port the worker logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if match := PORT_LINE.search(line):
                return int(match.group(1))
        raise AssertionError(f"no metrics port logged; stderr so far: {''.join(self.seen)}")

    def stop(self) -> int:
        """SIGTERM to its PID; its exit code (killed if it did not stop in 60 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=10)  # the pipe ends with the process
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body.decode()
