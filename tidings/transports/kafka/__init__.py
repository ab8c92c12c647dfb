"""``kafka://``: Apache Kafka (or a compatible broker) through confluent-kafka.

One module per concept; what other code imports is re-exported here.
"""

from __future__ import annotations

from tidings.transports.kafka.config import KafkaConfig, parse_kafka_url
from tidings.transports.kafka.consumer import KafkaConsumer
from tidings.transports.kafka.transport import SETTLE_QUIET, KafkaTransport

__all__ = ["SETTLE_QUIET", "KafkaConfig", "KafkaConsumer", "KafkaTransport", "parse_kafka_url"]
