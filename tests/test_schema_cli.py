"""``tidings schema list|show|diff|set-mode|check|export``, in process, against a SQLite
log: output, exit codes (0, 1 on a break, 2 on bad usage) and one-line errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tidings.cli import main
from tidings.cli.common import load_app
from tidings.errors import SchemaIncompatible

V1 = """
class OrderPlaced(BaseModel):
    order_id: str
    total: float
"""
V2_WIDER = """
class OrderPlacedV2(BaseModel):
    order_id: str
    total: float | str
"""
V2_NARROWER = """
class OrderPlacedV2(BaseModel):
    order_id: str
    total: int
"""


def app_module(folder: Path, *versions: str, breaking: bool = False) -> str:
    """Write a module with ``app``, registering ``versions`` of order.placed; return
    its ``module:app``."""
    name = f"orders_{uuid.uuid4().hex[:8]}"
    lines = [
        "from pydantic import BaseModel",
        "from tidings import Tidings",
        "app = Tidings(service='billing')",
    ]
    for n, source in enumerate(versions, 1):
        lines.append(source)
        cls = source.split("class ")[1].split("(")[0]
        flag = ", breaking=True" if breaking and n > 1 else ""
        lines.append(f"app.event('order.placed', version={n}{flag})({cls})")
    (folder / f"{name}.py").write_text("\n".join(lines) + "\n")
    return f"{name}:app"


def start_and_stop(spec: str) -> None:
    """Start the app (registering its contracts) and stop it."""
    app = load_app(spec)

    async def run() -> None:
        async with app:
            pass

    asyncio.run(run())


@pytest.fixture
def url(here: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{here / 'events.db'}"
    monkeypatch.setenv("TIDINGS_URL", url)
    start_and_stop(app_module(here, V1))  # order.placed v1 registered
    return url


def schema(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["schema", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_exits_0_when_the_contracts_fit_and_1_with_the_report_on_a_break(
    url: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = schema(capsys, "check", app_module(here, V1, V2_WIDER), "--url", url)
    assert code == 0
    assert "ok: 2 contract(s)" in out
    broken = app_module(here, V1, V2_NARROWER)
    code, out, _ = schema(capsys, "check", broken, "--url", url)
    assert code == 1
    assert out.startswith("order.placed v2: breaks BACKWARD\n")
    assert "data.total: number -> integer narrows the type" in out
    # The app refuses to start with the same report.
    with pytest.raises(SchemaIncompatible) as refused:
        start_and_stop(broken)
    assert refused.value.report == out.rstrip("\n")
    code, out, _ = schema(capsys, "check", broken, "--url", url, "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["problems"][0]["version"] == 2


def test_a_declared_major_version_passes_the_check_and_is_recorded(
    url: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    major = app_module(here, V1, V2_NARROWER, breaking=True)
    assert schema(capsys, "check", major, "--url", url)[0] == 0
    start_and_stop(major)
    code, out, _ = schema(capsys, "show", "order.placed", "--url", url)
    assert code == 0
    assert "version:       2 (breaking: a new major version)" in out


def test_set_mode_changes_what_check_says(
    url: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = app_module(here, V1, V2_NARROWER)
    wider = app_module(here, V1, V2_WIDER)
    code, out, _ = schema(capsys, "set-mode", "order.placed", "none", "--url", url)
    assert (code, out) == (0, "order.placed: mode NONE, policy LENIENT\n")
    assert schema(capsys, "check", broken, "--url", url)[0] == 0
    assert schema(capsys, "set-mode", "order.placed", "FORWARD", "--url", url)[0] == 0
    code, out, _ = schema(capsys, "check", wider, "--url", url)
    assert code == 1
    assert "order.placed v2: breaks FORWARD" in out


def test_list_show_and_diff(url: str, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start_and_stop(app_module(here, V1, V2_WIDER))
    code, out, _ = schema(capsys, "list", "--url", url)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "TYPE", "VERSIONS", "MODE", "POLICY", "FINGERPRINT", "REGISTERED", "BY", "AT"
    ]  # fmt: skip
    assert row.split()[:4] == ["order.placed", "1,2", "BACKWARD", "LENIENT"]
    assert "billing@" in row
    [listed] = json.loads(schema(capsys, "list", "--url", url, "--json")[1])
    assert [v["version"] for v in listed["versions"]] == [1, 2]

    code, out, _ = schema(capsys, "show", "order.placed", "--version", "1", "--url", url)
    assert code == 0
    assert "version:       1\n" in out
    assert '"title": "OrderPlaced"' in out
    shown = json.loads(schema(capsys, "show", "order.placed", "--json", "--url", url)[1])
    assert shown["version"] == 2
    assert shown["schema"]["properties"]["total"]["anyOf"]

    code, out, _ = schema(capsys, "diff", "order.placed", "1", "2", "--url", url)
    assert code == 0
    assert "data.total: number -> number | string widens the union; breaks FORWARD\n" in out


def test_unknown_types_and_versions_and_bad_modes_are_one_line_errors(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = schema(capsys, "show", "order.paid", "--url", url)
    assert (code, out) == (1, "")
    assert err == (
        "tidings: error: order.paid is not in the schema registry; registered types: order.placed\n"
    )
    code, _, err = schema(capsys, "show", "order.placed", "--version", "3", "--url", url)
    assert code == 1
    assert "order.placed has no version 3 in the schema registry; registered: v1" in err
    code, _, err = schema(capsys, "diff", "order.placed", "1", "3", "--url", url)
    assert code == 1
    assert "has no version 3" in err
    code, _, err = schema(capsys, "set-mode", "order.placed", "SIDEWAYS", "--url", url)
    assert code == 2
    assert "'SIDEWAYS' is not a compatibility mode: use one of NONE, BACKWARD" in err
    code, _, err = schema(capsys, "set-mode", "order.paid", "NONE", "--url", url)
    assert code == 1
    assert "order.paid is not in the schema registry" in err


def test_export_then_check_against_the_folder(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDINGS_URL", f"sqlite:///{here / 'none.db'}")  # never opened
    folder = here / "schemas"
    code, out, _ = schema(capsys, "export", app_module(here, V1), str(folder))
    assert code == 0
    assert out.endswith("1 contract(s) exported to " + str(folder) + " (1 changed)\n")
    written = (folder / "order.placed.v1.json").read_text()
    doc = json.loads(written)
    assert (doc["type"], doc["version"], doc["breaking"]) == ("order.placed", 1, False)
    assert written == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert schema(capsys, "export", app_module(here, V1), str(folder))[1].endswith("(0 changed)\n")

    broken = app_module(here, V1, V2_NARROWER)
    code, out, _ = schema(capsys, "check", broken, "--against", str(folder))
    assert code == 1
    assert "order.placed v2: breaks BACKWARD" in out
    wider = app_module(here, V1, V2_WIDER)
    assert schema(capsys, "check", wider, "--against", str(folder))[0] == 0
    assert schema(capsys, "check", broken, "--against", str(folder), "--mode", "NONE")[0] == 0
    code, _, err = schema(capsys, "check", broken, "--mode", "NONE")
    assert code == 2
    assert "--mode goes with --against DIR" in err
    code, _, err = schema(capsys, "check", broken, "--against", str(here / "missing"))
    assert code == 2
    assert "is not a folder of exported schemas" in err
    (folder / "order.placed.v2.json").write_text(written)  # v1's content under v2's name
    code, _, err = schema(capsys, "check", broken, "--against", str(folder))
    assert code == 2
    assert "holds order.placed.v1.json" in err


def test_forget_service_forgets_a_record_and_names_the_recorded_ones_when_unknown(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = schema(capsys, "forget-service", "shop", "--url", url)
    assert code == 2  # as for a type the registry does not hold
    assert "no service 'shop' is recorded in the registry (recorded: billing)" in err
    code, out, _ = schema(capsys, "forget-service", "billing", "--url", url)
    assert (code, out) == (0, "forgot service billing (groups: none)\n")
    code, _, err = schema(capsys, "forget-service", "billing", "--url", url)
    assert code == 2
    assert "(recorded: none)" in err
