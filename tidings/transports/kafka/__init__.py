"""``kafka://``: Apache Kafka (or a compatible broker) through confluent-kafka
(librdkafka), driven by our own threads (decision 0005). One module per concept:

- :mod:`~tidings.transports.kafka.transport`: :class:`KafkaTransport`, which puts the
  others together;
- :mod:`~tidings.transports.kafka.config`: ``kafka://`` URLs, validated, as librdkafka
  settings;
- :mod:`~tidings.transports.kafka.producer`: appends (the idempotent producer);
- :mod:`~tidings.transports.kafka.admin`: topics, offsets and groups (``AdminClient``);
- :mod:`~tidings.transports.kafka.reader`: reads outside any group;
- :mod:`~tidings.transports.kafka.consumer`: :class:`KafkaConsumer`, a tidings group
  member, made of one :mod:`~tidings.transports.kafka.member` per topic, which use the
  transport only through :mod:`~tidings.transports.kafka.client`;
- :mod:`~tidings.transports.kafka.records`: librdkafka messages as Records;
- :mod:`~tidings.transports.kafka.errors`: native errors translated into tidings';
- :mod:`~tidings.transports.kafka.logs`: librdkafka's own log, into Python logging
  (``tidings.kafka.librdkafka``, at DEBUG, once per distinct message) instead of stderr.

What other code imports is re-exported here.
"""

from __future__ import annotations

from tidings.transports.kafka.admin import SETTLE_QUIET
from tidings.transports.kafka.config import KafkaConfig, parse_kafka_url
from tidings.transports.kafka.consumer import KafkaConsumer
from tidings.transports.kafka.transport import KafkaTransport

__all__ = ["SETTLE_QUIET", "KafkaConfig", "KafkaConsumer", "KafkaTransport", "parse_kafka_url"]
