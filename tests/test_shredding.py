"""Crypto-shredding of personal fields (decision 0036): sealed at publish, opened for
personal=True subscribers, masked for the others and for readers without the key
store; tampering, moved ciphertexts, a wrong master key and a lost key store detected;
erasure on live delivery, replay, tail and dead letters, on every log."""

from __future__ import annotations

import base64
import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import pytest
from pydantic import BaseModel

from tests.conftest import LOGS, log_url
from tidings import Tidings, tail
from tidings.dead_letters import Filter, open_log, replay
from tidings.errors import DecodeError, TopicNotFound
from tidings.middleware import Retry
from tidings.personal import Personal
from tidings.shredding import ERASED, MASK, KeyStoreError, Shredder, SqlKeyStore
from tidings.shredding.erasure import ERASURES_TOPIC
from tidings.shredding.fields import SEALED
from tidings.testing import eventually, running

FAST = {"base_delay": 0.005, "max_delay": 0.01}


class Assigned(BaseModel):
    task_id: str
    assignee: Annotated[str, Personal(subject="assignee")]
    email: Annotated[str | None, Personal(subject="assignee")] = None
    n: int = 0


class Contact(BaseModel):
    person_id: str
    phones: list[Annotated[str, Personal(subject="person_id")]]


class Team(BaseModel):
    name: str
    members: list[Contact]


class Pair(BaseModel):
    owner: Annotated[str, Personal(subject="owner")]
    buyer: Annotated[str, Personal(subject="buyer")]


@pytest.fixture(autouse=True)
def master(monkeypatch: pytest.MonkeyPatch) -> str:
    key = os.urandom(32).hex()
    monkeypatch.setenv("TIDINGS_MASTER_KEY", key)
    return key


@pytest.fixture(params=LOGS)
def url(request: pytest.FixtureRequest) -> str:
    return log_url(request, partitions=2)


def make_app(url: str, keys: Any) -> Tidings:
    app = Tidings(url, service="test", personal=keys)
    app.event("task.assigned", subject="task_id")(Assigned)
    app.event("team.formed", subject="name")(Team)
    return app


def keys_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/keys.db"


# -- sealing and opening ---------------------------------------------------------------


async def test_round_trip_the_log_holds_no_clear_value_and_only_personal_handlers_see_it(
    sqlite_url: str,
) -> None:
    app = make_app(sqlite_url, True)  # the keys in the log's own file
    clear: list[Assigned] = []
    masked: list[Assigned] = []

    @app.subscriber("tasks", group="mail", personal=True)
    async def mail(task: Assigned) -> None:
        clear.append(task)

    @app.subscriber("tasks", group="stats")
    async def stats(task: Assigned) -> None:
        masked.append(task)

    async with app, running(app):
        event = await app.publish("tasks", Assigned(task_id="t-1", assignee="ann", email="a@x.io"))
        await eventually(lambda: clear and masked)
        (record,) = [e.record async for e in tail.tail(app.transport, "tasks")]
    assert clear == [Assigned(task_id="t-1", assignee="ann", email="a@x.io")]
    assert masked == [Assigned(task_id="t-1", assignee=MASK, email=MASK)]
    assert b"ann" not in record.value
    assert b"a@x.io" not in record.value
    assert b'"task_id":"t-1"' in record.value  # unmarked fields and the envelope: clear
    assert event.subject == "t-1"
    assert event.extensions["personaldata"] == "v2"


async def test_a_dict_of_a_type_with_personal_fields_is_sealed_as_its_model_would_be(
    sqlite_url: str,
) -> None:
    # Decision 0052: a plain value of a registered type is written as its model, so its
    # personal fields are sealed too (they used to be written in clear).
    app = make_app(sqlite_url, True)
    async with app:
        event = await app.publish(
            "tasks", {"task_id": "t-1", "assignee": "ann", "email": "a@x.io"}, type="task.assigned"
        )
        (record,) = [e.record async for e in tail.tail(app.transport, "tasks")]
    assert b"ann" not in record.value
    assert b"a@x.io" not in record.value
    assert b'"task_id":"t-1"' in record.value
    assert (event.subject, event.extensions["personaldata"]) == ("t-1", "v2")


def test_nested_lists_are_sealed_per_item_with_each_items_subject(tmp_path: Path) -> None:
    shredder = Shredder(SqlKeyStore(keys_db(tmp_path)))
    team = Team(
        name="blue",
        members=[Contact(person_id="p1", phones=["1", "2"]), Contact(person_id="p2", phones=["3"])],
    )
    data = shredder.seal("e-1", team)
    assert data is not None
    first, second = data["members"]
    assert first["person_id"] == "p1"
    assert second["person_id"] == "p2"
    assert first["phones"] == [MASK, MASK]
    (one, two) = [line.split(" ") for line in data[SEALED].split("\n")]  # a line per subject
    assert one[2:] == ["members[0].phones[0]", "members[0].phones[1]"]
    assert two[2:] == ["members[1].phones[0]"]
    assert one[0] != two[0]
    assert shredder.open("e-1", data) == team.model_dump(mode="json")
    assert shredder.seal("e-2", Assigned(task_id="t", assignee="x")) is not None
    assert shredder.keys.erase("p1") is not None
    opened = shredder.open("e-1", data)
    assert opened["members"][0]["phones"] == [ERASED, ERASED]
    assert opened["members"][1]["phones"] == ["3"]


def test_a_tampered_byte_a_moved_ciphertext_and_the_wrong_key_are_detected(
    tmp_path: Path,
) -> None:
    shredder = Shredder(SqlKeyStore(keys_db(tmp_path)))
    one = shredder.seal("e-1", Assigned(task_id="t", assignee="ann", email="a@x.io"))
    other = shredder.seal("e-2", Assigned(task_id="t", assignee="bob", email="b@x.io"))
    assert one is not None
    assert other is not None
    kid, ct, paths = one[SEALED].split(" ", 2)
    raw = bytearray(base64.b64decode(ct))
    raw[-1] ^= 1
    flipped = {**one, SEALED: f"{kid} {base64.b64encode(raw).decode()} {paths}"}
    with pytest.raises(DecodeError, match="email of event e-1 fails authentication"):
        shredder.open("e-1", flipped)
    with pytest.raises(DecodeError, match="fails authentication"):  # into another event
        shredder.open("e-2", {**other, SEALED: one[SEALED]})
    with pytest.raises(DecodeError, match="fails authentication"):  # onto other fields
        shredder.open("e-1", {**one, SEALED: f"{kid} {ct} email assignee"})
    with pytest.raises(DecodeError, match="fails authentication"):  # another subject's key
        shredder.open("e-1", {**one, SEALED: f"{other[SEALED].split()[0]} {ct} {paths}"})
    assert shredder.open("e-1", one)["email"] == "a@x.io"


def test_nonces_never_repeat_a_new_random_field_comes_before_the_counter_wraps(
    tmp_path: Path,
) -> None:
    shredder = Shredder(SqlKeyStore(keys_db(tmp_path)))
    shredder._counter = itertools.count((1 << 32) - 2)  # two nonces left in this field
    payload = Assigned(task_id="t", assignee="ann", email="a@x.io")
    sealed = [shredder.seal(f"e-{i}", payload) for i in range(2)]
    payload_two = Pair(owner="ann", buyer="bob")  # a nonce per subject
    sealed += [shredder.seal(f"e-{i}", payload_two) for i in (2, 3)]
    nonces = [
        base64.b64decode(line.split(" ")[1])[:12]
        for data in sealed
        if data is not None
        for line in data[SEALED].split("\n")
    ]
    assert len(set(nonces)) == 6
    counters = [int.from_bytes(n[8:], "big") for n in nonces]
    assert counters == [(1 << 32) - 2, (1 << 32) - 1, 0, 1, 2, 3]
    assert nonces[0][:8] == nonces[1][:8] != nonces[2][:8] == nonces[5][:8]
    assert [shredder.open(f"e-{i}", data) for i, data in enumerate(sealed)] == [
        payload.model_dump(mode="json")
    ] * 2 + [payload_two.model_dump(mode="json")] * 2


def test_a_wrong_master_key_and_a_lost_key_store_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = keys_db(tmp_path)
    sealed = Shredder(SqlKeyStore(db)).seal("e-1", Assigned(task_id="t", assignee="ann"))
    monkeypatch.setenv("TIDINGS_MASTER_KEY", os.urandom(32).hex())
    with pytest.raises(KeyStoreError, match="the master key does not open the key store"):
        Shredder(SqlKeyStore(db)).open("e-1", sealed)
    monkeypatch.delenv("TIDINGS_MASTER_KEY")
    with pytest.raises(KeyStoreError, match="no master key"):
        Shredder(SqlKeyStore(db)).open("e-1", sealed)
    monkeypatch.setenv("TIDINGS_MASTER_KEY", os.urandom(32).hex())
    with pytest.raises(KeyStoreError, match=r"neither in the key store .* nor erased"):
        Shredder(SqlKeyStore(f"sqlite:///{tmp_path}/empty.db")).open("e-1", sealed)


async def test_a_consumer_without_the_key_store_gets_masks(sqlite_url: str) -> None:
    producer = make_app(sqlite_url, True)
    consumer = make_app(sqlite_url, None)
    seen: list[Assigned] = []

    @consumer.subscriber("tasks", group="g", personal=True)  # asks, but has no keys
    async def handle(task: Assigned) -> None:
        seen.append(task)

    async with producer, consumer, running(consumer):
        await producer.publish("tasks", Assigned(task_id="t", assignee="ann", email=None))
        await eventually(lambda: seen)
    assert seen == [Assigned(task_id="t", assignee=MASK, email=None)]


@pytest.mark.parametrize(
    ("broken", "reason"),
    [("master key", "master key does not open"), ("lost store", "neither in the key store")],
)
async def test_a_consumer_with_the_wrong_master_key_or_a_lost_key_store_loses_no_event(
    sqlite_url: str, tmp_path: Path, broken: str, reason: str
) -> None:
    producer = make_app(sqlite_url, keys_db(tmp_path))
    async with producer:
        await producer.publish("tasks", Assigned(task_id="t", assignee="ann"))
    if broken == "master key":
        keys = SqlKeyStore(keys_db(tmp_path), master_key=os.urandom(32))
    else:  # an empty store in the lost one's place
        keys = SqlKeyStore(f"sqlite:///{tmp_path}/new-keys.db")
    consumer = make_app(sqlite_url, keys)

    @consumer.subscriber("tasks", group="g", personal=True, retry=Retry(max_attempts=2, **FAST))
    async def handle(task: Assigned) -> None:
        raise AssertionError("never reached")

    async with consumer, running(consumer):
        log = await open_log(consumer.transport, "g")

        async def dead() -> bool:
            nonlocal log
            log = await open_log(consumer.transport, "g")
            return bool(log.listing())

        await eventually(dead, what="a dead letter")
    ((letter, _),) = log.listing()
    assert (letter.error_type or "").endswith("KeyStoreError")
    assert reason in (letter.error_message or "")
    assert b"ann" not in letter.value  # kept whole, still sealed


# -- erasure ---------------------------------------------------------------------------


async def test_erasure_on_live_delivery_replay_tail_and_dead_letters(
    url: str, tmp_path: Path
) -> None:
    app = make_app(url, keys_db(tmp_path))
    seen: list[Assigned] = []
    failing = True

    @app.subscriber("tasks", group="mail", personal=True)
    async def mail(task: Assigned) -> None:
        seen.append(task)

    @app.subscriber("tasks", group="flaky", personal=True, retry=Retry(max_attempts=1))
    async def flaky(task: Assigned) -> None:
        if failing:
            raise OSError("down")
        seen.append(task)

    async with app:
        async with running(app):
            await app.publish("tasks", Assigned(task_id="t-1", assignee="ann", email="a@x.io"))
            await app.publish("tasks", Assigned(task_id="t-2", assignee="bob", n=2))
            await eventually(lambda: len(seen) == 2, what="the live deliveries")

            async def dead_letters() -> bool:
                try:
                    return len((await open_log(app.transport, "flaky")).listing()) == 2
                except TopicNotFound:  # no dead letter topic yet; any other error fails
                    return False

            await eventually(dead_letters, what="two dead letters")
        assert {t.assignee for t in seen} == {"ann", "bob"}
        kid = await app.erase("ann")
        assert kid is not None
        assert await app.erase("nobody") is None
        (erasure,) = [e async for e in tail.tail(app.transport, ERASURES_TOPIC)]
        assert erasure.event is not None
        assert erasure.event.data["kid"] == kid
        assert b"ann" not in erasure.record.value
        failing = False
        seen.clear()
        await replay(app.transport, "flaky", Filter())  # the dead letters, afresh
        await app.publish("tasks", Assigned(task_id="t-3", assignee="bob", n=3))

        @app.subscriber("tasks", group="late", personal=True)  # the log replayed
        async def late(task: Assigned) -> None:
            seen.append(task)

        async with running(app):
            # flaky: 2 replays + t-3; late: t-1..t-3; mail: t-3
            await eventually(lambda: len(seen) == 7, what="replays and the new event")
        shown = [
            e.event.data
            async for e in tail.tail(app.transport, "tasks", reveal=app.shredder)
            if e.event is not None
        ]
        masked = [e.event.data async for e in tail.tail(app.transport, "tasks") if e.event]
    by_task = {(t.task_id, t.assignee, t.email) for t in seen}
    assert by_task == {
        ("t-1", ERASED, ERASED), ("t-2", "bob", None), ("t-3", "bob", None),
    }  # fmt: skip
    assert [t.task_id for t in seen].count("t-1") == 2  # dead-letter replay + the new group
    assert sorted((d["task_id"], d["assignee"]) for d in shown) == [
        ("t-1", ERASED), ("t-2", "bob"), ("t-3", "bob"),
    ]  # fmt: skip
    assert {d["assignee"] for d in masked} == {MASK}


async def test_another_process_learns_of_an_erasure_at_once_not_when_its_cache_expires(
    sqlite_url: str, tmp_path: Path
) -> None:
    keys = keys_db(tmp_path)  # two processes' key stores: caches that would last an hour
    eraser = make_app(sqlite_url, SqlKeyStore(keys, cache_seconds=3600))
    reader = make_app(sqlite_url, SqlKeyStore(keys, cache_seconds=3600))
    assert reader.shredder is not None
    got: list[tuple[str, str]] = []

    @reader.subscriber("tasks", group="mail", personal=True)
    async def mail(task: Assigned) -> None:
        got.append(("mail", task.assignee))

    async with eraser, reader:
        async with running(reader):
            event = await eraser.publish("tasks", Assigned(task_id="t-1", assignee="ann"))
            await eventually(lambda: got == [("mail", "ann")], what="the clear value")
        sealed_kid = event.data[SEALED].split(" ")[0]
        assert reader.shredder.keys.key_for("ann")[0] == sealed_kid  # cached, both ways
        assert await eraser.erase("ann") == sealed_kid

        def reader_sees_it() -> bool:
            assert reader.shredder is not None
            return reader.shredder.open(event.id, event.data)["assignee"] == ERASED

        await eventually(reader_sees_it, timeout=60, what="the reader learns of the erasure")

        @reader.subscriber("tasks", group="late", personal=True)  # replays t-1 afterwards
        async def late(task: Assigned) -> None:
            got.append(("late", task.assignee))

        async with running(reader):
            await eventually(lambda: len(got) == 2, timeout=60, what="the replay")
        again = reader.build(Assigned(task_id="t-2", assignee="ann"))
    assert got == [("mail", "ann"), ("late", ERASED)]  # no clear value after the erasure
    assert again.data[SEALED].split(" ")[0] != sealed_kid  # new data: a new key, not the erased one


@pytest.mark.parametrize("kind", ["async", "def"])
async def test_a_handlers_error_keeps_no_personal_value_in_the_dead_letter_or_the_log(
    sqlite_url: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(sqlite_url, True)
    retry = Retry(max_attempts=2, **FAST)  # the first call in a run, the second alone

    def fail(task: Assigned) -> None:
        try:
            raise KeyError(task.assignee)
        except KeyError as exc:
            raise OSError(f"no mailbox {task.email} for {task.assignee} ({task.n})") from exc

    if kind == "async":

        @app.subscriber("tasks", group="g", personal=True, retry=retry)
        async def handle(task: Assigned) -> None:
            fail(task)
    else:

        @app.subscriber("tasks", group="g", personal=True, retry=retry)
        def handle_in_thread(task: Assigned) -> None:
            fail(task)

    caplog.set_level(logging.INFO)
    async with app, running(app):
        await app.publish("tasks", Assigned(task_id="t", assignee="ann-x", email="a@x.io", n=7))

        async def dead() -> list[Any]:
            try:
                return (await open_log(app.transport, "g")).listing()
            except TopicNotFound:  # no dead letter topic yet
                return []

        await eventually(dead, what="a dead letter")
        ((letter, _),) = await dead()
    assert letter.error_message == "no mailbox [personal] for [personal] (7)"
    for text in (letter.error_message, letter.traceback, caplog.text):
        assert text is not None
        assert "a@x.io" not in text
        assert "ann-x" not in text
    assert "KeyError: '[personal]'" in (letter.traceback or "")
    assert "OSError: no mailbox [personal]" in caplog.text  # the retry's log line


def run_cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args, "--url", url],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


async def test_the_cli_masks_by_default_reveals_on_request_and_erases(sqlite_url: str) -> None:
    app = make_app(sqlite_url, True)

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=1))
    async def fails(task: Assigned) -> None:
        raise OSError("down")

    async with app, running(app):
        event = await app.publish("tasks", Assigned(task_id="t-1", assignee="ann", email="a@x"))

        async def dead() -> bool:
            try:
                return bool((await open_log(app.transport, "g")).listing())
            except TopicNotFound:  # no dead letter topic yet; any other error fails
                return False

        await eventually(dead, what="a dead letter")
    masked = run_cli("tail", "tasks", "--json", url=sqlite_url)
    assert masked.returncode == 0, masked.stderr
    assert orjson.loads(masked.stdout)["data"]["email"] == MASK
    revealed = run_cli("tail", "tasks", "--json", "--reveal", url=sqlite_url)
    assert orjson.loads(revealed.stdout)["data"]["email"] == "a@x", revealed.stderr
    show = run_cli("dlq", "show", "g", event.id, "--json", url=sqlite_url)
    assert orjson.loads(show.stdout)["event"]["data"]["assignee"] == MASK, show.stderr
    assert "ann" not in show.stdout
    erased = run_cli("erase", "ann", "--json", url=sqlite_url)
    assert erased.returncode == 0, erased.stderr
    assert orjson.loads(erased.stdout)["erased"] is True
    after = run_cli("dlq", "show", "g", event.id, "--json", "--reveal", url=sqlite_url)
    assert orjson.loads(after.stdout)["event"]["data"]["assignee"] == ERASED, after.stderr


async def test_the_outbox_row_holds_ciphertext_and_an_erasure_reaches_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    from tidings import Outbox

    app = make_app(sqlite_url, True)
    seen: list[Assigned] = []

    @app.subscriber("tasks", group="g", personal=True)
    async def handle(task: Assigned) -> None:
        seen.append(task)

    engine = sa.create_engine(f"sqlite:///{tmp_path}/app.db")
    outbox = Outbox(app, engine, topic="tasks")
    async with app:
        outbox.create_table()
        with engine.begin() as conn:
            outbox.add(conn, Assigned(task_id="t-1", assignee="ann", email="a@x.io"))
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT payload FROM tidings_outbox")).all()
        assert len(rows) == 1
        assert b"a@x.io" not in rows[0][0]
        await app.erase("ann")  # before the relay sends it
        app.add_component(outbox.relay())
        async with running(app):
            await eventually(lambda: seen)
    assert seen == [Assigned(task_id="t-1", assignee=ERASED, email=ERASED)]


class OwnerNamed(BaseModel):
    owner_id: Annotated[str, Personal(subject="owner_id")]
    name: Annotated[str, Personal(subject="owner_id")]


def test_an_aggregate_loads_its_own_personal_fields_in_clear_until_erased(
    tmp_path: Path,
) -> None:
    from tidings.aggregates import Aggregate, AggregateStore, applies

    class Owner(Aggregate):
        def __init__(self) -> None:
            self.name = ""

        @applies(OwnerNamed)
        def _named(self, event: OwnerNamed) -> None:
            self.name = event.name

    app = Tidings("memory://", service="owners", personal=keys_db(tmp_path))
    app.event("owner.named", subject="owner_id")(OwnerNamed)
    store = AggregateStore(app, f"sqlite:///{tmp_path}/app.db", Owner, topic="owners")
    owner = store.create("o-1")
    owner.record(OwnerNamed(owner_id="o-1", name="Ann"))
    (event,) = store.save(owner)
    assert isinstance(event.data, dict)
    assert event.data["name"] == MASK
    assert SEALED in event.data
    assert store.load("o-1").name == "Ann"
    assert app.shredder is not None
    app.shredder.erase("o-1")
    assert store.load("o-1").name == ERASED


# -- key stores ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def keys_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return keys_db(tmp_path)
    return str(request.getfixturevalue("pg_url"))


def test_a_key_store_by_url_shares_keys_between_processes_and_records_erasures(
    keys_url: str,
) -> None:
    one, two = SqlKeyStore(keys_url), SqlKeyStore(keys_url)  # two processes' stores
    kid, key = one.key_for("ann")
    assert two.key_for("ann") == (kid, key)  # found by the subject's HMAC, not made twice
    assert two.key(kid) == key
    assert one.kids() == [kid]
    assert one.erase("ann") == kid
    assert one.key(kid) is None  # at once in the erasing process
    fresh = SqlKeyStore(keys_url)
    assert fresh.key(kid) is None  # and for any fresh reader
    fresh.close()
    assert [k for k, _ in one.erased()] == [kid]
    assert one.key_for("ann")[0] != kid  # new data about ann gets a new key
    assert one.erase("nobody") is None
    for store in (one, two):
        store.close()


def test_the_master_key_comes_from_a_file_and_a_bad_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings.shredding.keystore import master_key_from

    monkeypatch.delenv("TIDINGS_MASTER_KEY")
    secret = os.urandom(32)
    (tmp_path / "master.key").write_bytes(secret)
    monkeypatch.setenv("TIDINGS_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    assert master_key_from() == secret
    (tmp_path / "master.key").write_text(base64.b64encode(secret).decode() + "\n")
    assert master_key_from() == secret
    with pytest.raises(KeyStoreError, match="not 32 bytes"):
        master_key_from("abcd")


def test_any_object_with_the_four_methods_is_a_key_store(sqlite_url: str) -> None:
    class Kms:  # what a KMS adapter implements
        def __init__(self) -> None:
            self.keys: dict[str, bytes] = {}

        def key_for(self, subject: str) -> tuple[str, bytes]:
            return subject[::-1], self.keys.setdefault(subject[::-1], os.urandom(32))

        def key(self, kid: str) -> bytes | None:
            return self.keys.get(kid)

        def erase(self, subject: str) -> str | None:
            return subject[::-1] if self.keys.pop(subject[::-1], None) else None

        def kids(self) -> list[str]:
            return list(self.keys)

    app = make_app(sqlite_url, Kms())
    assert app.shredder is not None
    event = app.build(Assigned(task_id="t", assignee="ann"))
    assert event.data[SEALED].split(" ")[0] == "nna"
    assert app.shredder.open(event.id, event.data)["assignee"] == "ann"


def test_personal_true_needs_the_sqlite_log() -> None:
    from tidings.errors import ConfigError

    with pytest.raises(ConfigError, match="give the key store's URL"):
        Tidings("memory://", service="x", personal=True)


async def test_a_saga_that_asks_for_personal_data_gets_it_and_others_get_masks(
    sqlite_url: str, tmp_path: Path
) -> None:
    app = make_app(sqlite_url, True)
    seen: dict[str, str] = {}
    for name, personal in (("clear", True), ("masked", False)):
        saga = app.saga(
            name, topic="tasks", db=f"sqlite:///{tmp_path}/{name}.db", key="task_id",
            personal=personal,
        )  # fmt: skip

        @saga.starts("task.assigned", state="done")
        def started(task: Assigned, step: Any, name: str = name) -> None:
            seen[name] = task.assignee

    async with app, running(app):
        await app.publish("tasks", Assigned(task_id="t-1", assignee="ann"))
        await eventually(lambda: len(seen) == 2, what="both sagas")
    assert seen == {"clear": "ann", "masked": MASK}


async def test_a_def_handler_given_clear_values_in_a_run_keeps_its_inbox_session(
    sqlite_url: str, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    from tidings import Context
    from tidings.inbox import Inbox

    app = make_app(sqlite_url, True)
    inbox = Inbox(f"sqlite:///{tmp_path}/effects.db")
    inbox.create_table()
    seen: list[tuple[str, bool]] = []

    @app.subscriber("tasks", group="mail", personal=True, inbox=inbox)
    def mail(task: Assigned, ctx: Context) -> None:
        seen.append((task.assignee, ctx.session is not None))  # clear, redaction-guarded
        ctx.session.execute(sa.text("SELECT 1"))

    try:
        async with app, running(app):
            await app.publish_many(
                "tasks", [Assigned(task_id=f"t-{i}", assignee="ann") for i in range(5)]
            )
            await eventually(lambda: len(seen) == 5)
    finally:
        await inbox.close()
    assert seen == [("ann", True)] * 5
