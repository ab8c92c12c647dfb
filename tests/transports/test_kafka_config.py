"""kafka:// URL parsing and its librdkafka settings (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.errors import ConfigError
from tidings.transports.kafka import KafkaConfig, parse_kafka_url


def test_defaults_are_safe_for_production() -> None:
    cfg = parse_kafka_url("kafka://broker:9092")
    assert cfg.bootstrap == ("broker:9092",)
    producer = cfg.producer()
    assert producer["acks"] == "all"
    assert producer["enable.idempotence"] is True
    consumer = cfg.consumer("email", "earliest")
    # Topic by topic, so a group's topic and its retry topic are each shared evenly
    # among the members of one membership (decision 0011).
    assert consumer["partition.assignment.strategy"] == "range"
    # A join on Tansu takes half the session; Kafka's pre-3.0 default (decision 0011).
    assert consumer["session.timeout.ms"] == 10_000
    assert consumer["heartbeat.interval.ms"] == 3000
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["auto.offset.reset"] == "earliest"
    assert consumer["group.id"] == "email"
    assert cfg.format == "binary"
    assert cfg.replication_factor == -1


def test_several_brokers_and_a_default_port() -> None:
    cfg = parse_kafka_url("kafka://a:9093,b,[::1]:9094")
    assert cfg.bootstrap == ("a:9093", "b:9092", "[::1]:9094")
    assert cfg.common()["bootstrap.servers"] == "a:9093,b:9092,[::1]:9094"


def test_options_map_to_librdkafka_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = parse_kafka_url(
        "kafka://h:1?client_id=svc&acks=1&compression=ZSTD&linger_ms=0&partitions=3"
        f"&replication_factor=3&format=structured&security_protocol=ssl&ssl_cafile={ca}"
    )
    assert cfg.partitions == 3
    assert cfg.replication_factor == 3
    assert cfg.format == "structured"
    p = cfg.producer()
    assert (p["client.id"], p["acks"], p["compression.type"], p["linger.ms"]) == (
        "svc", "1", "zstd", 0
    )  # fmt: skip
    assert p["enable.idempotence"] is False  # librdkafka's idempotence needs acks=all
    assert p["security.protocol"] == "ssl"
    assert p["ssl.ca.location"] == str(ca)


def test_userinfo_means_sasl_over_tls_and_the_password_stays_hidden() -> None:
    cfg = parse_kafka_url("kafka://alice:s%40cret@h:9092?sasl_mechanism=scram-sha-512")
    assert (cfg.sasl_username, cfg.sasl_password) == ("alice", "s@cret")
    assert cfg.security_protocol == "SASL_SSL"
    conf = cfg.admin()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.password"] == "s@cret"
    assert "s@cret" not in repr(cfg)
    assert "cret" not in cfg.redacted_url()
    assert cfg.redacted_url().startswith("kafka://alice:***@h:9092?")


def test_credentials_can_be_query_options() -> None:
    cfg = parse_kafka_url(
        "kafka://h?security_protocol=SASL_PLAINTEXT&sasl_username=u&sasl_password=p"
    )
    assert (cfg.security_protocol, cfg.sasl_mechanism) == ("SASL_PLAINTEXT", "PLAIN")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://", "names no broker"),
        ("kafka://h:9092/topic", "options go in the query"),
        ("kafka://h:notaport", "is not host:port"),
        ("kafka://h?partitons=3", "unknown option(s) partitons"),
        ("kafka://h?partitions=0", "partitions='0' in the kafka:// URL must be >= 1"),
        ("kafka://h?linger_ms=soon", "linger_ms='soon' in the kafka:// URL is not an integer"),
        ("kafka://h?acks=0", "acks='0' in the kafka:// URL must be one of all, -1, 1"),
        ("kafka://h?compression=brotli", "e.g. compression=none"),
        ("kafka://h?format=xml", "must be one of binary, structured"),
        ("kafka://h?security_protocol=TLS", "must be one of PLAINTEXT"),
        ("kafka://h?security_protocol=SASL_SSL", "needs a user name and a password"),
        ("kafka://u:p@h?security_protocol=PLAINTEXT", "does not use SASL"),
        ("kafka://u:p@h?sasl_mechanism=GSSAPI", "sasl_mechanism='GSSAPI'"),
        ("kafka://h?security_protocol=SSL&ssl_cafile=/no/such/file", "names no file"),
        ("kafka://h?ssl_cafile=/etc/hosts", "needs TLS"),
        ("kafka://h?replication_factor=0", "must be >= 1"),
    ],
)
def test_bad_urls_name_the_option_and_show_an_example(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_kafka_url(url)
    assert message in str(info.value)
    assert "e.g." in str(info.value)


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        parse_kafka_url(f"kafka://h?security_protocol=SSL&ssl_certfile={cert}")


def test_the_password_is_not_in_error_messages() -> None:
    with pytest.raises(ConfigError) as info:
        parse_kafka_url("kafka://u:hunter2@h:bad")
    assert "hunter2" not in str(info.value)


def test_config_is_frozen() -> None:
    cfg = KafkaConfig(bootstrap=("h:9092",))
    with pytest.raises(AttributeError):
        cfg.partitions = 2  # type: ignore[misc]


def test_open_transport_knows_kafka_and_hides_the_password() -> None:
    from tidings.transports import open_transport

    t = open_transport("kafka://u:secret@127.0.0.1:1?partitions=2")
    assert type(t).__name__ == "KafkaTransport"
    assert "secret" not in t.url
    with pytest.raises(ConfigError, match="partitons"):
        open_transport("kafka://h?partitons=2")


async def test_a_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tidings.transports.kafka import KafkaTransport

    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(ConfigError, match=r"install `tidings\[kafka\]`"):
        await KafkaTransport("kafka://127.0.0.1:1").start()


def test_librdkafka_properties_pass_through_per_client() -> None:
    cfg = parse_kafka_url(
        "kafka://h:1?producer.batch.num.messages=1&consumer.fetch.min.bytes=10&linger_ms=2"
    )
    assert cfg.producer()["batch.num.messages"] == "1"
    assert "batch.num.messages" not in cfg.consumer("g", "earliest")
    assert cfg.consumer("g", "earliest")["fetch.min.bytes"] == "10"
    assert cfg.producer()["linger.ms"] == 2
    assert "producer.batch.num.messages=1" in cfg.redacted_url()


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ("consumer.enable.auto.commit=true", "sets a property tidings owns"),
        ("producer.enable.idempotence=false", "sets a property tidings owns"),
        ("producer.=1", "names no librdkafka property"),
    ],
)
def test_passing_through_what_tidings_owns_is_refused(option: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        parse_kafka_url(f"kafka://h:1?{option}")
    assert option.split("=")[0] in str(info.value)


async def test_a_property_librdkafka_does_not_know_is_a_config_error_at_start() -> None:
    from tidings.transports.kafka import KafkaTransport

    transport = KafkaTransport("kafka://127.0.0.1:1?producer.no.such.thing=1")
    with pytest.raises(ConfigError, match=r'refused the producer settings.*"no.such.thing"'):
        await transport.start()


async def test_keep_unread_is_refused_with_the_reason() -> None:
    from tidings.transports.kafka import KafkaTransport

    with pytest.raises(ConfigError, match="keep_unread needs a log that deletes records itself"):
        await KafkaTransport("kafka://127.0.0.1:9").create_topic("audit", keep_unread=True)
