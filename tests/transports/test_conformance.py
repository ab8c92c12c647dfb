"""The transport conformance suite (tidings.testing) on every transport."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tidings.testing import TransportConformance


class TestMemoryTransport(TransportConformance):
    @pytest.fixture
    def url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex}"


class TestSQLiteTransport(TransportConformance):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        # A short lease keeps rebalancing tests quick (heartbeat every lease/3).
        return f"sqlite:///{tmp_path / 'events.db'}?lease=1"
