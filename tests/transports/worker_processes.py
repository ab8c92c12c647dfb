"""Worker processes for the tests on every transport: ``tidings run`` of the recorder
app (``apps/recorder.py``) in subprocesses, their record files read back, bounded waits."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidings import Tidings
from tidings.errors import TransportError

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.transports.apps.recorder:app"


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a record file: an event a process began or finished handling."""

    kind: str
    group: str
    partition: int
    offset: int
    id: str
    key: str
    seq: int
    pid: int
    t: int  # CLOCK_MONOTONIC ns, comparable across processes on one machine

    @classmethod
    def parse(cls, text: str) -> Line:
        kind, group, part, off, event_id, key, seq, pid, t = text.split()
        return cls(kind, group, int(part), int(off), event_id, key, int(seq), int(pid), int(t))


def by_partition(lines: Iterable[Line]) -> dict[int, list[Line]]:
    """The lines of each partition, in time order."""
    out: dict[int, list[Line]] = defaultdict(list)
    for line in sorted(lines, key=lambda x: x.t):
        out[line.partition].append(line)
    return out


class WorkerProcesses:
    """Recorder workers on one log (``url``), their logs, and their record files."""

    deadline = 30.0  # seconds :func:`until` waits by default

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.dir = tmp_path
        self.out = tmp_path / "handled"
        self.out.mkdir()
        self.url = url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        self.signalled: set[int] = set()  # pids we stopped on purpose

    def spawn(self, env: dict[str, str], args: Iterable[str] = ()) -> subprocess.Popen[bytes]:
        """Start ``tidings run`` of the recorder with ``RECORDER_*`` settings in ``env``."""
        full = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "RECORDER_OUT": str(self.out),
            "TIDINGS_LOG_LEVEL": "INFO",
            **env,
        }
        full.pop("TIDINGS_URL", None)
        full.pop("TIDINGS_SCHEDULER_URL", None)
        cmd = [sys.executable, "-m", "tidings", "run", APP, "--url", self.url, *args]
        log = self.dir / f"worker-{len(self.procs)}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=sink, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def send(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        self.signalled.add(proc.pid)
        proc.send_signal(sig)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def report(self) -> str:
        return "\n".join(
            f"--- worker pid {p.pid} (exit {p.poll()}):\n{self.log(p)[-3000:]}" for p in self.procs
        )

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.pid not in self.signalled and proc.poll() is not None:
                pytest.fail(f"worker {proc.pid} exited on its own\n{self.report()}")

    async def wait_exit(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"worker {proc.pid} still runs {timeout:.0f}s after a signal")
            await asyncio.sleep(0.02)
        assert proc.returncode is not None
        return proc.returncode

    def shutdown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)

    def lines(self, kind: str = "done") -> list[Line]:
        """Every line of ``kind``, each process's in the order it wrote them."""
        out = []
        for path in sorted(self.out.glob("handled-*.txt")):
            text = path.read_text()
            # Only whole lines: a writer may be half-way through its last one.
            for raw in text[: text.rfind("\n") + 1].splitlines():
                line = Line.parse(raw)
                if line.kind == kind:
                    out.append(line)
        return out

    def handled_by(self, proc: subprocess.Popen[bytes], since: int = 0) -> int:
        """How many events ``proc`` finished, since a monotonic time in ns."""
        return sum(1 for line in self.lines() if line.pid == proc.pid and line.t > since)


async def until(
    workers: WorkerProcesses,
    what: str,
    check: Callable[[], Awaitable[bool] | bool],
    timeout: float | None = None,
) -> float:
    """Poll ``check`` until it is true; return the seconds it took. Fails after
    ``timeout`` (default: the workers' ``deadline``)."""
    timeout = workers.deadline if timeout is None else timeout
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        workers.check_alive()
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{workers.report()}")
        await asyncio.sleep(0.05)


class Keys:
    """Random keys from a fixed pool, each with its own rising sequence number."""

    def __init__(self, count: int, seed: int = 7) -> None:
        self.names = [f"key-{i}" for i in range(count)]
        self.rng = random.Random(seed)
        self.next: Counter[str] = Counter()

    def take(self, n: int) -> list[tuple[str, int]]:
        out = []
        for _ in range(n):
            key = self.rng.choice(self.names)
            out.append((key, self.next[key]))
            self.next[key] += 1
        return out


def order_violations(lines: Iterable[Line]) -> list[str]:
    """Handlings of an event before an earlier event of its key had been handled,
    per group, in the order the handlers finished (monotonic time, one machine)."""
    out = []
    done: dict[tuple[str, str], set[int]] = defaultdict(set)
    prefix: Counter[tuple[str, str]] = Counter()  # first seq not yet handled, per key
    for line in sorted(lines, key=lambda x: x.t):
        slot = (line.group, line.key)
        if line.seq > prefix[slot]:
            out.append(f"{line.group} handled {line.key}#{line.seq} before #{prefix[slot]}")
        done[slot].add(line.seq)
        while prefix[slot] in done[slot]:
            prefix[slot] += 1
    return out


async def wait_for_jetstream(url: str) -> None:
    """Until the cluster has a JetStream meta leader and takes a replicated stream."""
    deadline = time.monotonic() + 30
    while True:
        app = Tidings(url, service="probe")
        try:
            async with app:
                await app.transport.create_topic("probe", 1)
                return
        except TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
