"""What the services did, read back from where their effects land: the SMTP sink's
mail index, the webhook receiver's log and the audit files.

The demo prints these as they happen; the end-to-end tests and the benchmark assert
and time them. Each effect carries the correlation id and the id of the event that
caused it, so one request can be followed to every effect.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from taskapi.settings import Settings

__all__ = ["Effect", "Effects"]

_WEBHOOK_SERVICE = {"/slack": "slack", "/push": "push"}


@dataclass(frozen=True)
class Effect:
    """One effect: ``service`` did something at ``at`` (epoch seconds) for an event.

    ``ok`` is False for a webhook call the receiver answered with an error (a
    failed attempt, which the service retries). The reminders service has two kinds
    of effect: a reminder set or moved (a row of its timer table, read from
    ``reminders.db``), and a reminder fired (its ``task.reminder_due`` event, read
    from the audit files).
    """

    service: str
    at: float
    correlation_id: str | None
    event_id: str | None
    summary: str
    ok: bool = True
    record: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class _Tail:
    """New complete lines of one append-only file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def lines(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        out = []
        for line in chunk[:end].splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a damaged line is `taskapi audit verify`'s business
        return out


class Effects:
    """Collects effects; :meth:`poll` returns the ones new since the last call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mail = _Tail(settings.mail_dir / "index.jsonl")
        self.webhooks = _Tail(settings.webhook_log)
        self.audit: dict[Path, _Tail] = {}
        self.reminders = settings.data / "reminders.db"
        self.scheduled: set[tuple[str, float]] = set()
        self.seen: list[Effect] = []

    def poll(self) -> list[Effect]:
        new = [self._mail(r) for r in self.mail.lines()]
        new += [self._webhook(r) for r in self.webhooks.lines()]
        for path in sorted(self.settings.audit_dir.glob("audit-*.jsonl")):
            tail = self.audit.setdefault(path, _Tail(path))
            for line in tail.lines():
                new.extend(self._audit(line, path.name))
        new += self._scheduled()
        new.sort(key=lambda e: e.at)
        self.seen.extend(new)
        return new

    def of(self, service: str, *, correlation_id: str | None = None) -> list[Effect]:
        """The successful effects of ``service`` seen so far (of one request, if given)."""
        return [
            e
            for e in self.seen
            if e.service == service
            and e.ok
            and (correlation_id is None or e.correlation_id == correlation_id)
        ]

    def _scheduled(self) -> list[Effect]:
        """Reminders set or moved since the last look (rows of the service's timer table)."""
        if not self.reminders.exists():
            return []
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.reminders}?mode=ro", uri=True, timeout=5)
            ) as db:
                rows = db.execute(
                    "SELECT task_id, title, remind_at, correlation_id, causation_id, scheduled_at"
                    " FROM reminders"
                ).fetchall()
        except sqlite3.OperationalError:
            return []  # the service has not created its table yet
        new = []
        for task_id, title, remind_at, correlation, causation, scheduled_at in rows:
            if (task_id, scheduled_at) in self.scheduled:
                continue
            self.scheduled.add((task_id, scheduled_at))
            # With its date: a reminder a day ahead at 09:59 is not one in the past.
            when = datetime.fromtimestamp(remind_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            summary = f"reminder for {title!r} set for {when} UTC"
            new.append(Effect("reminders", scheduled_at, correlation, causation, summary))
        return new

    @staticmethod
    def _mail(r: dict[str, Any]) -> Effect:
        to = ", ".join(r.get("rcpt_tos") or [])
        return Effect(
            "email",
            float(r["received_at"]),
            r.get("correlation_id"),
            r.get("event_id"),
            f"mail to {to}: {r.get('subject')!r}",
            record=r,
        )

    @staticmethod
    def _webhook(r: dict[str, Any]) -> Effect:
        headers = r.get("headers") or {}
        body = r.get("body")
        service = _WEBHOOK_SERVICE.get(r.get("path", ""), r.get("path", "?"))
        if isinstance(body, dict) and service == "slack":
            summary = f"posted {body.get('text')!r}"
        elif isinstance(body, dict):
            summary = f"pushed to {body.get('to')}: {body.get('title')!r} {body.get('body')!r}"
        else:
            summary = f"got {body!r}"
        status = int(r.get("status", 200))
        if not 200 <= status < 300:
            summary = f"answered {status} to an attempt"
        return Effect(
            service,
            float(r["received_at"]),
            headers.get("x-correlation-id"),
            headers.get("idempotency-key"),
            summary,
            ok=200 <= status < 300,
            record=r,
        )

    @staticmethod
    def _audit(line: dict[str, Any], file: str) -> list[Effect]:
        event = line.get("event") or {}
        at = datetime.fromisoformat(line["audited_at"]).timestamp()
        correlation, event_id, type_ = (
            event.get("correlationid"),
            event.get("id"),
            event.get("type"),
        )
        out = [
            Effect(
                "audit",
                at,
                correlation,
                event_id,
                f"{type_} -> {file} line {line.get('n')}",
                record=line,
            )
        ]
        if type_ == "task.reminder_due":
            data = event.get("data") or {}
            fired = datetime.fromisoformat(event["time"]).timestamp()
            title = data.get("title")
            out.append(
                Effect("reminders", fired, correlation, event_id, f"reminder due: {title!r}")
            )
        return out
