"""The NATS JetStream transport against a real nats-server: the conformance suite,
and what is particular to JetStream (docs/nats.md)."""

from __future__ import annotations

import pytest

from tidings.partitioning import partition_for
from tidings.testing import TransportConformance
from tidings.transport import Transport

pytestmark = pytest.mark.integration


class TestNatsTransport(TransportConformance):
    @pytest.fixture
    def url(self, nats_url: str) -> str:
        return nats_url + "&partitions=4"

    async def test_topics_report_end_offsets_and_sizes(self, transport: Transport) -> None:
        # NATS counts a stream's stored bytes with each message's subject, headers and
        # framing, so a topic's size is more than its payloads.
        await self._fill(transport, 40)
        [info] = [t for t in await transport.topics() if t.name == "t"]
        assert info.events == 40
        assert [p.events for p in info.partitions] == [
            len([i for i in range(40) if partition_for(f"k{i % 10}", 4) == p]) for p in range(4)
        ]
        assert info.size > sum(len(f"v{i}") for i in range(40))
        assert {p.end for p in info.partitions} == {40}  # the stream's last sequence
