"""The soak of issue 15 on the SQLite log (``tests/transports/soak.py`` has it all):
three groups of two worker processes each, a random worker SIGKILLed (and replaced)
every 0.5 s while 20,000 events of 50 keys flow, then a forced reset of one group to
the earliest offset through the CLI while events still flow. Nothing lost, per-key
order held, the reset group handled everything published before the reset again;
duplicates are counted and printed.

``TIDINGS_SOAK_SECONDS`` sets how long the kills go on (20 by default; the issue's
figure, 60, is what docs/reliability.md reports). The NATS and Kafka soaks are run by
``python -m tests.transports.soak --transport nats|kafka``, not by pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.transports import soak

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("TIDINGS_SOAK_SECONDS", "20"))


async def test_soak_kills_and_a_forced_reset_lose_nothing_and_keep_key_order(
    tmp_path: Path,
) -> None:
    plan = soak.Plan("sqlite", SECONDS, soak.KILL_EVERY["sqlite"])
    async with soak.open_log("sqlite", tmp_path) as url, soak.soak_on(url, tmp_path) as s:
        result = await soak.run(s, plan)
        assert not result.violations, "\n".join(
            [result.summary(), *result.violations, s.logs_tail()]
        )
    print("\n" + result.summary())
