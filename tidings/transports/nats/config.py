"""``nats://`` URLs: parsed and validated into a :class:`NatsConfig`.

    nats://[user:password@ | token@]host:port[,host:port][?option=value&...]

Every refusal is a :class:`~tidings.errors.ConfigError` naming the option and showing a
valid example. No network access happens here; files named by options must exist.

Options (durations in seconds, or with a unit: ``500ms``, ``30s``, ``5m``, ``2h``, ``7d``):

- streams of topics this transport creates: ``partitions`` (8), ``replicas`` (1, up
  to 5), ``storage`` (``file`` or ``memory``), ``max_age`` and ``max_bytes`` (none:
  keep everything), ``duplicate_window`` (2m: how long an event id is remembered for
  publish deduplication); each also per topic as ``topic.<name>.<option>``, e.g.
  ``topic.audit.max_age=30d``;
- group members: ``lease`` (10s: how long a member keeps its partitions without a
  heartbeat), ``ack_wait`` (30s), ``max_deliver`` (-1: unlimited), ``max_ack_pending``
  (1000 per partition), ``fetch_batch`` (256 messages per pull request);
- connection: ``name`` (the client name, ``tidings``), ``connect_timeout`` (5s),
  ``creds`` (a ``.creds`` file: JWT and nkey seed), ``nkey`` (an nkey seed file),
  ``token`` (or ``token@host``), ``user``/``password`` (or ``user:password@host``),
  ``tls`` (true), ``tls_ca``, ``tls_cert`` with ``tls_key``, ``tls_hostname``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import quote, unquote

from tidings.errors import ConfigError
from tidings.transports._broker_url import split_broker_url

__all__ = ["NatsConfig", "StreamSettings", "parse_duration", "parse_nats_url"]

Storage = Literal["file", "memory"]
EXAMPLE = "nats://127.0.0.1:4222,127.0.0.1:4223?replicas=3&creds=/etc/nats/app.creds"
DEFAULT_PORT = 4222
_STREAM_OPTIONS = ("partitions", "replicas", "storage", "max_age", "max_bytes", "duplicate_window")
_OPTIONS = frozenset(
    {
        *_STREAM_OPTIONS,
        "lease",
        "ack_wait",
        "max_deliver",
        "max_ack_pending",
        "fetch_batch",
        "name",
        "connect_timeout",
        "creds",
        "nkey",
        "token",
        "user",
        "password",
        "tls",
        "tls_ca",
        "tls_cert",
        "tls_key",
        "tls_hostname",
    }
)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How a topic's stream is created (an existing stream is used as it is)."""

    partitions: int = 8
    replicas: int = 1
    storage: Storage = "file"
    max_age: float | None = None  # seconds; None: no limit
    max_bytes: int | None = None
    duplicate_window: float = 120.0


@dataclass(frozen=True, slots=True)
class NatsConfig:
    """A validated ``nats://`` URL. Secrets never appear in its repr."""

    servers: tuple[str, ...]
    streams: StreamSettings = StreamSettings()
    topics: tuple[tuple[str, StreamSettings], ...] = ()  # per-topic overrides
    lease: float = 10.0
    ack_wait: float = 30.0
    max_deliver: int = -1
    max_ack_pending: int = 1000
    fetch_batch: int = 256
    name: str = "tidings"
    connect_timeout: float = 5.0
    creds: str | None = None
    nkey: str | None = None
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None

    def stream(self, topic: str) -> StreamSettings:
        """The stream settings for ``topic``: its overrides, else the URL's."""
        for name, settings in self.topics:
            if name == topic:
                return settings
        return self.streams

    def server_urls(self) -> list[str]:
        scheme = "tls" if self.tls else "nats"
        return [f"{scheme}://{host}" for host in self.servers]

    def redacted_url(self) -> str:
        """The URL this config stands for, without secrets."""
        user = ""
        if self.user is not None:
            user = quote(self.user, safe="") + (":***" if self.password is not None else "") + "@"
        elif self.token is not None:
            user = "***@"
        defaults = NatsConfig(servers=self.servers)
        query = [
            f"{name}={quote(str(getattr(self, name)), safe='/:')}"
            for name in sorted(_OPTIONS - {"token", "user", "password", *_STREAM_OPTIONS})
            if getattr(self, name) != getattr(defaults, name)
        ]
        query += _stream_query("", self.streams, StreamSettings())
        for topic, settings in self.topics:
            query += _stream_query(f"topic.{topic}.", settings, self.streams)
        return f"nats://{user}{','.join(self.servers)}" + ("?" + "&".join(query) if query else "")


def _stream_query(prefix: str, settings: StreamSettings, defaults: StreamSettings) -> list[str]:
    return [
        f"{prefix}{name}={getattr(settings, name)}"
        for name in _STREAM_OPTIONS
        if getattr(settings, name) != getattr(defaults, name)
    ]


def _fail(option: str, value: str, why: str, example: str) -> ConfigError:
    return ConfigError(f"option {option}={value!r} in the nats:// URL {why}; e.g. {example}")


def parse_duration(text: str, option: str = "duration") -> float:
    """Seconds in ``text``: a number of seconds, or a number with ms|s|m|h|d."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise _fail(option, text, "is not a duration", f"{option}=30s (or 500ms, 5m, 2h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _int(raw: str | None, option: str, default: int, low: int, high: int | None = None) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _fail(option, raw, "is not an integer", f"{option}={max(low, 1)}") from None
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise _fail(option, raw, f"must be {bounds}", f"{option}={max(low, 1)}")
    return value


def _seconds(raw: str | None, option: str, default: float) -> float:
    if raw is None:
        return default
    value = parse_duration(raw, option)
    if value <= 0:
        raise _fail(option, raw, "must be more than 0", f"{option}=30s")
    return value


def _size(raw: str, option: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(b|kb|mb|gb|tb)?", raw.strip().lower())
    if match is None or int(match.group(1)) <= 0:
        raise _fail(option, raw, "is not a size in bytes", f"{option}=10GB (or 500MB, 1048576)")
    scale = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
    return int(match.group(1)) * scale[match.group(2) or "b"]


def _stream_settings(query: dict[str, str], prefix: str, base: StreamSettings) -> StreamSettings:
    def get(name: str) -> str | None:
        return query.get(prefix + name)

    storage = get("storage")
    if storage is not None and storage.lower() not in ("file", "memory"):
        raise _fail(prefix + "storage", storage, "must be file or memory", "storage=file")
    max_age = get("max_age")
    max_bytes = get("max_bytes")
    return StreamSettings(
        partitions=_int(get("partitions"), prefix + "partitions", base.partitions, 1, 4096),
        replicas=_int(get("replicas"), prefix + "replicas", base.replicas, 1, 5),
        storage="memory" if (storage or base.storage).lower() == "memory" else "file",
        max_age=base.max_age if max_age is None else _seconds(max_age, prefix + "max_age", 0),
        max_bytes=base.max_bytes if max_bytes is None else _size(max_bytes, prefix + "max_bytes"),
        duplicate_window=_seconds(
            get("duplicate_window"), prefix + "duplicate_window", base.duplicate_window
        ),
    )


def _file(query: dict[str, str], option: str, example: str) -> str | None:
    value = query.get(option)
    if value is None:
        return None
    if not os.path.isfile(value):
        raise _fail(option, value, "names no file", f"{option}={example}")
    return value


def _per_topic(query: dict[str, str]) -> dict[str, dict[str, str]]:
    """Take the ``topic.<topic>.<option>`` options out of ``query``, by topic."""
    per_topic: dict[str, dict[str, str]] = {}
    for option in [k for k in query if k.startswith("topic.")]:
        topic, _, name = option[len("topic.") :].rpartition(".")
        if not topic or name not in _STREAM_OPTIONS:
            raise _fail(
                option,
                query[option],
                f"is not topic.<topic>.<option> with an option among {', '.join(_STREAM_OPTIONS)}",
                "topic.audit.max_age=30d",
            )
        per_topic.setdefault(topic, {})[name] = query.pop(option)
    return per_topic


def parse_nats_url(url: str) -> NatsConfig:
    """Parse and validate a ``nats://`` URL; raise ConfigError naming what is wrong."""
    parts = split_broker_url(
        url,
        scheme="nats",
        label="NATS",
        server="server",
        default_port=DEFAULT_PORT,
        example=EXAMPLE,
        secrets=("password", "token"),
    )
    userinfo, query = parts.userinfo, dict(parts.query)
    per_topic = _per_topic(query)
    unknown = set(query) - _OPTIONS
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(unknown))} in the nats:// URL; "
            f"known: {', '.join(sorted(_OPTIONS))}, and topic.<topic>.<option>; e.g. {EXAMPLE}"
        )
    streams = _stream_settings(query, "", StreamSettings())
    topics = tuple(
        (
            topic,
            _stream_settings(
                {f"topic.{topic}.{k}": v for k, v in options.items()}, f"topic.{topic}.", streams
            ),
        )
        for topic, options in sorted(per_topic.items())
    )
    user, password, token = _credentials(userinfo, query)
    tls_raw = query.get("tls")
    if tls_raw is not None and tls_raw.lower() not in ("true", "false", "1", "0"):
        raise _fail("tls", tls_raw, "must be true or false", "tls=true")
    cfg = NatsConfig(
        servers=parts.hosts,
        streams=streams,
        topics=topics,
        lease=_seconds(query.get("lease"), "lease", 10.0),
        ack_wait=_seconds(query.get("ack_wait"), "ack_wait", 30.0),
        max_deliver=_int(query.get("max_deliver"), "max_deliver", -1, -1),
        max_ack_pending=_int(query.get("max_ack_pending"), "max_ack_pending", 1000, 1),
        fetch_batch=_int(query.get("fetch_batch"), "fetch_batch", 256, 1, 100_000),
        name=query.get("name") or "tidings",
        connect_timeout=_seconds(query.get("connect_timeout"), "connect_timeout", 5.0),
        creds=_file(query, "creds", "/etc/nats/app.creds"),
        nkey=_file(query, "nkey", "/etc/nats/app.nk"),
        token=token,
        user=user,
        password=password,
        tls=(tls_raw or "").lower() in ("true", "1"),
        tls_ca=_file(query, "tls_ca", "/etc/nats/ca.pem"),
        tls_cert=_file(query, "tls_cert", "/etc/nats/client.pem"),
        tls_key=_file(query, "tls_key", "/etc/nats/client.key"),
        tls_hostname=query.get("tls_hostname"),
    )
    return _check(cfg)


def _credentials(
    userinfo: str | None, query: dict[str, str]
) -> tuple[str | None, str | None, str | None]:
    """(user, password, token): from ``user:password@`` or ``token@`` in the URL, else
    from the query."""
    user, password, token = query.get("user"), query.get("password"), query.get("token")
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        if colon:
            user, password = unquote(name), unquote(secret)
        else:
            token = unquote(name)
    return user, password, token


def _check(cfg: NatsConfig) -> NatsConfig:
    if cfg.max_deliver == 0:
        raise _fail("max_deliver", "0", "must be -1 (unlimited) or >= 1", "max_deliver=-1")
    if (user_set := cfg.user is not None) != (cfg.password is not None):
        raise ConfigError(
            "user and password go together; e.g. nats://app:secret@127.0.0.1:4222 "
            f"(got {'a user' if user_set else 'a password'} alone)"
        )
    ways = [w for w in ("creds", "nkey", "token", "user") if getattr(cfg, w) is not None]
    if len(ways) > 1:
        raise ConfigError(
            f"the nats:// URL gives {' and '.join(ways)}: choose one way to authenticate "
            "(creds=, nkey=, token= or user:password@); e.g. nats://app:secret@127.0.0.1:4222 "
            "or nats://127.0.0.1:4222?creds=/etc/nats/app.creds"
        )
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError(
            "tls_cert and tls_key go together (a client certificate and its key); e.g. "
            "tls_cert=/etc/nats/client.pem&tls_key=/etc/nats/client.key"
        )
    if any(v is not None for v in (cfg.tls_ca, cfg.tls_cert, cfg.tls_hostname)):
        cfg = replace(cfg, tls=True)
    if cfg.ack_wait <= cfg.lease * 2 / 3:
        raise ConfigError(
            f"ack_wait={cfg.ack_wait:g}s must be longer than two thirds of lease={cfg.lease:g}s: "
            "a member's heartbeat marks slow events as in progress before the server would "
            "redeliver them; e.g. ack_wait=30s&lease=10s"
        )
    return cfg
