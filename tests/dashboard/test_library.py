"""The library functions the dashboard added for the CLI and itself to share."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.dashboard.conftest import Seeded
from tidings import Tidings, admin, dead_letters
from tidings.errors import ConfigError


async def test_topic_rate_counts_the_events_appended_in_the_window(seeded: Seeded) -> None:
    async with Tidings(seeded.url, service="t") as app:
        info = await admin.topic_info(app.transport, "notes")
        assert info.events == 7
        assert await admin.topic_rate(app.transport, info, window_s=86_400) == 7 / 86_400
        later = app.transport.clock.time_ms()
        await app.publish("notes", {"n": 1}, type="note.added", subject="x")
        info = await admin.topic_info(app.transport, "notes")
        since = (app.transport.clock.time_ms() - later) / 1000 + 1e-3
        assert await admin.topic_rate(app.transport, info, window_s=since) == pytest.approx(
            1 / since
        )


def test_the_dead_letter_filter_names_the_wrong_word() -> None:
    now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    with pytest.raises(ConfigError, match=r"^since: 'soon' is not a time"):
        admin.dead_letter_filter(now, since="soon", names=("since", "until"))
    with pytest.raises(ConfigError, match="--since 1h is after --until 2h"):
        admin.dead_letter_filter(now, since="1h", until="2h")
    where = admin.dead_letter_filter(now, types=["a.b", ""], since="1h")
    assert where.types == frozenset({"a.b"})
    assert where.since == now.timestamp() - 3600


def test_size_text_is_what_tidings_topics_prints() -> None:
    assert [admin.size_text(n) for n in (512, 1536, 3 * 1024**2, 5 * 1024**3)] == [
        "512 B", "1.5 KiB", "3.0 MiB", "5.0 GiB",
    ]  # fmt: skip


async def test_recorded_actions_come_back_newest_first_by_group(seeded: Seeded) -> None:
    async with Tidings(seeded.url, service="t") as app:
        assert await admin.recent_actions(app.transport) == []
        await admin.record_action(app, "ada", "purge", "mail", 2, "type a.b")
        await admin.record_action(app, "bo", "reset", "audit", 4)
        actions = await admin.recent_actions(app.transport)
        assert [(a.who, a.action, a.target, a.count) for a in actions] == [
            ("bo", "reset", "audit", 4), ("ada", "purge", "mail", 2),
        ]  # fmt: skip
        [mail] = await admin.recent_actions(app.transport, target="mail")
        assert mail.detail == "type a.b"
        assert mail.event_id is not None


async def test_an_entry_is_read_in_full_from_its_place(seeded: Seeded) -> None:
    async with Tidings(seeded.url, service="t") as app:
        slim = dead_letters.DeadLetterLog(app.transport, "mail", values=False)
        await slim.refresh()
        entry = next(iter(slim.entries.values()))
        assert entry.value == b""
        assert entry.traceback is None
        full = await dead_letters.read_entry(app.transport, entry)
        assert full.entry == entry.entry
        assert full.value
        assert full.traceback is not None
        assert "failed" in full.traceback
        waiting = slim.waiting()
        assert sum(waiting.values()) == 4
        before = slim.changes
        await dead_letters.purge(
            app.transport, "mail", dead_letters.Filter(ids=frozenset({entry.entry}))
        )
        await slim.refresh()
        assert slim.changes > before
        assert sum(slim.waiting().values()) == 3
