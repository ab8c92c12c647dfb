"""`taskapi sinks`: the local SMTP sink and webhook receiver, run as the real process
(`python -m taskapi.sinks`) and driven with smtplib and httpx over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from taskapi.settings import Settings
from taskapi.sinks import run_sinks

pytestmark = pytest.mark.integration

SMTP_LINE = re.compile(r"smtp sink on 127\.0\.0\.1:(\d+), mail in (.+)")
HTTP_LINE = re.compile(r"webhook receiver on http://127\.0\.0\.1:(\d+), records in (.+)")


@dataclass
class Sinks:
    proc: subprocess.Popen[bytes]
    data: Path
    smtp_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def _env() -> dict[str, str]:
    # The developer's own TASKAPI_*/TIDINGS_* settings must not reach the process.
    return {k: v for k, v in os.environ.items() if not k.startswith(("TASKAPI_", "TIDINGS_"))}


def _command(data: Path, smtp_port: int = 0, http_port: int = 0) -> list[str]:
    return [
        sys.executable, "-m", "taskapi.sinks", "--data", str(data),
        "--smtp-port", str(smtp_port), "--http-port", str(http_port),
    ]  # fmt: skip


def _read_two_lines(proc: subprocess.Popen[bytes], timeout: float = 15) -> list[str]:
    # os.read on the raw pipe: a buffered readline could hold the second line back
    # from select() and stall until the deadline.
    assert proc.stdout is not None
    fd, out, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while out.count(b"\n") < 2 and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 4096) if ready else b""
        if ready and not chunk:
            break  # EOF: the process ended
        out += chunk
    return out.decode().splitlines()


def _start(data: Path) -> Sinks:
    proc = subprocess.Popen(
        _command(data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    try:
        lines = _read_two_lines(proc)
        assert len(lines) == 2, (lines, proc.poll())
        smtp, http = SMTP_LINE.fullmatch(lines[0]), HTTP_LINE.fullmatch(lines[1])
        assert smtp, lines
        assert http, lines
        assert smtp[2] == str(data / "mail")
        assert http[2] == str(data / "webhooks.jsonl")
        return Sinks(proc, data, int(smtp[1]), int(http[1]))
    except BaseException:
        _kill(proc)
        raise


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture(scope="module")
def sinks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sinks]:
    """One sinks process shared by the module's tests (each uses its own paths)."""
    running = _start(tmp_path_factory.mktemp("sinks"))
    try:
        yield running
    finally:
        _kill(running.proc)


@pytest.fixture
def own_sinks(tmp_path: Path) -> Iterator[Sinks]:
    """A sinks process for one test, killed by PID at the end whatever happened."""
    running = _start(tmp_path)
    try:
        yield running
    finally:
        _kill(running.proc)


@pytest.fixture
def client(sinks: Sinks) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sinks.url, timeout=10) as http:
        yield http


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_mail_is_stored_and_indexed_before_the_250(sinks: Sinks) -> None:
    mail = EmailMessage()
    mail["From"] = "tasks@taskapi.local"
    mail["To"] = "alice@example.com, bob@example.com"
    mail["Subject"] = "New task: ship the sinks"
    mail["Message-ID"] = "<m-1@taskapi.local>"
    mail["X-Correlation-ID"] = "corr-123"
    mail["X-Tidings-Event-ID"] = "evt-456"
    mail.set_content("Ship them before Friday.")
    with smtplib.SMTP("127.0.0.1", sinks.smtp_port, timeout=10) as smtp:
        assert smtp.send_message(mail) == {}  # {} = every recipient got a 250

    # No waiting: the sink answers 250 only once both files are written.
    (entry,) = [e for e in _lines(sinks.data / "mail" / "index.jsonl") if e["event_id"]]
    assert entry["mail_from"] == "tasks@taskapi.local"
    assert entry["rcpt_tos"] == ["alice@example.com", "bob@example.com"]
    assert entry["subject"] == "New task: ship the sinks"
    assert entry["message_id"] == "<m-1@taskapi.local>"
    assert (entry["correlation_id"], entry["event_id"]) == ("corr-123", "evt-456")
    assert isinstance(entry["received_at"], float)
    assert abs(entry["received_at"] - time.time()) < 60
    name = str(entry["file"])
    assert re.fullmatch(r"\d+-\d+\.eml", name)
    stored = message_from_bytes((sinks.data / "mail" / name).read_bytes(), policy=policy.default)
    assert stored["X-Correlation-ID"] == "corr-123"
    assert stored.get_content().strip() == "Ship them before Friday."
    assert not list((sinks.data / "mail").glob(".*.tmp"))  # no temp file left behind


def test_a_mail_without_tracing_headers_is_indexed_with_nulls(sinks: Sinks) -> None:
    with smtplib.SMTP("127.0.0.1", sinks.smtp_port, timeout=10) as smtp:
        smtp.sendmail("a@x.test", ["b@y.test"], b"Subject: plain\r\n\r\nhello\r\n")
    entry = next(e for e in _lines(sinks.data / "mail" / "index.jsonl") if e["subject"] == "plain")
    assert (entry["correlation_id"], entry["event_id"], entry["message_id"]) == (None,) * 3


def test_a_json_webhook_is_answered_200_and_recorded(sinks: Sinks, client: httpx.Client) -> None:
    payload = {"text": "New task", "blocks": [1, 2]}
    response = client.post("/slack", json=payload, headers={"X-Correlation-ID": "corr-9"})
    assert (response.status_code, response.json()) == (200, {"ok": True})

    (record,) = [r for r in _lines(sinks.data / "webhooks.jsonl") if r["path"] == "/slack"]
    assert record["status"] == 200
    assert record["body"] == payload
    headers = record["headers"]
    assert isinstance(headers, dict)
    assert headers["x-correlation-id"] == "corr-9"
    assert headers["content-type"] == "application/json"
    assert isinstance(record["received_at"], float)
    assert client.get("/_records", params={"path": "/slack"}).json() == [record]


def test_failure_injection_fails_the_given_number_of_requests_then_recovers(
    client: httpx.Client,
) -> None:
    rule = {"path": "/flaky", "status": 500, "times": 2}
    assert client.post("/_control/fail", json=rule).status_code == 200
    statuses = [client.post("/flaky", json={"n": n}).status_code for n in range(3)]
    assert statuses == [500, 500, 200]
    records = client.get("/_records", params={"path": "/flaky"}).json()
    assert [(r["status"], r["body"]["n"]) for r in records] == [(500, 0), (500, 1), (200, 2)]
    assert client.post("/other", json={}).status_code == 200  # other paths are unaffected


def test_failure_without_a_count_lasts_until_cleared(client: httpx.Client) -> None:
    rule = {"path": "/down", "status": 503, "times": None}
    assert client.post("/_control/fail", json=rule).status_code == 200
    assert [client.post("/down", json={}).status_code for _ in range(3)] == [503] * 3
    cleared = client.delete("/_control/fail", params={"path": "/down"})
    assert cleared.json() == {"ok": True, "cleared": ["/down"]}
    assert client.post("/down", json={}).status_code == 200


def test_a_body_that_is_not_json_gets_400_and_is_still_recorded(client: httpx.Client) -> None:
    response = client.post("/text", content=b"hello, not json")
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]
    (record,) = client.get("/_records", params={"path": "/text"}).json()
    assert (record["status"], record["body"]) == (400, "hello, not json")


@pytest.mark.parametrize(
    ("body", "status", "complaint"),
    [
        (b"{not json", 400, "not JSON"),
        (b'["/slack", 500]', 422, "JSON object"),
        (b'{"path": "/slack"}', 422, "status must be"),
        (b'{"path": "/slack", "status": 200}', 422, "status must be"),
        (b'{"path": "/slack", "status": "500"}', 422, "status must be"),
        (b'{"path": "slack", "status": 500}', 422, "path must be"),
        (b'{"path": "/_records", "status": 500}', 422, "path must be"),
        (b'{"path": "/slack", "status": 500, "times": 0}', 422, "times must be"),
        (b'{"path": "/slack", "status": 500, "count": 2}', 422, "unknown field(s) count"),
    ],
)
def test_bad_control_input_is_refused_saying_what_is_wrong(
    client: httpx.Client, body: bytes, status: int, complaint: str
) -> None:
    response = client.post("/_control/fail", content=body)
    assert response.status_code == status
    assert complaint in response.json()["error"]
    assert client.post("/slack-unharmed", json={}).status_code == 200  # no rule was set


def test_health_answers_200(client: httpx.Client) -> None:
    assert client.get("/_health").status_code == 200


@pytest.mark.parametrize("option", ["--smtp-port", "--http-port"])
def test_a_busy_port_gives_a_one_line_error_and_exit_1(tmp_path: Path, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        ports = {"smtp_port": port} if option == "--smtp-port" else {"http_port": port}
        result = subprocess.run(
            _command(tmp_path, **ports), capture_output=True, text=True, env=_env(), timeout=30
        )
    assert result.returncode == 1
    assert result.stdout == ""  # nothing was announced as listening
    (line,) = result.stderr.splitlines()
    assert f"port {port}" in line
    assert "already in use" in line
    assert option in line


def test_sigterm_stops_both_sinks_and_exits_0_despite_idle_clients(own_sinks: Sinks) -> None:
    with (
        smtplib.SMTP("127.0.0.1", own_sinks.smtp_port, timeout=10) as smtp,
        httpx.Client(base_url=own_sinks.url, timeout=10) as http,
    ):
        smtp.ehlo()  # an open SMTP session and a kept-alive HTTP connection, both idle
        assert http.get("/_health").status_code == 200
        started = time.monotonic()
        os.kill(own_sinks.proc.pid, signal.SIGTERM)
        assert own_sinks.proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 5
    assert own_sinks.proc.stderr is not None
    assert b"Traceback" not in own_sinks.proc.stderr.read()
    for port in (own_sinks.smtp_port, own_sinks.http_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_run_sinks_in_process_returns_when_stop_is_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_sinks(Settings.from_env(tmp_path, env={}).ensure(), smtp_port=0, http_port=0, stop=stop)
    )
    try:
        out = ""
        for _ in range(500):  # at most ~10 s
            out += capsys.readouterr().out
            if out.count("\n") >= 2 or task.done():
                break
            await asyncio.sleep(0.02)
        match = HTTP_LINE.search(out)
        assert match, out
        async with httpx.AsyncClient(timeout=10) as http:
            health = await http.get(f"http://127.0.0.1:{match[1]}/_health")
        assert health.status_code == 200
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
