"""``nats://host:port[,host:port][?options]``: NATS JetStream through ``nats-py``.

How the transport protocol maps onto JetStream (docs/nats.md has the whole story), and
where each part lives in this package:

- a **topic** is a stream, named after the topic with ``.`` written ``~`` (stream names
  cannot hold dots); its subjects are ``<stream>.<partition>.<event type>``, so a NATS
  client can subscribe to ``task-events.*.task.created`` (``streams``);
- a **partition** is the subject token after the stream name. A key's partition comes
  from ``tidings.partitioning`` (Kafka's murmur2), as on every transport. An **offset**
  is the stream sequence minus one: it grows in append order within a partition, but
  partitions share the stream's numbering, so offsets are not dense
  (``Capabilities.dense_offsets=False``); lag comes from the server's counts;
- an append is a JetStream publish with ``Nats-Msg-Id`` set to the event id, so a
  publish repeated within the stream's duplicate window (an outbox relay retrying) is
  stored once (``publish``); records are the CloudEvents structured-mode JSON the codec
  wrote, ``content-type: application/cloudevents+json`` (the NATS binding's content
  mode); reading also accepts binary mode (``ce-`` headers) from other producers
  (``records``);
- a **group** has one durable pull consumer per topic partition, ``<group>-<partition>``,
  shared by the group's members (``groups``); one member at a time owns a partition
  (``membership``), which keeps the partition's order; acks are explicit and sent
  when the worker commits (``consumer``); ``ack_wait`` and ``max_deliver`` are the
  URL's (``config``).

The connection and its JetStream requests are ``client``; native failures become
tidings errors in one function, ``errors.translate``; ``transport`` puts it together.
"""

from __future__ import annotations

from tidings.transports.nats.client import TIMEOUT, JetStreamClient
from tidings.transports.nats.config import NatsConfig, StreamSettings, parse_nats_url
from tidings.transports.nats.consumer import PULL_EXPIRES, NatsConsumer
from tidings.transports.nats.errors import NatsApiError
from tidings.transports.nats.groups import GroupClient
from tidings.transports.nats.records import KEY_HEADER
from tidings.transports.nats.streams import META_PARTITIONS, META_TOPIC, stream_name
from tidings.transports.nats.transport import MAX_PAYLOAD, NatsTransport

__all__ = [
    "KEY_HEADER",
    "MAX_PAYLOAD",
    "META_PARTITIONS",
    "META_TOPIC",
    "PULL_EXPIRES",
    "TIMEOUT",
    "GroupClient",
    "JetStreamClient",
    "NatsApiError",
    "NatsConfig",
    "NatsConsumer",
    "NatsTransport",
    "StreamSettings",
    "parse_nats_url",
    "stream_name",
]
