"""What the server helpers share: free ports on 127.0.0.1, waiting for a server process
to listen, and stopping it by its PID."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that nothing listens on, taken below the
    kernel's ephemeral range where one exists: a port from ``bind(0)`` is an ephemeral
    one, which any outgoing connection on the machine (a cluster node dialling its
    routes) may take before the server binds it. All are held open until all are
    chosen, so no two are the same."""
    low, _ = _ephemeral_range()
    held: list[socket.socket] = []
    try:
        tries = 0
        while len(held) < count:
            tries += 1
            if tries > count + 1000:
                raise RuntimeError(f"no {count} free ports on {HOST} after {tries} tries")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((HOST, random.randrange(10000, low) if low > 11000 else 0))
            except OSError:
                s.close()
                continue
            held.append(s)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(text[0]), int(text[1])
    except (OSError, ValueError, IndexError):
        return 0, 0  # unknown (not Linux): let the kernel choose


def wait_listening(
    proc: subprocess.Popen[bytes], port: int, log: Path, within: float, name: str
) -> None:
    """Return once ``proc`` accepts connections on ``port``; raise if it exits first
    or is not listening within ``within`` seconds (its log named in the error)."""
    deadline = time.monotonic() + within
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not listen within {within:g} s; see {log}"
                ) from None
            time.sleep(0.05)


def launch(argv: list[str], port: int, log: Path, name: str) -> subprocess.Popen[bytes]:
    """Start ``argv`` (its output appended to ``log``) and return it once it listens on
    ``port``; a server that exits or is not listening within 20 s is stopped, and the
    error names its log."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        wait_listening(proc, port, log, 20, name)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, to a process this test run started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no shutdown, no flush."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


# The watcher's program: wait for the end of its stdin (the write end is held by the
# process that started it, and closes however that one ends), then signal the server
# and, once it is gone (30 s at most), remove its folder.
_WATCHER = """
import os, shutil, sys, time
pid, signum, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sys.stdin.buffer.read()
try:
    os.kill(pid, signum)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        os.kill(pid, 0)
        time.sleep(0.1)
except ProcessLookupError:
    pass
if folder:
    shutil.rmtree(folder, ignore_errors=True)
"""


class Watcher:
    """Stops server ``pid`` (with ``signum``) and removes ``folder`` if the process
    that made this watcher ends without :meth:`close`: a test run killed (a CI's time
    limit, a second Ctrl-C, a SIGTERM) skips its teardowns, and a server started
    detached (PostgreSQL's ``pg_ctl`` daemonizes) would outlive it, holding its port
    and files. The watcher is a process of its own session, blocked on a pipe whose
    write end only this process holds: no polling, and it sees any way this one ends."""

    def __init__(self, pid: int, signum: int, folder: Path | None = None) -> None:
        read, self._write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WATCHER, str(pid), str(signum), str(folder or "")],
                stdin=read, stdout=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(self._write)
            raise
        finally:
            os.close(read)

    def close(self) -> None:
        """The server is being stopped as it should: end the watcher (by its PID)."""
        self._proc.kill()
        self._proc.wait(10)
        os.close(self._write)
