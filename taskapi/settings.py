"""Where each part of the reference system finds the others: one frozen record, read
from ``TASKAPI_*`` environment variables under a data folder.

Every process of the system (the API, each service, the sinks, the demo) is started
with the same data folder and environment, so they agree on the log, the databases and
the sinks' addresses without a configuration file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from tidings import ConfigError

__all__ = ["Settings"]

DEFAULT_DATA = "taskapi-data"
T = TypeVar("T", int, float)


def _number(env: Mapping[str, str], name: str, default: T, least: T, what: str) -> T:
    """``$name`` as the type of ``default`` (``what`` describes it), at least ``least``."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = type(default)(raw)
    except ValueError:
        raise ConfigError(f"${name} must be {what}, got {raw!r}") from None
    if value < least:
        raise ConfigError(f"${name} must be >= {least}, got {raw!r}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, float(default), 0.0, "a number of seconds")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, 1, "a whole number")


def _managers(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        assignee, sep, manager = item.partition("=")
        if not sep or not assignee.strip() or not manager.strip():
            raise ConfigError(
                f"$TASKAPI_MANAGERS must be assignee=manager pairs, e.g. alice=carol,bob=carol; "
                f"got {item!r}"
            )
        pairs.append((assignee.strip(), manager.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class Settings:
    """The system's configuration (see :meth:`from_env` for the variables)."""

    data: Path
    tidings_url: str
    db_url: str
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    mail_from: str = "tasks@taskapi.local"
    mail_domain: str = "example.com"
    slack_webhook_url: str = "http://127.0.0.1:8026/slack"
    push_gateway_url: str = "http://127.0.0.1:8026/push"
    reminder_lead: timedelta = timedelta(hours=1)
    retry_attempts: int = 5
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    http_timeout: float = 10.0
    # The audit chain's key (decision 0032): the key itself, else its file.
    audit_key: str | None = field(default=None, repr=False)
    audit_key_path: Path | None = None
    audit_checkpoint_every: int = 100
    board_db: str | None = None  # the task board's database; None: <data>/board.db
    managers: tuple[tuple[str, str], ...] = ()  # (assignee, manager): escalations
    default_manager: str = "manager"
    # The key store of personal data (tidings.shredding, decision 0036): a SQLAlchemy
    # URL; None: the assignees travel in clear.
    keys: str | None = None

    @property
    def audit_dir(self) -> Path:
        return self.data / "audit"

    @property
    def audit_key_file(self) -> Path:
        """Where the audit key is kept when ``$TASKAPI_AUDIT_KEY`` is not set: outside
        the audit folder (default ``<data>/audit.key``)."""
        return self.audit_key_path or self.data / "audit.key"

    @property
    def mail_dir(self) -> Path:
        return self.data / "mail"

    @property
    def webhook_log(self) -> Path:
        return self.data / "webhooks.jsonl"

    @property
    def devices_file(self) -> Path:
        return self.data / "devices.json"

    def state_db(self, service: str) -> str:
        """The SQLite database of one service's own state (inbox marks, timers)."""
        return f"sqlite:///{self.data / f'{service}.db'}"

    @property
    def board_url(self) -> str:
        """The task board's database (:mod:`taskapi.board`): ``$TASKAPI_BOARD_DB``, else
        the SQLite file ``<data>/board.db``."""
        return self.board_db or self.state_db("board")

    def address(self, assignee: str) -> str:
        """The mail address of an assignee (``alice`` -> ``alice@<mail_domain>``)."""
        return assignee if "@" in assignee else f"{assignee}@{self.mail_domain}"

    def manager_of(self, assignee: str | None) -> str:
        """Whom an overdue task of ``assignee`` is escalated to."""
        return dict(self.managers).get(assignee or "", self.default_manager)

    @classmethod
    def from_env(
        cls, data: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Read the settings.

        ``TASKAPI_DATA`` (or ``data``): the folder for everything local (default
        ``./taskapi-data``). ``TIDINGS_URL``: the log (default the SQLite file
        ``<data>/events.db``). ``TASKAPI_DB``: the API's database, a SQLAlchemy URL
        (default ``<data>/tasks.db``; PostgreSQL with ``postgresql+psycopg://...``).
        ``TASKAPI_SMTP`` (``host:port``), ``TASKAPI_MAIL_FROM``, ``TASKAPI_MAIL_DOMAIN``,
        ``TASKAPI_SLACK_WEBHOOK``, ``TASKAPI_PUSH_GATEWAY``: the sinks.
        ``TASKAPI_REMINDER_LEAD``: seconds before the due date that a reminder fires.
        ``TASKAPI_RETRY_ATTEMPTS``, ``TASKAPI_RETRY_DELAY``, ``TASKAPI_RETRY_MAX_DELAY``:
        each service's retry policy before a dead letter. ``TASKAPI_AUDIT_KEY`` (the
        audit chain's key) or ``TASKAPI_AUDIT_KEY_FILE`` (its file, default
        ``<data>/audit.key``, created by the audit service); ``TASKAPI_AUDIT_CHECKPOINT``:
        the audit lines of a day between two checkpoints in the log (100).
        each service's retry policy before a dead letter. ``TASKAPI_BOARD_DB``: the task
        board's database (default ``<data>/board.db``).
        ``TASKAPI_MANAGERS``
        (``alice=carol,bob=carol``) and ``TASKAPI_DEFAULT_MANAGER`` (``manager``): whom
        an overdue task is escalated to. ``TASKAPI_KEYS``: the key store (a SQLAlchemy
        URL) with which the assignees are encrypted in the log and erasable
        (``DELETE /people/{id}``); its master key from ``$TIDINGS_MASTER_KEY``.
        """
        env = os.environ if env is None else env
        folder = Path(data if data is not None else env.get("TASKAPI_DATA") or DEFAULT_DATA)
        folder = folder.absolute()
        smtp = env.get("TASKAPI_SMTP", "127.0.0.1:8025")
        host, sep, port = smtp.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"$TASKAPI_SMTP must be host:port, e.g. 127.0.0.1:8025; got {smtp!r}")
        return cls(
            data=folder,
            tidings_url=env.get("TIDINGS_URL") or f"sqlite:///{folder / 'events.db'}",
            db_url=env.get("TASKAPI_DB") or f"sqlite:///{folder / 'tasks.db'}",
            smtp_host=host,
            smtp_port=int(port),
            mail_from=env.get("TASKAPI_MAIL_FROM", cls.mail_from),
            mail_domain=env.get("TASKAPI_MAIL_DOMAIN", cls.mail_domain),
            slack_webhook_url=env.get("TASKAPI_SLACK_WEBHOOK", cls.slack_webhook_url),
            push_gateway_url=env.get("TASKAPI_PUSH_GATEWAY", cls.push_gateway_url),
            reminder_lead=timedelta(seconds=_seconds(env, "TASKAPI_REMINDER_LEAD", 3600)),
            retry_attempts=_int(env, "TASKAPI_RETRY_ATTEMPTS", cls.retry_attempts),
            retry_base_delay=_seconds(env, "TASKAPI_RETRY_DELAY", cls.retry_base_delay) or 0.01,
            retry_max_delay=_seconds(env, "TASKAPI_RETRY_MAX_DELAY", cls.retry_max_delay),
            http_timeout=_seconds(env, "TASKAPI_HTTP_TIMEOUT", cls.http_timeout),
            audit_key=env.get("TASKAPI_AUDIT_KEY") or None,
            audit_key_path=Path(env["TASKAPI_AUDIT_KEY_FILE"])
            if env.get("TASKAPI_AUDIT_KEY_FILE")
            else None,
            audit_checkpoint_every=_int(
                env, "TASKAPI_AUDIT_CHECKPOINT", cls.audit_checkpoint_every
            ),
            board_db=env.get("TASKAPI_BOARD_DB") or None,
            managers=_managers(env.get("TASKAPI_MANAGERS", "")),
            default_manager=env.get("TASKAPI_DEFAULT_MANAGER") or cls.default_manager,
            keys=env.get("TASKAPI_KEYS") or None,
        )

    def ensure(self) -> Settings:
        """Create the data folders; return self."""
        for folder in (self.data, self.audit_dir, self.mail_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self
