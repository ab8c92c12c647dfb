"""``kafka://`` URLs: parsed and validated into a :class:`KafkaConfig`, then mapped to
librdkafka settings for the producer, the consumers and the admin client.

    kafka://[user:password@]host:port[,host:port][?option=value&...]

Every refusal is a :class:`~tidings.errors.ConfigError` naming the option and showing a
valid example. No network access happens here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, unquote

from tidings.errors import ConfigError
from tidings.transports._broker_url import split_broker_url
from tidings.transports.kafka.logs import ClientLog

__all__ = ["KafkaConfig", "parse_kafka_url"]

Format = Literal["binary", "structured"]

EXAMPLE = (
    "kafka://broker1:9092,broker2:9092?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512"
)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# acks=0 is refused: append must return each record's offset, which needs an answer.
ACKS = ("all", "-1", "1")
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
FORMATS = ("binary", "structured")
DEFAULT_PORT = 9092
# ``producer.<name>=`` / ``consumer.<name>=`` pass a librdkafka property through, except
# these, which carry tidings' guarantees (ordering, commits after handling, identity).
_OWNED = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "enable.idempotence",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "auto.offset.reset",
        "enable.partition.eof",
        "partitioner",
        "on_delivery",
        "error_cb",
        "logger",  # librdkafka's log goes to Python logging (tidings.transports.kafka.logs)
    }
)
_OPTIONS = frozenset(
    {
        "security_protocol",
        "sasl_mechanism",
        "sasl_username",
        "sasl_password",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "client_id",
        "acks",
        "compression",
        "linger_ms",
        "partitions",
        "replication_factor",
        "format",
        "fetch_wait_ms",
        "session_timeout_ms",
        "connect_timeout_ms",
    }
)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """A validated ``kafka://`` URL. The password never appears in its repr."""

    bootstrap: tuple[str, ...]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "tidings"
    acks: str = "all"
    compression: str = "none"
    # Kafka's and librdkafka's default is 5 ms. At tens of events per second per
    # partition, each record then waits out the whole of it; 2 ms cut the publish ->
    # handler p50 by about 2 ms and cost no throughput (decision 0009).
    linger_ms: int = 2
    partitions: int = 8  # for topics this transport creates
    replication_factor: int = -1  # -1: the broker's default.replication.factor
    format: Format = "binary"
    # How long the broker may hold a fetch with no data. Apache Kafka answers as soon as
    # data arrives, so this only costs idle round trips; Tansu waits it out every time.
    fetch_wait_ms: int = 100
    # Kafka's default before 3.0 (librdkafka's is 45 s). Tansu holds every JoinGroup
    # for half of it (45 s: 23 s joins) and Apache Kafka waits that long for a member
    # that died without leaving before a rebalance can end (decision 0011).
    session_timeout_ms: int = 10_000
    # How long start() waits for a first answer of a broker before it gives up with what
    # to check (address, advertised listener, TLS, SASL); librdkafka itself would try
    # for ever, and each admin request waits 30 s.
    connect_timeout_ms: int = 5000
    # librdkafka properties passed through as given (``producer.<name>=value``).
    producer_extra: tuple[tuple[str, str], ...] = ()
    consumer_extra: tuple[tuple[str, str], ...] = ()

    @property
    def idempotent(self) -> bool:
        # librdkafka's idempotent producer requires acks=all.
        return self.acks == "all"

    def redacted_url(self) -> str:
        """The URL this config stands for, with the password replaced by ``***``."""
        user = ""
        if self.sasl_username is not None:
            user = quote(self.sasl_username, safe="") + (":***" if self.sasl_password else "") + "@"
        defaults = KafkaConfig(bootstrap=self.bootstrap)
        query = [
            f"{name}={getattr(self, name)}"
            for name in sorted(_OPTIONS - {"sasl_username", "sasl_password"})
            if getattr(self, name) != getattr(defaults, name)
        ]
        query += [f"producer.{k}={v}" for k, v in self.producer_extra]
        query += [f"consumer.{k}={v}" for k, v in self.consumer_extra]
        return f"kafka://{user}{','.join(self.bootstrap)}" + (
            "?" + "&".join(query) if query else ""
        )

    def common(self) -> dict[str, Any]:
        """Settings shared by every librdkafka client: brokers, identity, security, and
        its own :class:`~tidings.transports.kafka.logs.ClientLog` (librdkafka's log into
        Python logging, not stderr)."""
        conf: dict[str, Any] = {
            "logger": ClientLog(),
            "bootstrap.servers": ",".join(self.bootstrap),
            "client.id": self.client_id,
            "security.protocol": self.security_protocol.lower(),
        }
        if self.sasl_mechanism is not None:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password
        for option, key in (
            ("ssl_cafile", "ssl.ca.location"),
            ("ssl_certfile", "ssl.certificate.location"),
            ("ssl_keyfile", "ssl.key.location"),
        ):
            value = getattr(self, option)
            if value is not None:
                conf[key] = value
        return conf

    def producer(self) -> dict[str, Any]:
        """librdkafka producer settings: idempotent (with acks=all), our partitioner."""
        return {
            **self.common(),
            "acks": self.acks,
            "enable.idempotence": self.idempotent,
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
            **dict(self.producer_extra),
        }

    def consumer(self, group: str, start_from: str) -> dict[str, Any]:
        """librdkafka settings of one group member: partitions given out topic by topic
        (``range``, decision 0011), commits only on request, never past what the
        application handled."""
        return {
            **self.common(),
            "group.id": group,
            "partition.assignment.strategy": "range",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": start_from,
            "fetch.wait.max.ms": self.fetch_wait_ms,
            "session.timeout.ms": self.session_timeout_ms,
            # librdkafka's default heartbeat (3 s) must stay below the session timeout.
            "heartbeat.interval.ms": min(3000, max(100, self.session_timeout_ms // 3)),
            "enable.partition.eof": False,
            **dict(self.consumer_extra),
        }

    def reader(self) -> dict[str, Any]:
        """Settings of a consumer used outside any group (read, offsets_for_time)."""
        return {
            **self.common(),
            "group.id": "tidings-reader",  # librdkafka wants one; assign() never joins it
            "enable.auto.commit": False,
            "fetch.wait.max.ms": self.fetch_wait_ms,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # an offset the log no longer has: its start
        }

    def admin(self) -> dict[str, Any]:
        return self.common()


def _fail(option: str, value: str, why: str, example: str) -> ConfigError:
    return ConfigError(f"option {option}={value!r} in the kafka:// URL {why}; e.g. {example}")


def _int(query: dict[str, str], name: str, default: int, low: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _fail(name, raw, "is not an integer", f"{name}={max(low, 1)}") from None
    if value < low and not (name == "replication_factor" and value == -1):
        raise _fail(name, raw, f"must be >= {low}", f"{name}={max(low, 1)}")
    return value


def _choice(query: dict[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = query.get(name)
    if raw is None:
        return default
    for choice in allowed:
        if raw.lower() == choice.lower():
            return choice
    raise _fail(name, raw, f"must be one of {', '.join(allowed)}", f"{name}={allowed[0]}")


def parse_kafka_url(url: str) -> KafkaConfig:
    """Parse and validate a ``kafka://`` URL; raise ConfigError naming what is wrong."""
    parts = split_broker_url(
        url,
        scheme="kafka",
        label="Kafka",
        server="broker",
        default_port=DEFAULT_PORT,
        example=EXAMPLE,
        secrets=("sasl_password",),
    )
    userinfo, query = parts.userinfo, dict(parts.query)
    extra = {
        "producer": _passthrough(query, "producer"),
        "consumer": _passthrough(query, "consumer"),
    }
    unknown = set(query) - _OPTIONS
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(unknown))} in the kafka:// URL; "
            f"known: {', '.join(sorted(_OPTIONS))}, and producer.<librdkafka property> or "
            f"consumer.<librdkafka property>; e.g. {EXAMPLE}"
        )
    user, password = query.get("sasl_username"), query.get("sasl_password")
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        user = unquote(name) or user
        password = unquote(secret) if colon else password
    cfg = KafkaConfig(
        bootstrap=parts.hosts,
        sasl_username=user,
        sasl_password=password,
        client_id=query.get("client_id") or "tidings",
        acks=_choice(query, "acks", "all", ACKS).replace("-1", "all"),
        compression=_choice(query, "compression", "none", COMPRESSIONS),
        linger_ms=_int(query, "linger_ms", 2, 0),
        partitions=_int(query, "partitions", 8, 1),
        replication_factor=_int(query, "replication_factor", -1, 1),
        format="structured"
        if _choice(query, "format", "binary", FORMATS) == "structured"
        else "binary",
        fetch_wait_ms=_int(query, "fetch_wait_ms", 100, 0),
        session_timeout_ms=_int(query, "session_timeout_ms", 10_000, 1000),
        connect_timeout_ms=_int(query, "connect_timeout_ms", 5000, 100),
        producer_extra=extra["producer"],
        consumer_extra=extra["consumer"],
    )
    return _security(cfg, query)


def _passthrough(query: dict[str, str], client: str) -> tuple[tuple[str, str], ...]:
    """Take the ``<client>.<property>`` options out of ``query``, checked."""
    out = []
    for option in sorted(k for k in query if k.startswith(client + ".")):
        name, value = option[len(client) + 1 :], query.pop(option)
        if not name:
            raise _fail(option, value, "names no librdkafka property", f"{client}.linger.ms=10")
        if name in _OWNED:
            raise _fail(
                option,
                value,
                "sets a property tidings owns (it carries ordering, commits after handling "
                "or the client's identity); remove it",
                f"{client}.socket.keepalive.enable=true",
            )
        out.append((name, value))
    return tuple(out)


def _security(cfg: KafkaConfig, query: dict[str, str]) -> KafkaConfig:
    sasl = cfg.sasl_username is not None or cfg.sasl_password is not None
    # Credentials without a protocol get SASL over TLS: never send a password in clear
    # unless asked to with security_protocol=SASL_PLAINTEXT.
    protocol = _choice(
        query, "security_protocol", "SASL_SSL" if sasl else "PLAINTEXT", SECURITY_PROTOCOLS
    )
    mechanism = query.get("sasl_mechanism")
    if protocol.startswith("SASL"):
        mechanism = _choice(query, "sasl_mechanism", "PLAIN", SASL_MECHANISMS)
        if cfg.sasl_username is None or cfg.sasl_password is None:
            raise ConfigError(
                f"security_protocol={protocol} needs a user name and a password; e.g. "
                f"kafka://user:password@host:9092?security_protocol={protocol} "
                "(or sasl_username=...&sasl_password=... in the query)"
            )
    elif sasl or mechanism is not None:
        raise _fail(
            "security_protocol",
            protocol,
            "does not use SASL, yet SASL credentials or a mechanism were given",
            "security_protocol=SASL_SSL",
        )
    files = {}
    for option in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = query.get(option)
        if value is None:
            continue
        if not protocol.endswith("SSL"):
            raise _fail(option, value, f"needs TLS, not security_protocol={protocol}",
                        "security_protocol=SSL&" + option + "=/etc/kafka/ca.pem")  # fmt: skip
        if not os.path.isfile(value):
            raise _fail(option, value, "names no file", option + "=/etc/kafka/ca.pem")
        files[option] = value
    if ("ssl_certfile" in files) != ("ssl_keyfile" in files):
        raise ConfigError(
            "ssl_certfile and ssl_keyfile go together (a client certificate and its key); "
            "e.g. ssl_certfile=/etc/kafka/client.pem&ssl_keyfile=/etc/kafka/client.key"
        )
    return replace(
        cfg,
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        ssl_cafile=files.get("ssl_cafile"),
        ssl_certfile=files.get("ssl_certfile"),
        ssl_keyfile=files.get("ssl_keyfile"),
    )
