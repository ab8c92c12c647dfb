"""The Python blocks of the README and the guide run, as the reader would run them: in
order, against an embedded SQLite log in a temporary folder (tests/docblocks.py says
how, and how a page marks a block that cannot run there)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from tests.docblocks import ROOT, run_page, steps

# The pages whose blocks run, and how many of their blocks each skips (a skip says why
# above the block; a new one is a choice made here, not a block that quietly stopped).
PAGES = {"README.md": 1, "docs/guide.md": 1, "docs/agents.md": 0, "docs/personal-data.md": 0}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_python_blocks_of_the_page_run(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for variable in ("TIDINGS_URL", "TIDINGS_SCHEDULER_URL"):
        monkeypatch.delenv(variable, raising=False)
    blocks = [step for step in steps((ROOT / page).read_text()) if step.visible]
    ran, skipped = run_page(ROOT / page, tmp_path)
    assert (ran, skipped) == (len(blocks) - PAGES[page], PAGES[page])
    assert (tmp_path / "tidings.db").exists()  # on the default, embedded SQLite log


def test_every_page_marks_its_blocks_with_markers_the_runner_knows() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        steps(page.read_text())  # raises on an unknown marker, a skip without a reason


def _command_lines(page: Path) -> list[str]:
    """The ``tidings ...`` lines of a page's shell blocks (fenced, or indented by four),
    without their comments and with their optional parts (``[--all]``) left out."""
    found, fence = [], None
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:]
            continue
        shell = fence in ("sh", "bash", "console", "") or (fence is None and line[:4] == "    ")
        command = line.strip().removeprefix("$ ")
        if shell and command.startswith("tidings "):
            command = re.split(r"\s+#", command)[0]
            found.append(re.sub(r"\s*\[[^]]*\]", "", command))
    return found


def test_every_command_line_the_pages_show_is_one_the_cli_takes() -> None:
    from tidings.cli import build_parser
    from tidings.cli.common import UsageError

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = [(page.name, line) for page in pages for line in _command_lines(page)]
    assert len(lines) > 50
    refused = []
    for name, line in lines:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args(shlex.split(line)[1:])
        except UsageError as exc:
            refused.append(f"{name}: {line}: {exc}")
        except SystemExit:  # --help
            pass
    assert refused == []


def _run(markdown: str, tmp_path: Path) -> tuple[int, int]:
    page = tmp_path / "page.md"
    page.write_text(markdown)
    return run_page(page, tmp_path)


def test_a_failing_block_fails_with_the_line_of_the_page(tmp_path: Path) -> None:
    markdown = "# t\n\n```python\nx = 1\n```\n\n```python\nawait f(x)\n```\n"
    with pytest.raises(NameError) as failed:
        _run(markdown, tmp_path)
    assert failed.traceback[-1].lineno + 1 == 8  # pytest's line numbers are 0-based


def test_blocks_share_one_namespace_and_loop_and_markers_change_what_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    markdown = """
<!-- run: file helper.py -->
```python
def double(x): return 2 * x
```

<!-- run: hidden
import asyncio
await asyncio.sleep(0)
loop = asyncio.get_running_loop()
-->

```python
from helper import double
await asyncio.sleep(0)
assert asyncio.get_running_loop() is loop
y = double(21)
```

<!-- run: skip it would fail: y is 42 -->
```python
assert y == 0
```

```python
assert y == 42
```
"""
    assert _run(markdown, tmp_path) == (3, 1)


@pytest.mark.parametrize(
    ("markdown", "error"),
    [
        ("<!-- run: skip -->\n```python\nx\n```\n", "needs a reason"),
        ("<!-- run: skip why -->\n\n```python\nx\n```\n", "right above"),
        ("<!-- run: sometimes -->\n```python\nx\n```\n", "unknown"),
        ("<!-- run: hidden x = 1 -->\n", "lines below"),
        ("```python\nx\n", "closing fence"),
    ],
)
def test_a_bad_marker_or_an_unclosed_fence_is_refused(markdown: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        steps(markdown)
