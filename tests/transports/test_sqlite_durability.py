"""A publisher SIGKILLed mid-stream loses nothing it had acknowledged, and leaves a
log that is whole: every acknowledged id present once, offsets without gaps."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tidings.codec import decode
from tidings.transports.sqlite import SQLiteTransport

pytestmark = pytest.mark.integration

_PUBLISHER = textwrap.dedent(
    """
    import asyncio, sys
    from tidings import Tidings

    async def main(url):
        app = Tidings(url, service="publisher")
        async with app:
            await app.transport.create_topic("t", 4)

            async def one(task):
                for n in range(100_000):
                    event = await app.publish(
                        "t", {"task": task, "n": n}, type="thing.happened", subject=f"k{n % 50}"
                    )
                    sys.stdout.write(event.id + "\\n")  # written only once acknowledged
                    sys.stdout.flush()

            await asyncio.gather(*(one(t) for t in range(20)))

    asyncio.run(main(sys.argv[1]))
    """
)


def _publish_then_kill(url: str) -> list[str]:
    """Run the publisher until 3000 acknowledgements, SIGKILL it; the acknowledged ids."""
    proc = subprocess.Popen([sys.executable, "-c", _PUBLISHER, url], stdout=subprocess.PIPE)
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(acked) < 3000 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.decode().strip())
        assert len(acked) >= 3000, f"the publisher acknowledged only {len(acked)} events"
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of group commits
        # Acknowledgements written before the kill and not read yet count too.
        acked += proc.stdout.read().decode().split()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


async def test_a_killed_publisher_loses_no_acknowledged_event(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    acked = _publish_then_kill(url)
    with sqlite3.connect(tmp_path / "events.db") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    log = SQLiteTransport(url)
    await log.start()
    try:
        [info] = await log.topics()
        stored: list[str] = []
        for p in info.partitions:
            records = await log.read("t", p.partition, 0, p.end + 1)
            assert [r.offset for r in records] == list(range(p.end)), "a gap in the offsets"
            stored += [decode(r.value).id for r in records]
    finally:
        await log.close()
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events were lost"
    # What was in flight when it died may or may not have landed; nothing else did.
    assert len(stored) - len(acked) <= 20
