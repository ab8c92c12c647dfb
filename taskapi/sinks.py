"""``taskapi sinks``: local stand-ins for the outside world, so every effect is visible.

An SMTP sink stores each message as ``<mail_dir>/<ns>-<seq>.eml`` plus a line of
``<mail_dir>/index.jsonl``; a webhook receiver records every ``POST`` as a line of
``<data>/webhooks.jsonl``, with a control API (``/_control/fail``, ``/_records``,
``/_health``) for tests. Both run on one asyncio loop, on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from taskapi.net import ListenError, Server, listen
from taskapi.net import port as port_number
from taskapi.settings import Settings
from tidings import ConfigError

__all__ = ["SinkError", "main", "run_sinks", "webhook_app"]

HOST = "127.0.0.1"
_append_lock = threading.Lock()  # appends run in worker threads; keep lines whole


class SinkError(Exception):
    """A sink could not start (e.g. its port is taken); the message says what to do."""


def _append_line(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with _append_lock, path.open("a", encoding="utf-8") as file:
        file.write(line)


def _write_atomic(path: Path, data: bytes) -> None:
    # A reader never sees a half-written message: the name appears only when complete.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_MAIL_HEADERS = {
    "subject": "Subject",
    "message_id": "Message-ID",
    "correlation_id": "X-Correlation-ID",
    "event_id": "X-Tidings-Event-ID",
}


class _MailHandler:
    """aiosmtpd handler: store the message and index it before answering 250."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self._seq = itertools.count(1)

    def _store(self, envelope: Envelope, raw: bytes) -> None:
        name = f"{time.time_ns()}-{next(self._seq)}.eml"
        message = email.message_from_bytes(raw, policy=email.policy.default)
        record: dict[str, Any] = {
            "received_at": time.time(),
            "file": name,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
        }
        for key, header in _MAIL_HEADERS.items():
            value = message.get(header)
            record[key] = None if value is None else str(value)
        _write_atomic(self.mail_dir / name, raw)
        _append_line(self.mail_dir / "index.jsonl", record)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            await asyncio.to_thread(self._store, envelope, raw)
        except OSError as exc:
            # A transient answer: a real sender retries rather than losing the mail.
            return f"451 Requested action aborted: could not store the message ({exc})"
        return "250 Message accepted for delivery"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")  # records must stay valid JSON lines


def webhook_app(settings: Settings) -> Starlette:
    """The webhook receiver: ``POST`` anywhere is recorded; ``/_...`` is its control API."""
    log = settings.webhook_log
    failures: dict[str, tuple[int, int | None]] = {}  # path -> (status, times left or None)

    async def receive(request: Request) -> JSONResponse:
        path = request.url.path
        if path.startswith("/_"):
            return _error(404, f"{path}: paths under /_ belong to the receiver's control API")
        raw = await request.body()
        body: Any
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
            parsed = True
        except ValueError as exc:  # JSONDecodeError and bad UTF-8 are both ValueErrors
            body, parsed, reason = raw.decode("utf-8", errors="replace"), False, str(exc)
        if path in failures:
            status, times = failures.pop(path)
            if times is None or times > 1:  # keep failing until the count runs out
                failures[path] = (status, None if times is None else times - 1)
            response = _error(status, f"failure injected for {path} by /_control/fail")
        elif not parsed:
            response = _error(400, f"the body is not JSON ({reason}); send a JSON document")
        else:
            response = JSONResponse({"ok": True})
        record = {
            "received_at": time.time(),
            "path": path,
            "status": response.status_code,
            "headers": _headers(request),
            "body": body,
        }
        await asyncio.to_thread(_append_line, log, record)
        return response

    async def fail(request: Request) -> JSONResponse:
        if request.method == "DELETE":
            path = request.query_params.get("path")
            if path is None:
                cleared = sorted(failures)
                failures.clear()
            else:
                cleared = [path] if failures.pop(path, None) else []
            return JSONResponse({"ok": True, "cleared": cleared})
        try:
            spec = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, f"the body is not JSON ({exc}); send {_FAIL_EXAMPLE}")
        problem = _check_fail(spec)
        if problem:
            return _error(422, f"{problem}; e.g. {_FAIL_EXAMPLE}")
        failures[spec["path"]] = (spec["status"], spec.get("times"))
        return JSONResponse({"ok": True, **spec})

    async def records(request: Request) -> JSONResponse:
        path = request.query_params.get("path")
        lines = await asyncio.to_thread(_read_lines, log)
        return JSONResponse([r for r in lines if path is None or r["path"] == path])

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/_health", health, methods=["GET"]),
            Route("/_records", records, methods=["GET"]),
            Route("/_control/fail", fail, methods=["POST", "DELETE"]),
            Route("/{path:path}", receive, methods=["POST"]),
        ]
    )


_FAIL_EXAMPLE = '{"path": "/slack", "status": 500, "times": 2}'


def _check_fail(spec: Any) -> str | None:
    """What is wrong with a ``/_control/fail`` body, or None."""
    if not isinstance(spec, dict):
        return "the body must be a JSON object"
    unknown = set(spec) - {"path", "status", "times"}
    if unknown:
        return f"unknown field(s) {', '.join(sorted(unknown))}; the fields are path, status, times"
    path, status, times = spec.get("path"), spec.get("status"), spec.get("times")
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("/_"):
        return f"path must be a webhook path like /slack (not under /_), got {path!r}"
    # bool is an int in Python; true/false are not statuses or counts.
    if type(status) is not int or not 400 <= status <= 599:
        return f"status must be an error status from 400 to 599, got {status!r}"
    if times is not None and (type(times) is not int or times < 1):
        return f"times must be a count >= 1, or null to fail until cleared; got {times!r}"
    return None


def _headers(request: Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _read_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _listen(port: int, option: str) -> socket.socket:
    try:
        return listen(HOST, port, option)
    except ListenError as exc:
        raise SinkError(str(exc)) from None


async def run_sinks(
    settings: Settings,
    *,
    smtp_port: int | None = None,
    http_port: int | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the SMTP sink and the webhook receiver until ``stop`` is set (or, without
    ``stop``, SIGTERM/SIGINT). Port 0 picks a free port; each prints one line when it
    listens. Raises :class:`SinkError` if a port cannot be bound (nothing is started)."""
    loop = asyncio.get_running_loop()
    if smtp_port is None:
        smtp_port = settings.smtp_port
    if http_port is None:
        http_port = urlsplit(settings.slack_webhook_url).port or 80
    # Bind both before starting either, so a busy port leaves nothing half-running.
    smtp_sock = _listen(smtp_port, "--smtp-port")
    try:
        http_sock = _listen(http_port, "--http-port")
    except SinkError:
        smtp_sock.close()
        raise

    handler = _MailHandler(settings.mail_dir)
    sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def smtp_protocol() -> SMTP:
        protocol = SMTP(handler, hostname="taskapi-sink", enable_SMTPUTF8=True, loop=loop)
        sessions.add(protocol)
        return protocol

    smtp = await loop.create_server(smtp_protocol, sock=smtp_sock)
    config = uvicorn.Config(
        webhook_app(settings),
        lifespan="off",
        ws="none",  # no websockets: nothing to import, no deprecation noise
        log_config=None,  # leave the process's logging alone
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    server = Server(config)
    serving = asyncio.create_task(server.serve(sockets=[http_sock]))
    own_signals = stop is None
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait())
    try:
        for _ in range(1000):  # at most ~10 s for uvicorn to start
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise SinkError("the webhook receiver did not start; see the messages above")
        print(f"smtp sink on {HOST}:{smtp_sock.getsockname()[1]}, mail in {settings.mail_dir}")
        print(
            f"webhook receiver on http://{HOST}:{http_sock.getsockname()[1]}, "
            f"records in {settings.webhook_log}",
            flush=True,
        )
        await asyncio.wait({stopping, serving}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            raise SinkError("the webhook receiver stopped unexpectedly; see the messages above")
    finally:
        stopping.cancel()
        server.should_exit = True
        smtp.close()
        for session in list(sessions):  # idle SMTP clients must not hold up the exit
            if session.transport is not None:
                session.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(smtp.wait_closed(), 3)
        await serving
        if own_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """``taskapi sinks [--data DIR] [--smtp-port N] [--http-port N]``; 0 ok, 1 error."""
    parser = argparse.ArgumentParser(
        prog="taskapi sinks", description="Run the local SMTP sink and webhook receiver."
    )
    parser.add_argument("--data", help="the data folder (default $TASKAPI_DATA or ./taskapi-data)")
    parser.add_argument("--smtp-port", type=port_number, help="default: the port of $TASKAPI_SMTP")
    parser.add_argument("--http-port", type=port_number, help="default: the port of the Slack URL")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(args.data).ensure()
        asyncio.run(run_sinks(settings, smtp_port=args.smtp_port, http_port=args.http_port))
    except (SinkError, ConfigError, OSError) as exc:
        print(f"taskapi sinks: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
