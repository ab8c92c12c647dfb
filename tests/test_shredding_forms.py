"""The sealed forms (decisions 0036 and 0044): v2, one ciphertext per subject and event,
written now; v1, one per field, still read from the logs that hold it. Tampering, a
ciphertext moved to another event or field, the wrong key, erasure and masks, for both."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from tests.test_shredding import Assigned, Contact, Pair, Team
from tidings.errors import DecodeError
from tidings.shredding import ERASED, MASK, Shredder
from tidings.shredding.fields import SEALED, mask, shown
from tidings.shredding.redaction import clear_values


class Fixed:
    """A key store with the fixed keys the v1 documents below were sealed with."""

    def __init__(self) -> None:
        self.keys = {
            f"k-{s}": bytes(range(i, i + 32)) for i, s in enumerate(["ann", "bob", "p1", "p2"])
        }

    def key_for(self, subject: str) -> tuple[str, bytes]:
        return f"k-{subject}", self.keys.setdefault(f"k-{subject}", bytes(32))

    def key(self, kid: str) -> bytes | None:
        return self.keys.get(kid)

    def erase(self, subject: str) -> str | None:
        return f"k-{subject}" if self.keys.pop(f"k-{subject}", None) else None

    def kids(self) -> list[str]:
        return list(self.keys)


# Sealed by main at 1d830a9 (form v1) with Fixed's keys: events e-1, e-2 and e-3.
V1_ANN = orjson.loads(
    '{"task_id":"t","assignee":{"$enc":"v1","kid":"k-ann","ct":"AY2TcGePBdEAAAAAOWcDhprm/K2tO6'
    'EtSWFrlprERmQ7"},"email":{"$enc":"v1","kid":"k-ann","ct":"AY2TcGePBdEAAAABIh4YW777FdLQYlmfF'
    'YnwD3IDY0LGqRim"},"n":0}'
)
V1_BOB = orjson.loads(
    '{"task_id":"t","assignee":{"$enc":"v1","kid":"k-bob","ct":"AY2TcGePBdEAAAACub0ieIetqrm2I1'
    'FdNP95yOyEqIIq"},"email":{"$enc":"v1","kid":"k-bob","ct":"AY2TcGePBdEAAAADMA/Wldue06Buv9GE/'
    'uJgEBbRj4b21f2+"},"n":0}'
)
V1_TEAM = orjson.loads(
    '{"name":"blue","members":[{"person_id":"p1","phones":[{"$enc":"v1","kid":"k-p1","ct":"AY2Tc'
    'GePBdEAAAAEmKlsb0Cv7FzRL3zBwE3qyNJmtQ=="},{"$enc":"v1","kid":"k-p1","ct":"AY2TcGePBdEAAAAF'
    'w+A3Jj/nQ/JL9v3EM6HAo0/5Hw=="}]},{"person_id":"p2","phones":[{"$enc":"v1","kid":"k-p2","ct'
    '":"AY2TcGePBdEAAAAG70jYtkY2u4sIwVsXI1lJqu0PGw=="}]}]}'
)
TEAM = Team(
    name="blue",
    members=[Contact(person_id="p1", phones=["1", "2"]), Contact(person_id="p2", phones=["3"])],
)


def lines(data: dict[str, Any]) -> list[list[str]]:
    """The v2 sealed lines of ``data``, each as [kid, base64, path, ...]."""
    return [line.split(" ") for line in data[SEALED].split("\n")]


def with_line(data: dict[str, Any], i: int, **parts: str) -> dict[str, Any]:
    """``data`` with parts of its ``i``-th sealed line replaced (kid, ct or paths)."""
    found = lines(data)
    kid, ct, *paths = found[i]
    found[i] = [
        parts.get("kid", kid),
        parts.get("ct", ct),
        *parts.get("paths", " ".join(paths)).split(" "),
    ]
    return {**data, SEALED: "\n".join(" ".join(line) for line in found)}


# -- v2 --------------------------------------------------------------------------------


def test_v2_holds_masks_in_place_and_one_ciphertext_per_subject() -> None:
    shredder = Shredder(Fixed())
    data = shredder.seal("e-1", Assigned(task_id="t", assignee="ann", email="a@x.io", n=3))
    assert data is not None
    assert {k: v for k, v in data.items() if k != SEALED} == {
        "task_id": "t", "assignee": MASK, "email": MASK, "n": 3,
    }  # fmt: skip
    ((kid, ct, *paths),) = lines(data)
    assert (kid, paths) == ("k-ann", ["assignee", "email"])
    assert b"ann" not in base64.b64decode(ct)
    assert b"a@x.io" not in orjson.dumps(data)
    assert shredder.open("e-1", data) == {
        "task_id": "t",
        "assignee": "ann",
        "email": "a@x.io",
        "n": 3,
    }
    assert mask(data) == {"task_id": "t", "assignee": MASK, "email": MASK, "n": 3}
    assert shown("e-1", data, None) == mask(data)


def test_v2_a_none_field_stays_none_and_is_not_sealed() -> None:
    shredder = Shredder(Fixed())
    data = shredder.seal("e-1", Assigned(task_id="t", assignee="ann"))
    assert data is not None
    assert data["email"] is None
    assert [line[2:] for line in lines(data)] == [["assignee"]]
    assert shredder.open("e-1", data)["email"] is None


def test_v2_seals_each_subject_apart_and_erases_one_of_them() -> None:
    shredder = Shredder(Fixed())
    data = shredder.seal("e-1", Pair(owner="ann", buyer="bob"))
    assert data is not None
    assert [(line[0], line[2:]) for line in lines(data)] == [
        ("k-ann", ["owner"]), ("k-bob", ["buyer"]),
    ]  # fmt: skip
    assert shredder.open("e-1", data) == {"owner": "ann", "buyer": "bob"}
    assert shredder.erase("bob") == "k-bob"
    assert shredder.open("e-1", data) == {"owner": "ann", "buyer": ERASED}
    assert mask(data) == {"owner": MASK, "buyer": MASK}


def test_v2_nested_lists_are_sealed_per_subject_and_opened_without_changing_the_input() -> None:
    shredder = Shredder(Fixed())
    data = shredder.seal("e-3", TEAM)
    assert data is not None
    assert [(line[0], line[2:]) for line in lines(data)] == [
        ("k-p1", ["members[0].phones[0]", "members[0].phones[1]"]),
        ("k-p2", ["members[1].phones[0]"]),
    ]
    before = copy.deepcopy(data)
    assert shredder.open("e-3", data) == TEAM.model_dump(mode="json")
    assert data == before  # the data read is shared by every reader of the event
    assert mask(data)["members"][0]["phones"] == [MASK, MASK]
    shredder.erase("p1")
    opened = shredder.open("e-3", data)
    assert opened["members"][0]["phones"] == [ERASED, ERASED]
    assert opened["members"][1]["phones"] == ["3"]


def test_v2_a_tampered_byte_a_moved_ciphertext_and_the_wrong_key_fail_authentication() -> None:
    shredder = Shredder(Fixed())
    one = shredder.seal("e-1", Assigned(task_id="t", assignee="ann", email="a@x.io"))
    other = shredder.seal("e-2", Assigned(task_id="t", assignee="bob", email="b@x.io"))
    assert one is not None
    assert other is not None
    raw = bytearray(base64.b64decode(lines(one)[0][1]))
    raw[-1] ^= 1
    flipped = with_line(one, 0, ct=base64.b64encode(raw).decode())
    with pytest.raises(DecodeError, match="assignee email of event e-1 fails authentication"):
        shredder.open("e-1", flipped)
    with pytest.raises(DecodeError, match="fails authentication"):  # into another event
        shredder.open("e-2", {**other, SEALED: one[SEALED]})
    with pytest.raises(DecodeError, match="fails authentication"):  # onto other fields
        shredder.open("e-1", with_line(one, 0, paths="email assignee"))
    with pytest.raises(DecodeError, match="fails authentication"):  # onto fewer fields
        shredder.open("e-1", with_line(one, 0, paths="assignee"))
    with pytest.raises(DecodeError, match="fails authentication"):  # another subject's key
        shredder.open("e-1", with_line(one, 0, kid="k-bob"))
    with pytest.raises(DecodeError, match="malformed"):
        shredder.open("e-1", {**one, SEALED: "k-ann"})
    with pytest.raises(DecodeError, match="malformed"):
        shredder.open("e-1", with_line(one, 0, ct="not-base64"))
    assert shredder.open("e-1", one)["email"] == "a@x.io"


def test_v2_the_clear_values_a_handler_got_are_found_for_redaction() -> None:
    shredder = Shredder(Fixed())
    data = shredder.seal("e-3", TEAM)
    assert data is not None
    assert clear_values(data, shredder.open("e-3", data)) == []  # "1", "2", "3": too short
    one = shredder.seal("e-1", Assigned(task_id="t", assignee="anne", email="a@x.io"))
    assert one is not None
    assert clear_values(one, shredder.open("e-1", one)) == ["a@x.io", "anne"]


# -- v1, read only ---------------------------------------------------------------------


def test_v1_documents_sealed_before_still_open_mask_and_read_as_erased() -> None:
    shredder = Shredder(Fixed())
    assert shredder.open("e-1", V1_ANN) == {
        "task_id": "t",
        "assignee": "ann",
        "email": "a@x.io",
        "n": 0,
    }
    assert shredder.open("e-3", V1_TEAM) == TEAM.model_dump(mode="json")
    assert mask(V1_ANN) == {"task_id": "t", "assignee": MASK, "email": MASK, "n": 0}
    assert clear_values(V1_ANN, shredder.open("e-1", V1_ANN)) == ["a@x.io", "ann"]
    shredder.erase("p1")
    opened = shredder.open("e-3", V1_TEAM)
    assert opened["members"][0]["phones"] == [ERASED, ERASED]
    assert opened["members"][1]["phones"] == ["3"]
    shredder.erase("ann")
    assert shredder.open("e-1", V1_ANN)["assignee"] == ERASED


def test_v1_a_tampered_byte_a_moved_ciphertext_and_the_wrong_key_fail_authentication() -> None:
    shredder = Shredder(Fixed())
    one, other = V1_ANN, V1_BOB
    raw = bytearray(base64.b64decode(one["email"]["ct"]))
    raw[-1] ^= 1
    flipped = {**one, "email": {**one["email"], "ct": base64.b64encode(raw).decode()}}
    with pytest.raises(DecodeError, match="email of event e-1 fails authentication"):
        shredder.open("e-1", flipped)
    with pytest.raises(DecodeError, match="fails authentication"):  # into another event
        shredder.open("e-2", {**other, "email": one["email"]})
    with pytest.raises(DecodeError, match="fails authentication"):  # onto another field
        shredder.open("e-1", {**one, "assignee": one["email"]})
    with pytest.raises(DecodeError, match="fails authentication"):  # another subject's key
        shredder.open("e-1", {**one, "email": {**one["email"], "kid": "k-bob"}})
    assert shredder.open("e-1", one)["email"] == "a@x.io"
