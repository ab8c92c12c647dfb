"""The official AsyncAPI parser (npm ``@asyncapi/parser``), installed once and run in
a ``node`` subprocess: the judge of the documents tidings writes, not a check of ours.

:func:`install` puts the version pinned by ``package.json`` and ``package-lock.json``
(beside this file; every dependency's version and checksum) into ``.cache/asyncapi-
parser/`` at the repository's root with ``npm ci``, unless the lock there is already
this one. Test processes running side by side take a file lock, so one installs and
the others wait for it. :func:`parse` runs ``parse.cjs`` on files and returns what the
parser said of each.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent.parent / ".cache" / "asyncapi-parser"
SCRIPT = HERE / "parse.cjs"
INSTALL_TIMEOUT = 600  # seconds: a fresh install downloads about 170 small packages
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


def install(cache: Path = CACHE) -> Path:
    """The folder where the pinned parser is installed; installs it if needed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ParserUnavailable(
            "node and npm are needed to validate AsyncAPI documents with @asyncapi/parser "
            "(Debian: apt-get install nodejs npm)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    lock = (HERE / "package-lock.json").read_bytes()
    with open(cache / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file is closed
        stamp = cache / ".installed-lock.json"
        if stamp.exists() and stamp.read_bytes() == lock and (cache / "node_modules").is_dir():
            return cache
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(HERE / name, cache / name)
        # --ignore-scripts: no install script runs (one dependency's reports usage).
        done = subprocess.run(
            [npm, "ci", "--prefix", str(cache), "--ignore-scripts", "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm ci of @asyncapi/parser failed:\n{done.stdout}\n{done.stderr}")
        stamp.write_bytes(lock)
    return cache


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
