"""The Kafka adapter with no broker behind its URL: librdkafka's own log goes into
Python logging (``tidings.kafka.librdkafka``), never to stderr, and a start that no
broker answers fails within a bound, saying what to check (docs/kafka.md, "No broker").
No broker is needed: the ports have nothing listening."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from devservers._process import free_port, free_ports
from tidings.errors import TransportError
from tidings.transports.kafka import KafkaTransport, parse_kafka_url
from tidings.transports.kafka.admin import Admin
from tidings.transports.kafka.errors import unreachable
from tidings.transports.kafka.logs import LOGGER, MAX_DISTINCT, ClientLog, Deduplicated

pytest.importorskip("confluent_kafka")

# Generous for a loaded 2-core machine: the start gives up after connect_timeout_ms.
BOUND = 20.0


def librdkafka_lines(stderr: str) -> list[str]:
    """Lines librdkafka writes itself (``%3|1796616906.492|FAIL|tidings#producer-1| ...``)."""
    return [line for line in stderr.splitlines() if line.startswith("%") and "|" in line]


def test_every_client_logs_into_the_python_logger_not_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # The producer, the admin client, the reader and a group member, made from the
    # settings the adapter makes them from; each has its own port, so that their
    # messages are distinct (a message is logged once per REPEAT_AFTER).
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    kinds = ("producer", "admin", "reader", "member")
    ports = dict(zip(kinds, free_ports(len(kinds)), strict=True))
    cfg = {kind: parse_kafka_url(f"kafka://127.0.0.1:{port}") for kind, port in ports.items()}
    clients: dict[str, Any] = {
        "producer": Producer(cfg["producer"].producer()),
        "admin": AdminClient(cfg["admin"].admin()),
        "reader": Consumer(cfg["reader"].reader()),
        "member": Consumer(cfg["member"].consumer("g", "earliest")),
    }
    try:
        for client in clients.values():
            with pytest.raises(Exception, match=r"Broker transport failure|timed out"):
                client.list_topics(timeout=1.0)
            client.poll(0.1)  # confluent-kafka hands a client's log over when polled
    finally:
        for kind in ("reader", "member"):
            clients[kind].close()
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    for kind, port in ports.items():
        mine = [m for m in messages if f"127.0.0.1:{port} failed: Connection refused" in m]
        assert mine, (kind, messages)
        assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == LOGGER)
    assert any("librdkafka error FAIL [tidings#producer-" in m for m in messages)
    assert any("[tidings#consumer-" in m for m in messages)
    assert librdkafka_lines(capfd.readouterr().err) == []


def test_a_message_is_logged_once_per_window_with_how_often_it_came() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.kafka.librdkafka.window")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    now = [0.0]
    sink = Deduplicated(logger, repeat_after=60.0, clock=lambda: now[0])
    log = ClientLog(sink)
    line = "[thrd:b:1/bootstrap]: b:1/bootstrap: Connect failed (after {}ms in state CONNECT)"
    for ms in (0, 3, 12):  # equal but for the duration
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "tidings#producer-1", line.format(ms))
        now[0] += 1
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "tidings#consumer-2", line.format(5))
    assert [r.getMessage() for r in records] == [
        "librdkafka error FAIL [tidings#producer-1]: b:1/bootstrap: Connect failed "
        "(after 0ms in state CONNECT)"
    ]
    log.log(logging.WARNING, "%s [%s] %s", "SASL", "tidings#producer-1", "another")
    assert len(records) == 2
    assert records[1].levelno == logging.DEBUG
    now[0] = 61.0  # past the window: logged again, with the count of those held back
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "tidings#producer-1", line.format(7))
    assert records[2].getMessage().endswith("(and 3 more time(s) since it was last logged)")
    # the memory is bounded: past MAX_DISTINCT messages it starts afresh
    for i in range(MAX_DISTINCT):
        sink.emit(logging.INFO, "X", "c", f"distinct {i}")
    before = len(records)
    sink.emit(logging.INFO, "X", "c", "distinct 0")
    assert len(records) == before + 1
    # a logger not enabled for DEBUG costs nothing and remembers nothing
    logger.setLevel(logging.INFO)
    sink.emit(logging.INFO, "X", "c", "quiet")
    logger.setLevel(logging.DEBUG)
    sink.emit(logging.INFO, "X", "c", "quiet")
    assert records[-1].getMessage() == "librdkafka info X [c]: quiet"


def test_a_client_log_keeps_its_last_problem() -> None:
    sink = Deduplicated(logging.getLogger("tests.kafka.librdkafka.problem"))
    log = ClientLog(sink)
    log.log(logging.INFO, "%s [%s] %s", "INIT", "c", "[thrd:main]: starting")
    assert log.problem is None
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "c", "[thrd:x/bootstrap]: x: refused")
    log.log(logging.INFO, "%s [%s] %s", "INIT", "c", "later")
    assert log.problem == "x: refused"
    log.log(logging.WARNING, "plain %s", "words")  # another shape: kept whole
    assert log.problem == "plain words"
    assert ClientLog().sink.logger.name == LOGGER


def test_a_failing_log_line_is_dropped_not_raised_into_the_clients_poll() -> None:
    # What log() raised would come out of the client's poll, and a group member's
    # polling thread would end with it.
    class Broken(Deduplicated):
        def emit(self, level: int, facility: str, client: str, text: str) -> None:
            raise RuntimeError("a broken handler")

    log = ClientLog(Broken(logging.getLogger("tests.kafka.librdkafka.broken")))
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "c", "refused")
    log.log(logging.ERROR, "%s %s", "too few arguments for the format")
    assert log.problem == "refused"


def test_the_client_log_is_owned_and_the_connect_timeout_an_option() -> None:
    cfg = parse_kafka_url("kafka://h:1")
    assert cfg.connect_timeout_ms == 5000
    for conf in (cfg.producer(), cfg.admin(), cfg.reader(), cfg.consumer("g", "latest")):
        assert isinstance(conf["logger"], ClientLog)
    assert cfg.producer()["logger"] is not cfg.producer()["logger"]  # one per client
    cfg = parse_kafka_url("kafka://h:1?connect_timeout_ms=1500")
    assert cfg.connect_timeout_ms == 1500
    assert "connect_timeout_ms=1500" in cfg.redacted_url()
    from tidings.errors import ConfigError

    with pytest.raises(ConfigError, match=r"connect_timeout_ms='50'.*must be >= 100"):
        parse_kafka_url("kafka://h:1?connect_timeout_ms=50")
    with pytest.raises(ConfigError, match=r"connect_timeout_ms='soon'.*not an integer"):
        parse_kafka_url("kafka://h:1?connect_timeout_ms=soon")
    with pytest.raises(ConfigError, match=r"producer.logger.*tidings owns"):
        parse_kafka_url("kafka://h:1?producer.logger=x")


async def test_nothing_listening_is_a_transport_error_at_start_saying_what_to_check(
    capfd: pytest.CaptureFixture[str],
) -> None:
    address = f"127.0.0.1:{free_port()}"
    transport = KafkaTransport(f"kafka://{address}?connect_timeout_ms=1000")
    for _ in range(2):  # a failed start leaves nothing behind: trying again fails again
        began = time.monotonic()
        with pytest.raises(TransportError) as info:
            await asyncio.wait_for(transport.start(), BOUND)
        assert time.monotonic() - began < BOUND
        says = str(info.value)
        assert says.startswith(f"{transport.url}: no Kafka broker answered within 1s (")
        assert transport.url.startswith(f"kafka://{address}?")
        assert f"Connect to ipv4#{address} failed: Connection refused" in says
        for what in ("host and port", "advertised.listeners", "security_protocol", "SASL"):
            assert what in says
        assert transport._producer.native is None
        assert transport._admin.native is None
    with pytest.raises(TransportError, match="not started"):
        await transport.append("t", [(None, b"x")])
    assert librdkafka_lines(capfd.readouterr().err) == []


async def test_an_admin_request_hands_the_clients_log_over_even_when_it_fails() -> None:
    # confluent-kafka gives an admin client's log lines only when it is polled, which
    # nothing else does: each request polls it after, or its lines would pile up.
    admin = Admin(parse_kafka_url(f"kafka://127.0.0.1:{free_port()}"), "kafka://x")
    admin.open()
    try:
        assert admin.log is not None
        assert admin.log.problem is None
        with pytest.raises(TransportError, match="list topics: Failed to get metadata"):
            await admin._run(lambda: admin.started().list_topics(timeout=1.0), "list topics")
        assert admin.log.problem is not None
        assert "Connection refused" in admin.log.problem
    finally:
        admin.close()
    assert admin.native is None


def test_the_unreachable_message_says_what_was_met_and_what_to_check() -> None:
    without = unreachable(TimeoutError(), "kafka://b:9092", 2.5, None)
    assert str(without).startswith(
        "kafka://b:9092: no Kafka broker answered within 2.5s (no answer to a metadata "
        "request: no answer from the broker in time); check the host and port"
    )
    assert "librdkafka:" not in str(without)
    seen = unreachable(RuntimeError("x"), "kafka://b:9092", 5, "SSL handshake failed")
    assert "(no answer to a metadata request: x; librdkafka: SSL handshake failed)" in str(seen)
    assert "connect_timeout_ms=" in str(seen)


class _Assigning:
    """A librdkafka consumer in an assignment callback, as far as fix_start asks it:
    partition 0 was committed at 5, partition 1 never; partition 1 holds 2 to 4."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.assigned: list[tuple[str, int, int]] | None = None
        self.how = ""

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        from confluent_kafka import TopicPartition

        if self.fail:
            raise RuntimeError("KafkaError{code=_TIMED_OUT}")
        return [TopicPartition(tp.topic, tp.partition, 5 if tp.partition == 0 else -1001)
                for tp in partitions]  # fmt: skip

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        assert not cached  # the broker's now, not what a fetch last saw
        return {0: (0, 9), 1: (2, 4)}[tp.partition]

    def assign(self, partitions: list[Any]) -> None:
        self.assigned, self.how = [(tp.topic, tp.partition, tp.offset) for tp in partitions], "all"

    def incremental_assign(self, partitions: list[Any]) -> None:
        self.assign(partitions)
        self.how = "incremental"


@pytest.mark.parametrize(("start_from", "start"), [("latest", 4), ("earliest", 2)])
@pytest.mark.parametrize("eager", [True, False])
def test_a_new_group_is_assigned_and_given_its_start_where_it_never_committed(
    start_from: Any, start: int, eager: bool
) -> None:
    from confluent_kafka import TopicPartition

    from tidings.transports.kafka.start import fix_start

    consumer = _Assigning()
    tps = [TopicPartition("t", 0), TopicPartition("t", 1)]
    assert fix_start(consumer, tps, start_from, "g", eager=eager) == {("t", 1): start}
    assert consumer.assigned == [("t", 0, 5), ("t", 1, start)]  # its commit kept
    assert consumer.how == ("all" if eager else "incremental")
    assert fix_start(consumer, [], start_from, "g", eager=eager) == {}  # librdkafka does it


def test_a_new_group_that_cannot_ask_the_broker_is_assigned_as_usual(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from confluent_kafka import TopicPartition

    from tidings.transports.kafka.start import fix_start

    consumer = _Assigning(fail=True)
    assert fix_start(consumer, [TopicPartition("t", 0)], "latest", "g", eager=True) == {}
    assert consumer.assigned is None  # left to librdkafka, which looks the end up later
    assert "group 'g': could not fix where it starts (latest of [('t', 0)])" in caplog.text
    assert "_TIMED_OUT" in caplog.text
