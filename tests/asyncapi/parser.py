"""The official AsyncAPI parser (npm ``@asyncapi/parser``), installed once and run in
a ``node`` subprocess: the judge of the documents tidings writes, not a check of ours.

:func:`install` puts the version pinned by ``package.json`` and ``package-lock.json``
(beside this file; every dependency's version and checksum) into ``.cache/asyncapi-
parser/`` at the repository's root (:mod:`tests.npm_pinned`; a fresh install
downloads about 170 small packages). :func:`parse` runs ``parse.cjs`` on files and returns what the
parser said of each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import npm_pinned

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "parse.cjs"
ERROR = 0  # Spectral's severities: 0 error, 1 warning, 2 information, 3 hint


class ParserUnavailable(Exception):
    """``node`` or ``npm`` is not on the PATH."""


@dataclass(frozen=True)
class Parsed:
    """What the parser said of one document."""

    parsed: bool  # False: it produced no document
    diagnostics: list[dict[str, Any]]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [d for d in self.diagnostics if d["severity"] == ERROR]


def install() -> Path:
    """The folder where the pinned parser is installed; installs it if needed."""
    try:
        return npm_pinned.install(HERE, "asyncapi-parser", "validate AsyncAPI documents")
    except npm_pinned.ToolUnavailable as exc:
        raise ParserUnavailable(str(exc)) from None


def parse(cache: Path, *files: Path) -> dict[Path, Parsed]:
    """Run the parser installed in ``cache`` on ``files``; what it said of each."""
    node = shutil.which("node") or "node"
    done = subprocess.run(
        [node, str(SCRIPT), str(cache), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"parse.cjs failed ({done.returncode}):\n{done.stderr}")
    said = json.loads(done.stdout)
    return {Path(f): Parsed(said[str(f)]["parsed"], said[str(f)]["diagnostics"]) for f in files}
