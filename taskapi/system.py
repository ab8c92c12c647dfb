"""The whole reference system as processes: the local sinks, the API (with its outbox
relay) and the six services, each its own ``python -m taskapi ...`` process.

:class:`System` is what ``taskapi demo`` runs and what the end-to-end tests drive: it
starts parts, waits until each is ready (the line it prints once listening or
running), stops and restarts them by PID, and tells every part where the others are
through the ``TASKAPI_*`` environment (see :class:`~taskapi.settings.Settings`). Each
part's output goes to ``<data>/logs/<part>.log``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskapi.services import SERVICES
from taskapi.settings import Settings

__all__ = ["Part", "StartFailed", "System"]

_SMTP_READY = re.compile(r"smtp sink on 127\.0\.0\.1:(\d+)")
_HTTP_READY = re.compile(r"webhook receiver on http://127\.0\.0\.1:(\d+)")
_API_READY = re.compile(r"Task API on http://127\.0\.0\.1:(\d+)")
_SERVICE_READY = re.compile(r"service ([\w-]+) running")
_DASHBOARD_READY = re.compile(r"tidings dashboard: http://127\.0\.0\.1:(\d+)/")


class StartFailed(RuntimeError):
    """A part exited or did not get ready in time; the message quotes its log."""


@dataclass
class Part:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    # SIGTERM is sent once: a second one could reach a process that has already
    # removed its handler on the way out, and kill it instead of letting it finish.
    terminated: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.process is not None and self.running and not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    def text(self, start: int = 0) -> str:
        """The part's output from byte ``start`` of its log."""
        try:
            return self.log.read_bytes()[start:].decode(errors="replace")
        except FileNotFoundError:
            return ""


class System:
    """The system's processes under one data folder.

    Ports 0 (the default) let the sinks and the API pick free ports; the chosen ones
    are read from their ready lines before the parts that need them start. ``env``:
    extra environment for every part (e.g. ``TASKAPI_REMINDER_LEAD``).
    """

    def __init__(
        self,
        data: Path,
        *,
        api_port: int = 0,
        smtp_port: int = 0,
        http_port: int = 0,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data = data.absolute()
        self.ports = {"api": api_port, "smtp": smtp_port, "http": http_port, "dashboard": 0}
        self.env = {**os.environ, **(env or {}), "TASKAPI_DATA": str(self.data)}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.start_timeout = start_timeout
        self.parts: dict[str, Part] = {}
        (self.data / "logs").mkdir(parents=True, exist_ok=True)

    # -- where things are ---------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return Settings.from_env(env=self.env)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}/"

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    # -- starting and stopping ----------------------------------------------------

    def start_all(self) -> None:
        """Start the sinks, then the API and the six services side by side."""
        self.start_sinks()
        self.start_api(services=SERVICES)

    def start_sinks(self) -> None:
        args = ["--smtp-port", str(self.ports["smtp"]), "--http-port", str(self.ports["http"])]
        smtp, http = self._start("sinks", ["sinks", *args], _SMTP_READY, _HTTP_READY)
        self.ports["smtp"], self.ports["http"] = int(smtp[1]), int(http[1])
        self.env["TASKAPI_SMTP"] = f"127.0.0.1:{self.ports['smtp']}"
        self.env["TASKAPI_SLACK_WEBHOOK"] = f"{self.receiver_url}/slack"
        self.env["TASKAPI_PUSH_GATEWAY"] = f"{self.receiver_url}/push"

    def start_api(self, *extra: str, services: Sequence[str] = ()) -> None:
        """Start the API (``extra``: its options), and ``services`` while it starts."""
        api = self._launch("api", ["api", "--port", str(self.ports["api"]), *extra])
        others = [self._launch(name, ["service", name]) for name in services]
        (found,) = self._wait(*api, _API_READY)
        self.ports["api"] = int(found[1])
        for launched in others:
            self._wait(*launched, _SERVICE_READY)

    def start_dashboard(self, port: int = 0) -> None:
        """Start ``tidings dashboard`` on the system's log, on 127.0.0.1 (no token: it
        listens on this machine only)."""
        url = self.settings.tidings_url
        args = ["dashboard", "--url", url, "--host", "127.0.0.1", "--port", str(port)]
        (found,) = self._wait(*self._launch("dashboard", args, module="tidings"), _DASHBOARD_READY)
        self.ports["dashboard"] = int(found[1])

    def start_service(self, name: str) -> None:
        self._wait(*self._launch(name, ["service", name]), _SERVICE_READY)

    def _start(self, name: str, args: list[str], *ready: re.Pattern[str]) -> list[re.Match[str]]:
        return self._wait(*self._launch(name, args), *ready)

    def _launch(self, name: str, args: list[str], module: str = "taskapi") -> tuple[Part, int]:
        """Start part ``name`` (``python -m module args``); return it and where its new
        output starts in its log."""
        running = self.parts.get(name)
        if running is not None and running.process is not None and running.running:
            raise StartFailed(f"{name} is already running (pid {running.process.pid})")
        argv = [sys.executable, "-m", module, *args]
        part = Part(name, argv, self.data / "logs" / f"{name}.log")
        start = part.log.stat().st_size if part.log.exists() else 0
        with part.log.open("ab") as out:
            # A session of its own: Ctrl-C in a terminal reaches only the launcher, which
            # then stops the parts in order (services before the sinks they talk to),
            # each with exactly one SIGTERM.
            part.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.data,
                start_new_session=True,
            )
        self.parts[name] = part
        return part, start

    def _wait(self, part: Part, start: int, *ready: re.Pattern[str]) -> list[re.Match[str]]:
        """Wait until the part's output since ``start`` matches every ``ready``."""
        name = part.name
        deadline = time.monotonic() + self.start_timeout
        while True:
            text = part.text(start)
            found = [m for m in (p.search(text) for p in ready) if m is not None]
            if len(found) == len(ready):
                return found
            if not part.running:
                raise StartFailed(f"{name} exited while starting; its log ({part.log}):\n{text}")
            if time.monotonic() > deadline:
                self.stop(name)
                raise StartFailed(f"{name} was not ready after {self.start_timeout:.0f}s:\n{text}")
            time.sleep(0.05)

    def stop(self, name: str, *, timeout: float = 20.0) -> int | None:
        """SIGTERM part ``name`` and wait (SIGKILL after ``timeout``); its exit code."""
        part = self.parts.get(name)
        if part is None or part.process is None:
            return None
        process = part.process
        if process.poll() is None:
            part.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self, name: str) -> None:
        """SIGKILL part ``name`` (a crash)."""
        part = self.parts.get(name)
        if part is not None and part.process is not None and part.process.poll() is None:
            part.process.kill()
            part.process.wait()

    def stop_all(self) -> dict[str, int | None]:
        """Stop the services and the API (signalled together, they drain in parallel),
        then the sinks, which may be receiving their last effects until then."""
        first = [n for n in self.parts if n != "sinks"]
        try:
            for name in first:
                self.parts[name].terminate()
            codes = {name: self.stop(name) for name in first}
        except BaseException:
            # Interrupted while waiting (a second Ctrl-C): every part still gets its
            # SIGTERM, the sinks too, rather than outlive the launcher unasked.
            for part in self.parts.values():
                part.terminate()
            raise
        if "sinks" in self.parts:
            codes["sinks"] = self.stop("sinks")
        return codes
