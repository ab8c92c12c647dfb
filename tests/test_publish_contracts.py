"""``tidings publish`` knows the contracts (issue 18, item 5; decision 0021): each
payload is checked against the schema its type has in the log's schema registry,
``dataversion`` is the version checked, the subject comes from the subject field; and
``tidings tail`` shows each event's version. On a SQLite log file: in process for most
cases, a few end to end through ``python -m tidings``."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pydantic import BaseModel

from tidings import Tidings, tail
from tidings.admin import PublishCheck, build_event
from tidings.cli import main
from tidings.codec import encode
from tidings.envelope import Event
from tidings.errors import EventError, UnknownEventType
from tidings.partitioning import partition_for
from tidings.schema import fingerprint
from tidings.schema.payloads import PayloadValidator, payload_path
from tidings.schema.state import RegistryState, SchemaVersion
from tidings.transports import open_transport

TOPIC = "orders"
PARTITIONS = 4


class OrderPlacedV1(BaseModel):
    order_id: str
    amount_cents: int


class OrderPlaced(BaseModel):
    order_id: str
    amount_cents: int
    items: list[int] = []


class Line(BaseModel):
    sku: str


class Cart(BaseModel):
    lines: list[Line]


def shop(url: str) -> Tidings:
    """order.placed v1 (deprecated, sunset 2027-01-31) and v2, subject field order_id."""
    app = Tidings(url, service="billing")
    app.event("order.placed", 1, subject="order_id", sunset="2027-01-31")(OrderPlacedV1)
    app.event("order.placed", 2, subject="order_id")(OrderPlaced)
    return app


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite log whose registry holds order.placed v1 and v2, with topic ``orders``."""
    url = f"sqlite:///{tmp_path / 'events.db'}"

    async def seed() -> None:
        async with shop(url) as app:
            await app.transport.create_topic(TOPIC, PARTITIONS)

    asyncio.run(seed())
    return url


def published(url: str) -> list[tuple[int, Event]]:
    """(partition, event) of every event in ``orders``, in append order."""

    async def read() -> list[tuple[int, Event]]:
        transport = open_transport(url)
        await transport.start()
        try:
            return [
                (e.record.partition, e.event)
                async for e in tail.tail(transport, TOPIC)
                if e.event is not None
            ]
        finally:
            await transport.close()

    return asyncio.run(read())


def publish(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    *args: str,
    stdin: str | None = None,
) -> tuple[int, str, str]:
    """``tidings publish orders ARGS --url URL --json`` in process: (code, out, err)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = main(["publish", TOPIC, *args, "--url", url, "--json"])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, out: str, err: str, expected_code: int = 1) -> str:
    assert code == expected_code, err
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("tidings: error: ")
    return line


ORDER = '{"order_id": "o-1", "amount_cents": 700}'


# -- a payload that matches ----------------------------------------------------------


def test_a_matching_payload_gets_the_latest_version_and_its_subject_field(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = publish(capsys, monkeypatch, url, "order.placed", "--data", ORDER)
    assert (code, err) == (0, "")
    [printed] = orjson.loads(out)
    assert (printed["subject"], printed["dataversion"]) == ("o-1", 2)
    [(partition, event)] = published(url)
    assert (event.id, event.dataversion, event.subject) == (printed["id"], 2, "o-1")
    assert event.partitionkey is None  # partitioned by the subject
    assert partition == partition_for("o-1", PARTITIONS)


def test_version_picks_the_schema_checked_and_a_deprecated_one_warns(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # v1's open model takes any "items"; v2 wants integers.
    data = '{"order_id": "o-1", "amount_cents": 1, "items": ["a"]}'
    code, _, err = publish(capsys, monkeypatch, url, "order.placed", "--data", data)
    assert 'data.items[0]: "a" is not of type "integer"' in one_error(code, "", err)
    code, out, err = publish(
        capsys, monkeypatch, url, "order.placed", "--data", data, "--version", "1"
    )
    assert code == 0, err
    assert orjson.loads(out)[0]["dataversion"] == 1
    assert err.splitlines() == [
        "tidings: warning: publishing order.placed version 1, which is deprecated (sunset "
        "2027-01-31); the latest is version 2"
    ]
    [(_, event)] = published(url)
    assert event.dataversion == 1


def test_the_cli_warns_of_a_deprecated_version_in_the_app_s_words(
    url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One home for the warning: the command line prints what an app logs."""
    code, _, err = publish(
        capsys, monkeypatch, url, "order.placed", "--data", ORDER, "--version", "1"
    )
    assert code == 0
    app = shop("memory://")
    with caplog.at_level(logging.WARNING, "tidings.contracts"):
        app.build(OrderPlacedV1(order_id="o-1", amount_cents=1))
    assert err.strip() == f"tidings: warning: {caplog.records[-1].getMessage()}"


def test_schema_show_says_what_publish_knows_of_a_version(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "show", "order.placed", "--version", "1", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "subject field: order_id\n" in out
    assert "deprecated:    sunset 2027-01-31\n" in out
    assert main(["schema", "show", "order.placed", "--json", "--url", url]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert (shown["subject"], shown["deprecated"], shown["sunset"]) == ("order_id", False, None)


# -- refusals: nothing is published --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--data", '{"order_id": "o-1", "amount_cents": "x", "items": [1, "a"]}'],
            "payload of order.placed v2 does not match its registered schema: 2 error(s): "
            'data.amount_cents: "x" is not of type "integer"; '
            'data.items[1]: "a" is not of type "integer"',
        ),
        (
            ["--data", '{"order_id": "o-1"}'],
            'data: "amount_cents" is a required property',
        ),
        (["--data", "[1]"], 'data: [1] is not of type "object"'),
        (
            ["--data", ORDER, "--version", "3"],
            "order.placed has no version 3 in the schema registry; registered: v1, v2",
        ),
        (
            ["--data", ORDER, "--subject", "o-2"],
            "subject 'o-2' is not the payload's order_id 'o-1' (order_id is the subject "
            "field of order.placed v2)",
        ),
    ],
)
def test_a_payload_that_does_not_match_is_refused_with_its_paths(
    url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    says: str,
) -> None:
    code, out, err = publish(capsys, monkeypatch, url, "order.placed", *args)
    assert says in one_error(code, out, err)
    assert published(url) == []


def test_the_subject_given_may_be_the_subject_field_s(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = publish(
        capsys, monkeypatch, url, "order.placed", "--data", ORDER, "--subject", "o-1"
    )
    assert (code, err) == (0, "")
    assert [e.subject for _, e in published(url)] == ["o-1"]


def test_a_bad_line_in_a_batch_publishes_nothing(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        '{"type": "order.placed", "data": {"order_id": "o-1", "amount_cents": 1}}',
        '{"type": "order.placed", "data": {"order_id": "o-2", "amount_cents": 2}, '
        '"dataversion": 1}',
        '{"type": "order.placed", "data": {"order_id": "o-3", "amount_cents": 3.5}}',
    ]
    code, out, err = publish(capsys, monkeypatch, url, stdin="\n".join(lines) + "\n")
    assert (  # line 2 is a deprecated version: no warning for a batch refused
        "stdin line 3: payload of order.placed v2 does not match its registered schema: "
        '1 error(s): data.amount_cents: 3.5 is not of type "integer"'
    ) in one_error(code, out, err)
    assert published(url) == []
    good = "\n".join(lines[:2]) + "\n"
    code, out, err = publish(capsys, monkeypatch, url, stdin=good)
    assert code == 0, err
    assert "tidings: warning: publishing order.placed version 1" in err
    assert [(e.subject, e.dataversion) for _, e in published(url)] == [("o-1", 2), ("o-2", 1)]


def test_a_bad_dataversion_on_a_line_is_refused(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = '{"type": "order.placed", "data": {}, "dataversion": "2"}\n'
    code, out, err = publish(capsys, monkeypatch, url, stdin=line)
    assert "stdin line 1: 'dataversion' must be an integer >= 1" in one_error(code, out, err)


def test_an_event_given_whole_is_checked_against_its_own_version_and_kept(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Tidings("memory://", service="elsewhere")
    v1 = app.build({"order_id": "o-1", "amount_cents": 1, "items": ["a"]}, type="order.placed")
    as_v1 = v1.with_(dataversion=1)
    code, _, err = publish(capsys, monkeypatch, url, stdin=encode(as_v1).decode() + "\n")
    assert code == 0, err
    [(_, event)] = published(url)
    assert event == as_v1  # published as it is: no subject added
    as_v2 = v1.with_(dataversion=2)
    code, out, err = publish(capsys, monkeypatch, url, stdin=encode(as_v2).decode() + "\n")
    assert "stdin line 1: payload of order.placed v2" in one_error(code, out, err)
    wrong = as_v1.with_(subject="o-9")
    code, out, err = publish(capsys, monkeypatch, url, stdin=encode(wrong).decode() + "\n")
    assert "subject 'o-9' is not the payload's order_id 'o-1'" in one_error(code, out, err)
    assert len(published(url)) == 1


# -- types the registry does not know, and no check ----------------------------------


def test_an_unknown_type_is_published_with_a_warning_or_refused_with_strict(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = publish(capsys, monkeypatch, url, "order.shipped", "--data", "{}")
    assert code == 0
    assert err.splitlines() == [
        "tidings: warning: order.shipped is not in the schema registry of this log, so its "
        "payload is not checked (--strict refuses it)"
    ]
    code, out, err = publish(capsys, monkeypatch, url, "order.shipped", "--data", "{}", "--strict")
    line = one_error(code, out, err)
    assert "order.shipped is not in the schema registry; registered types: order.placed" in line
    assert [e.type for _, e in published(url)] == ["order.shipped"]


def test_no_check_publishes_what_the_registry_would_refuse(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = '{"order_id": "o-1", "amount_cents": "x"}'
    code, _, err = publish(
        capsys, monkeypatch, url, "order.placed", "--data", bad, "--no-check", "--version", "2"
    )
    assert (code, err) == (0, "")
    [(_, event)] = published(url)
    assert (event.dataversion, event.subject, event.data) == (2, None, orjson.loads(bad))
    code, out, err = publish(
        capsys, monkeypatch, url, "order.placed", "--data", bad, "--no-check", "--strict"
    )
    assert "not allowed with argument" in one_error(code, out, err, expected_code=2)


# -- the library under the command ---------------------------------------------------


def test_payload_paths_read_as_the_checker_writes_them() -> None:
    assert payload_path([]) == "data"
    assert payload_path(["lines", 2, "sku"]) == "data.lines[2].sku"
    assert payload_path(["a b", 0]) == 'data["a b"][0]'
    errors = PayloadValidator(Cart.model_json_schema()).errors({"lines": [{"sku": 1}, {}]})
    assert errors == [
        'data.lines[0].sku: 1 is not of type "string"',
        'data.lines[1]: "sku" is a required property',
    ]


def test_a_publish_check_warns_once_per_type_and_version() -> None:
    state = RegistryState()

    async def registered() -> None:
        async with shop("memory://") as app:
            state.versions.update((await app.schema_registry.refresh()).versions)

    asyncio.run(registered())
    check = PublishCheck(state)
    app = Tidings("memory://", service="cli")
    for _ in range(3):
        build_event(
            app, "order.placed", {"order_id": "a", "amount_cents": 1}, version=1, check=check
        )
        build_event(app, "order.unknown", 1, check=check)
    assert [w.split()[:2] for w in check.warnings] == [
        ["publishing", "order.placed"],
        ["order.unknown", "is"],
    ]
    with pytest.raises(UnknownEventType, match="--strict refuses"):
        build_event(app, "order.unknown", 1, check=PublishCheck(state, strict=True))
    with pytest.raises(EventError, match="does not match"):
        build_event(app, "order.placed", {}, check=check)


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "object", "properties": {"a": {"pattern": "("}}}, '"(" is not a "regex"'),
        ({"$ref": "http://127.0.0.1:9/order.json"}, "is outside the schema, and is not fetched"),
    ],
)
def test_a_registered_schema_the_validator_cannot_read_is_refused_in_one_line(
    schema: dict[str, object], says: str
) -> None:
    version = SchemaVersion("order.odd", 1, schema, fingerprint(schema))
    state = RegistryState()
    state.add(version)
    with pytest.raises(EventError) as refused:
        PublishCheck(state).check("order.odd", {"a": "x"})
    assert "the registered schema of order.odd v1 cannot be read by the validator" in str(
        refused.value
    )
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)


# -- end to end ----------------------------------------------------------------------


def cli(*args: str, url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args, "--url", url],
        input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_end_to_end_a_bad_payload_is_refused_and_tail_shows_versions(url: str) -> None:
    bad = cli("publish", TOPIC, "order.placed", "--data", '{"order_id": 7}', url=url)
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "tidings: error: payload of order.placed v2 does not match its registered schema: "
        '2 error(s): data: "amount_cents" is a required property; data.order_id: 7 is not '
        'of type "string"'
    ]
    batch = (
        '{"type": "order.placed", "data": {"order_id": "o-1", "amount_cents": 1}}\n'
        '{"type": "order.placed", "data": {"order_id": "o-2"}}\n'
    )
    refused = cli("publish", TOPIC, url=url, stdin=batch)
    assert refused.returncode == 1
    assert "stdin line 2: payload of order.placed v2" in refused.stderr
    assert cli("tail", TOPIC, url=url).stdout == ""

    good = cli("publish", TOPIC, "order.placed", "--data", ORDER, "--version", "1", url=url)
    assert good.returncode == 0, good.stderr
    assert "which is deprecated (sunset 2027-01-31)" in good.stderr
    unchecked = cli("publish", TOPIC, "order.noted", "--data", "null", url=url)
    assert unchecked.returncode == 0, unchecked.stderr
    lines = cli("tail", TOPIC, url=url).stdout.splitlines()
    assert [line.split()[1:4] for line in lines] == [
        ["order.placed", "v1", "o-1"],
        ["order.noted", "-", "-"],
    ]
    as_json = cli("tail", TOPIC, "--json", url=url).stdout.splitlines()
    assert [orjson.loads(x).get("dataversion") for x in as_json] == [1, None]
