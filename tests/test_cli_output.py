"""The command line's shared pieces, in process: the output helpers every command
prints through, and the package's layering (a command module imports only the shared
modules of ``tidings.cli``, never another command module)."""

from __future__ import annotations

import ast
import io
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

import tidings.cli
from tidings.cli import output

CLI = Path(tidings.cli.__file__).parent
SHARED = {"tidings.cli.common", "tidings.cli.output"}


def test_a_table_aligns_its_columns_and_shows_none_as_a_dash() -> None:
    text = output.table(("NAME", "N"), [("a", 1), ("longer", None)])
    assert text.splitlines() == ["NAME    N", "a       1", "longer  -"]


def test_clip_keeps_short_text_and_marks_the_cut() -> None:
    assert output.clip("abc", 3, "…") == "abc"
    assert output.clip("abcdef", 5, "...") == "ab..."
    assert len(output.clip("x" * 100, 70, "…")) == 70


def test_utc_text_ends_in_z_for_utc_only() -> None:
    when = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
    assert output.utc_text(when) == "2026-11-22T10:00:00Z"
    assert output.utc_text(when, "milliseconds") == "2026-11-22T10:00:00.123Z"
    plus_two = when.astimezone(timezone(timedelta(hours=2)))
    assert output.utc_text(plus_two) == "2026-11-22T12:00:00+02:00"


@pytest.mark.parametrize(
    ("typed", "answer"),
    [("y\n", True), ("YES\n", True), ("n\n", False), ("maybe\n", False), ("\n", None), ("", None)],
)
def test_confirm_tells_yes_from_no_and_from_no_answer(
    typed: str,
    answer: bool | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(typed))
    assert output.confirm("drop 3?") is answer
    assert capsys.readouterr().out == "drop 3? [y/N] "


def test_progress_redraws_one_line_and_ends_it_when_done(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output.progress("replaying", 1, 2)
    output.progress("replaying", 2, 2)
    err = capsys.readouterr().err
    assert err == (
        "\rreplaying [" + "#" * 15 + "." * 15 + "] 1/2\rreplaying [" + "#" * 30 + "] 2/2\n"
    )


def test_errors_and_warnings_are_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_error("no such topic")
    output.print_warning("skipped one")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "tidings: error: no such topic\ntidings: warning: skipped one\n"


def _cli_imports(path: Path) -> set[str]:
    """The ``tidings.cli`` modules that ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            if node.module == "tidings.cli":
                found.update(names)
            elif node.module.startswith("tidings.cli"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tidings.cli"))
    return found


def test_command_modules_share_only_the_shared_modules() -> None:
    commands = [p for p in CLI.glob("*.py") if p.stem != "__init__"]
    assert len(commands) > len(SHARED)
    for path in commands:
        assert _cli_imports(path) <= SHARED - {f"tidings.cli.{path.stem}"}, path.name
