"""What the server helpers share: free ports on 127.0.0.1, waiting for a server process
to listen, and stopping it by its PID."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


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


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s, to a process this test run started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no shutdown, no flush."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
