"""The Task API with a key store (TASKAPI_KEYS, decision 0036): the assignee travels
encrypted in the log, and DELETE /people/{id} erases it from every event."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tests.taskapi.api_support import log_events, running, settings_for
from tidings.shredding import ERASED, MASK, Shredder, SqlKeyStore, mask


def test_the_assignee_is_encrypted_and_erasing_a_person_erases_it_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDINGS_MASTER_KEY", os.urandom(32).hex())
    keys = f"sqlite:///{tmp_path / 'keys.db'}"
    settings = dataclasses.replace(settings_for(tmp_path), keys=keys)
    with running(settings) as (client, _app):
        task = client.post("/tasks", json={"title": "t", "assignee": "alice"}).json()
        (created,) = log_events(settings, 1)
        assert created.data["assignee"] == MASK
        assert created.extensions["personaldata"] == "v2"
        assert mask(created.data)["assignee"] == MASK
        assert client.delete("/people/alice").status_code == 204
    assert task["assignee"] == "alice"  # the API's own table is its own to erase
    store = SqlKeyStore(keys)
    assert Shredder(store).open(created.id, created.data)["assignee"] == ERASED
    store.close()


def test_without_a_key_store_erasing_a_person_is_refused(tmp_path: Path) -> None:
    with running(settings_for(tmp_path)) as (client, _app):
        response = client.delete("/people/alice")
    assert response.status_code == 409
    assert "TASKAPI_KEYS" in response.json()["detail"]


async def test_the_audit_keeps_the_assignee_masked_and_verifies_after_an_erasure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskapi.audit_chain import load_key
    from taskapi.audit_verify import verify
    from tests.taskapi.helpers import audited, run_until

    monkeypatch.setenv("TIDINGS_MASTER_KEY", os.urandom(32).hex())
    settings = dataclasses.replace(settings_for(tmp_path), keys=f"sqlite:///{tmp_path}/keys.db")
    with running(settings) as (client, _app):
        client.post("/tasks", json={"title": "t", "assignee": "alice"})

    async def one_line() -> bool:
        return len(audited(settings)) == 1

    await run_until(settings, one_line)
    (line,) = audited(settings)
    event = line["event"]
    assert event["data"]["$sealed"]  # the audit keeps the ciphertext it was sent
    assert b"alice" not in b"".join(p.read_bytes() for p in settings.audit_dir.iterdir())
    assert mask(event["data"])["assignee"] == MASK
    store = SqlKeyStore(str(settings.keys))
    assert Shredder(store).open(event["id"], event["data"])["assignee"] == "alice"
    with running(settings) as (client, _app):
        assert client.delete("/people/alice").status_code == 204
    assert (
        Shredder(SqlKeyStore(str(settings.keys))).open(event["id"], event["data"])["assignee"]
        == ERASED
    )  # the audit's copy reads as erased
    assert verify(settings.audit_dir, load_key(settings)).ok  # and no line changed
    assert audited(settings) == [line]
    store.close()
