"""What a group member may use of the transport that made it, and nothing more.

:class:`~tidings.transports.kafka.consumer.KafkaConsumer` and its members get a
:class:`TransportClient` instead of the transport: the URL's settings, the two admin
requests they make (create their topics, wait for their group to settle), and the
registry of open consumers, whose records they share. The transport module imports
the consumer module; neither the consumer modules nor this one import the transport.
"""

from __future__ import annotations

import weakref
from typing import Any, Generic, TypeVar

from tidings.transport import Record
from tidings.transports.kafka.admin import Admin
from tidings.transports.kafka.config import KafkaConfig

__all__ = ["TransportClient"]

C = TypeVar("C")  # the consumers registered (KafkaConsumer)


class TransportClient(Generic[C]):
    """The consumers' side of one transport.

    - ``live``: the consumers open now, each added by its ``start`` and discarded by its
      ``close`` (the transport closes those left open, and moves their offsets);
    - ``shared``: records converted for one group, reused by the others
      (:func:`~tidings.transports.kafka.records.to_records`) while more than one is open.
    """

    __slots__ = ("_admin", "config", "live", "shared", "url")

    def __init__(self, config: KafkaConfig, url: str, admin: Admin) -> None:
        self.config = config
        self.url = url
        self._admin = admin
        self.live: weakref.WeakSet[C] = weakref.WeakSet()
        self.shared: dict[Any, Record] = {}

    async def create_topic(self, topic: str) -> None:
        """Create ``topic`` with the URL's defaults unless it exists (subscribing to a
        missing topic is an error in Kafka)."""
        await self._admin.create_topic(topic)

    async def settled(self, group: str, timeout: float) -> bool:
        """:meth:`Admin.settled <tidings.transports.kafka.admin.Admin.settled>`."""
        return await self._admin.settled(group, timeout)
