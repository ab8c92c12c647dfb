"""``tidings dlq`` and the DLQ column of ``tidings groups`` against a log (SQLite, Kafka,
NATS) that a real worker filled with dead letters: the commands run in this process
(``cli``, ``tidings_in_process``: thirty-odd Python starts per log cost minutes on a loaded
machine); the command-line errors, as real subprocesses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from pydantic import BaseModel

from tests.conftest import LOGS, log_url
from tests.test_cli import assert_one_error_line, tidings
from tests.test_cli import tidings_in_process as cli
from tidings import Tidings
from tidings.dead_letters import open_log
from tidings.envelope import new_id
from tidings.middleware import Retry
from tidings.testing import eventually, running


class Note(BaseModel):
    note_id: str
    n: int


@pytest.fixture(params=LOGS)
def url(request: pytest.FixtureRequest) -> str:
    return log_url(request, partitions=2)


@pytest.fixture
async def app(url: str) -> AsyncIterator[Tidings]:
    """Group ``mail`` dead-lettered 4 notes (n=0..3: TimeoutError for even n, OSError
    for odd n); group ``audit`` handled them all. Nothing runs afterwards."""
    app = Tidings(url, service="seed")
    app.event("note.added", subject="note_id")(Note)
    handled: list[str] = []

    @app.subscriber("notes", group="mail", retry=Retry(max_attempts=1))
    async def send(note: Note) -> None:
        raise (TimeoutError if note.n % 2 == 0 else OSError)(f"note {note.n} failed")

    @app.subscriber("notes", group="audit")
    async def record(note: Note) -> None:
        handled.append(note.note_id)

    async with app:
        await fail_four(app, handled, "req")
        yield app


async def fail_four(app: Tidings, handled: list[str], correlation_id: str) -> None:
    """Run ``app``'s workers until ``mail`` dead-lettered the 4 notes it publishes (with
    ``correlation_id``) and ``audit`` handled them; stop them."""
    async with running(app):
        await app.publish_many(
            "notes", [Note(note_id=f"n-{i}", n=i) for i in range(4)], correlation_id=correlation_id
        )

        async def dead() -> bool:
            try:
                return (await open_log(app.transport, "mail")).depth() == 4
            except Exception:
                return False

        await eventually(dead, what="4 dead letters")
        await eventually(lambda: len(handled) == 4)


def rows(result: Any) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    value = json.loads(result.stdout)
    assert isinstance(value, list)
    return value


async def test_groups_shows_each_groups_dead_letter_depth(app: Tidings, url: str) -> None:
    table = cli("groups", url=url)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    column = header.split().index("DLQ")
    depth = {line.split()[0]: line.split()[column] for line in lines}
    assert depth == {"audit": "0", "mail": "4"}
    assert {(r["group"], r["dlq"]) for r in rows(cli("groups", "--json", url=url))} == {
        ("audit", 0),
        ("mail", 4),
    }


async def test_list_filters_by_type_error_type_time_and_id(app: Tidings, url: str) -> None:
    every = rows(cli("dlq", "list", "mail", "--json", url=url))
    assert len(every) == 4
    assert {r["state"] for r in every} == {"dead"}
    assert "value" not in every[0]
    assert "traceback" not in every[0]
    timeouts = rows(cli("dlq", "list", "mail", "--error-type", "TimeoutError", "--json", url=url))
    assert sorted(r["key"] for r in timeouts) == ["n-0", "n-2"]
    assert rows(cli("dlq", "list", "mail", "--type", "note.deleted", "--json", url=url)) == []
    assert len(rows(cli("dlq", "list", "mail", "--since", "1h", "--json", url=url))) == 4
    assert rows(cli("dlq", "list", "mail", "--until", "1h", "--json", url=url)) == []
    one = every[1]
    by_event = rows(cli("dlq", "list", "mail", "--id", one["event_id"], "--json", url=url))
    assert [r["entry"] for r in by_event] == [one["entry"]]

    table = cli("dlq", "list", "mail", url=url)
    assert table.returncode == 0, table.stderr
    header, *lines, summary = table.stdout.splitlines()
    assert header.split()[:4] == ["ENTRY", "DEAD", "AT", "STATE"]
    assert len(lines) == 4
    assert summary == "4 dead letter(s) waiting in group mail"


async def test_show_prints_the_error_the_traceback_and_the_original_event(
    app: Tidings, url: str
) -> None:
    first = rows(cli("dlq", "list", "mail", "--json", url=url))[0]
    shown = cli("dlq", "show", "mail", first["event_id"], url=url)
    assert shown.returncode == 0, shown.stderr
    assert f"entry:          {first['entry']}" in shown.stdout
    assert "Traceback (most recent call last)" in shown.stdout
    assert '"type": "note.added"' in shown.stdout
    doc = json.loads(cli("dlq", "show", "mail", first["entry"], "--json", url=url).stdout)
    assert doc["event"]["id"] == first["event_id"]
    assert doc["correlationid"] == "req"
    missing = cli("dlq", "show", "mail", "nope", url=url)
    assert_one_error_line(missing, 1, "no dead letter 'nope' in group mail")


async def test_replay_then_replay_again_sends_each_entry_once(app: Tidings, url: str) -> None:
    dry = cli("dlq", "replay", "mail", "--error-type", "OSError", "--dry-run", url=url)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == "2 dead letter(s) would be replayed to group mail"
    first = cli("dlq", "replay", "mail", "--error-type", "OSError", url=url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "replayed 2 dead letter(s) to group mail (through mail.retry)"
    again = cli("dlq", "replay", "mail", "--error-type", "OSError", "--json", url=url)
    assert json.loads(again.stdout) == {"group": "mail", "replayed": 0, "skipped_truncated": 0}
    states = {
        r["key"]: r["state"] for r in rows(cli("dlq", "list", "mail", "--all", "--json", url=url))
    }
    assert states == {"n-0": "dead", "n-1": "replayed", "n-2": "dead", "n-3": "replayed"}
    retry = [info for info in await app.transport.topics() if info.name == "mail.retry"]
    assert retry[0].events == 2
    # The replay went to mail's own topic: audit's lag did not move.
    groups = rows(cli("groups", "audit", "--json", url=url))
    assert all(r["lag"] == 0 for r in groups)


async def test_a_truncated_entry_is_shown_as_cut_and_never_replayed(app: Tidings, url: str) -> None:
    first, *_ = (await open_log(app.transport, "mail")).listing()
    whole = first[0]
    cut = replace(
        whole,
        entry=new_id(),
        value=whole.value[:20],
        truncated=True,
        value_size=len(whole.value),
        value_sha256=hashlib.sha256(whole.value).hexdigest(),
    )
    await app.transport.append("mail.dlq", [(cut.key, cut.encode())])

    shown = cli("dlq", "show", "mail", cut.entry, url=url)
    assert shown.returncode == 0, shown.stderr
    assert (
        f"truncated:      yes: 20 of the original's {len(whole.value):,} bytes kept "
        f"(sha256 {cut.value_sha256}); it cannot be replayed"
    ) in shown.stdout
    assert f"original bytes (the first 20):\n{whole.value[:20].decode()}\n" in shown.stdout
    doc = json.loads(cli("dlq", "show", "mail", cut.entry, "--json", url=url).stdout)
    assert (doc["truncated"], doc["value_size"], doc["event"]) == (True, len(whole.value), None)

    dry = cli("dlq", "replay", "mail", "--dry-run", url=url)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-2:] == [
        "4 dead letter(s) would be replayed to group mail",
        f"skipped 1 truncated dead letter(s): their original was too large to keep in full, "
        f"so it cannot be sent again (see 'tidings dlq show'): {cut.entry}",
    ]
    sent = cli("dlq", "replay", "mail", url=url)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines()[0].startswith("replayed 4 dead letter(s)")
    assert sent.stdout.splitlines()[1].startswith("skipped 1 truncated dead letter(s)")
    again = cli("dlq", "replay", "mail", "--json", url=url)
    assert json.loads(again.stdout) == {"group": "mail", "replayed": 0, "skipped_truncated": 1}
    listed = rows(cli("dlq", "list", "mail", "--json", url=url))
    assert [r["entry"] for r in listed if r["state"] == "dead"] == [cut.entry]  # still waiting
    assert [r["entry"] for r in listed if r["truncated"]] == [cut.entry]
    retry = [info for info in await app.transport.topics() if info.name == "mail.retry"]
    assert retry[0].events == 4


async def test_a_large_replay_shows_a_progress_bar(url: str) -> None:
    app = Tidings(url, service="seed")

    @app.subscriber("bulk", group="slow", retry=Retry(max_attempts=1))
    async def fail(data: Any) -> None:
        raise OSError("no")

    async with app, running(app):
        await app.publish_many("bulk", list(range(150)), type="bulk.item")

        async def dead() -> bool:
            try:
                return (await open_log(app.transport, "slow")).depth() == 150
            except Exception:
                return False

        await eventually(dead, what="150 dead letters")
    result = cli("dlq", "replay", "slow", url=url)
    assert result.returncode == 0, result.stderr
    assert "replaying [" in result.stderr
    assert "150/150" in result.stderr
    assert result.stdout.startswith("replayed 150 dead letter(s)")


async def test_purge_asks_first_and_does_nothing_without_a_yes(app: Tidings, url: str) -> None:
    refused = cli("dlq", "purge", "mail", "--type", "note.added", url=url, stdin="n\n")
    assert refused.returncode == 1
    assert "purge 4 dead letter(s) of group mail?" in refused.stdout
    assert refused.stdout.rstrip().endswith("nothing purged")
    unanswered = cli("dlq", "purge", "mail", url=url, stdin="")
    assert unanswered.returncode == 1
    assert "(no answer; pass --yes)" in unanswered.stdout
    assert len(rows(cli("dlq", "list", "mail", "--json", url=url))) == 4

    asked = cli("dlq", "purge", "mail", "--error-type", "OSError", url=url, stdin="y\n")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.splitlines()[-1].endswith("purged 2 dead letter(s) of group mail")
    forced = cli("dlq", "purge", "mail", "--yes", "--json", url=url)
    assert json.loads(forced.stdout) == {"group": "mail", "purged": 2}
    assert rows(cli("dlq", "list", "mail", "--json", url=url)) == []
    nothing = cli("dlq", "purge", "mail", "--yes", url=url)
    assert nothing.stdout.strip() == "no dead letters in group mail match; nothing purged"


async def test_a_mistyped_group_says_it_has_no_dead_letter_topic(app: Tidings, url: str) -> None:
    assert_one_error_line(
        cli("dlq", "list", "mial", url=url),
        1,
        "group 'mial' has no dead-letter topic",
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("dlq", "list", "mail", "--since", "yesterday"), "'yesterday' is not a time"),
        (("dlq", "list", "mail", "--since", "1h", "--until", "2h"), "is after --until"),
        (("dlq", "frobnicate", "mail"), "invalid choice: 'frobnicate'"),
        (("dlq", "replay"), "the following arguments are required: GROUP"),
    ],
)
def test_bad_dlq_arguments_say_what_was_wrong(
    sqlite_url: str, args: tuple[str, ...], says: str
) -> None:
    # Refused while the command line is read, before any log is opened: one log will do.
    assert_one_error_line(tidings(*args, url=sqlite_url), 2, says)
