"""The Python code blocks of the README and docs/, as the tests read and run them.

A page's Python blocks run in order, as one program: one namespace and one event loop
per page, top-level ``await`` allowed (as in ``python -m asyncio``), in a temporary
folder, without ``$TIDINGS_URL``, so the default app uses an embedded SQLite log there.
An HTML comment right above a block (invisible on the site and on GitHub) changes that:

- ``<!-- run: skip REASON -->``: the block is only compiled; the reason is required;
- ``<!-- run: file NAME.py -->``: the block is the file NAME.py of the example (written
  to the folder, importable), not run by itself.

A comment ``<!-- run: hidden`` whose next lines, up to ``-->``, are Python runs that code
at its place in the page: stand-ins for the reader's own objects (a mailer, a model),
or a check that an example did what the text says.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"^<!-- run: (\w+)(.*?)\s*(-->)?$")

Kind = Literal["run", "skip", "file", "hidden"]


@dataclass(frozen=True)
class Step:
    """One Python block of a page (or hidden code): what to do with it, and where."""

    kind: Kind
    source: str
    line: int  # of the page, 1-based, where the source starts
    arg: str = ""  # the reason of a skip, the name of a file

    @property
    def visible(self) -> bool:
        return self.kind != "hidden"


def steps(text: str) -> list[Step]:
    """The Python blocks and hidden code of a page's Markdown, in order."""
    lines = [*text.splitlines(), ""]
    found: list[Step] = []
    kind: Kind = "run"
    arg = ""
    i = 0
    while i < len(lines):
        if m := MARKER.match(lines[i]):
            if m[1] == "hidden":
                if m[2].strip() or m[3]:
                    raise ValueError(f"line {i + 1}: hidden code goes on the lines below")
                end = lines.index("-->", i + 1)  # ValueError: an unclosed hidden block
                found.append(Step("hidden", "\n".join(lines[i + 1 : end]) + "\n", i + 2))
                i = end + 1
                continue
            if m[1] not in ("skip", "file") or not m[3]:
                raise ValueError(f"line {i + 1}: unknown or unclosed marker {lines[i]!r}")
            kind, arg = ("skip" if m[1] == "skip" else "file"), m[2].strip()
            if not arg:
                raise ValueError(f"line {i + 1}: '<!-- run: {kind} -->' needs a reason or name")
            below = FENCE.match(lines[i + 1])
            if below is None or below[2] != "python":
                raise ValueError(f"line {i + 1}: a marker must be right above a python block")
        elif fence := FENCE.match(lines[i]):
            closing = [j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"]
            if not closing:
                raise ValueError(f"line {i + 1}: a code block without its closing fence")
            end = closing[0]
            if fence[2] == "python":
                indent = len(fence[1])
                body = "".join(f"{raw[indent:]}\n" for raw in lines[i + 1 : end])
                found.append(Step(kind, body, i + 2, arg))
                kind, arg = "run", ""
            i = end
        i += 1
    return found


def python_blocks(page: Path) -> list[str]:
    """The visible Python blocks of a page (what a reader copies)."""
    return [step.source for step in steps(page.read_text()) if step.visible]


def run_page(page: Path, folder: Path) -> tuple[int, int]:
    """Run ``page``'s blocks in ``folder`` (already the current directory, and on
    ``sys.path``); returns how many blocks ran (or were written as files) and how many
    were skipped. A failing
    block raises, its traceback pointing at the page's lines."""
    before = set(sys.modules)
    # A module of its own, as a reader's script is, for libraries that look a class's
    # module up (SQLAlchemy resolves Mapped[...] annotations there).
    example = sys.modules["example"] = types.ModuleType("example")
    namespace = example.__dict__
    ran = skipped = 0
    try:
        with asyncio.Runner() as runner:
            for step in steps(page.read_text()):
                if step.kind == "file":
                    (folder / step.arg).write_text(step.source)
                    ran += 1
                    continue
                # Padded so that the code's line numbers are the page's.
                source = "\n" * (step.line - 1) + step.source
                code = compile(source, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                if step.kind == "skip":
                    skipped += 1
                    continue
                result = eval(code, namespace)
                if inspect.iscoroutine(result):
                    runner.run(result)
                ran += step.visible
    finally:  # the example's own modules (its files, its stand-ins) go with it
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None)
            if origin is None or Path(origin).is_relative_to(folder):
                del sys.modules[name]
    return ran, skipped
