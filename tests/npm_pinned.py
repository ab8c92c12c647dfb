"""npm packages the tests run (the AsyncAPI parser, the Nu Html Checker), installed
once per lock file into ``.cache/<name>/`` at the repository's root.

:func:`install` copies a folder's ``package.json`` and ``package-lock.json`` (every
dependency's version and checksum, no download addresses) there and runs ``npm ci
--ignore-scripts``, unless the lock there is already this one. Test processes running
side by side take a file lock, so one installs and the others wait for it.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 600  # seconds


class ToolUnavailable(Exception):
    """A program the tool needs (``node``, ``npm``, ``java``) is not on the PATH."""


def install(package: Path, name: str, why: str) -> Path:
    """The folder where ``package``'s pinned tree is installed (``.cache/<name>``);
    installs it if needed. ``why`` completes "node and npm are needed to ..."."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        raise ToolUnavailable(
            f"node and npm are needed to {why} (Debian: apt-get install nodejs npm)"
        )
    cache = ROOT / ".cache" / name
    cache.mkdir(parents=True, exist_ok=True)
    lock = (package / "package-lock.json").read_bytes()
    with open(cache / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file is closed
        stamp = cache / ".installed-lock.json"
        if stamp.exists() and stamp.read_bytes() == lock and (cache / "node_modules").is_dir():
            return cache
        for file in ("package.json", "package-lock.json"):
            shutil.copyfile(package / file, cache / file)
        # --ignore-scripts: no install script runs (what they do, the tests do not need).
        done = subprocess.run(
            [npm, "ci", "--prefix", str(cache), "--ignore-scripts", "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm ci in {cache} failed:\n{done.stdout}\n{done.stderr}")
        stamp.write_bytes(lock)
    return cache
