"""The transport conformance suite (tidings.testing) on every transport."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tidings.testing import FaultPlan, FaultyTransport, TransportConformance
from tidings.transport import Transport
from tidings.transports import open_transport


class TestMemoryTransport(TransportConformance):
    @pytest.fixture
    def url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex}"


class TestSQLiteTransport(TransportConformance):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        # A short lease keeps rebalancing tests quick (heartbeat every lease/3).
        return f"sqlite:///{tmp_path / 'events.db'}?lease=1"


class TestFaultyTransportWithoutFaults(TransportConformance):
    """The fault-injection wrapper, injecting nothing, is a transport like any other:
    what it delegates keeps every promise (tests/test_faults.py tests its faults)."""

    @pytest.fixture
    def url(self) -> str:
        return f"memory://conformance-faulty-{uuid.uuid4().hex}"

    def open(self, url: str) -> Transport:
        return FaultyTransport(open_transport(url), seed=0, plan=FaultPlan.none())
