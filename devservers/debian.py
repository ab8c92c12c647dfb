"""Programs from Debian's packages (Prometheus, Chromium): taken from PATH, else
installed with apt-get where this process is root. The tests' policy on a program that
is missing (skip, or fail in CI) is tests/debian.py's."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

APT_TIMEOUT = 600  # seconds, for one apt-get command
# Processes running side by side (test workers) take this lock, so one installs and
# the others wait for it: dpkg's own lock would make the second apt-get fail at once.
LOCK = Path(__file__).resolve().parent.parent / ".cache" / "apt.lock"


class Unavailable(Exception):
    """The program is missing and cannot be installed here; the message says what to
    install."""


def _apt(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            ["apt-get", *args], capture_output=True, timeout=APT_TIMEOUT, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def debian_program(name: str, package: str) -> str:
    """The path of ``name``, a program of Debian's ``package``: from PATH, else
    installed with ``apt-get install`` if root; else :class:`Unavailable`."""
    found = shutil.which(name)
    if found:
        return found
    why = f"{name} is not on PATH"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(
            f"{why}, and apt-get cannot install it here (not root, or no apt-get): "
            f"install Debian's {package} package (apt-get install {package})"
        )
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file is closed
        found = shutil.which(name)  # another process installed it meanwhile
        if found:
            return found
        install = ("install", "-y", "--no-install-recommends", package)
        if not _apt(*install) and not (_apt("update") and _apt(*install)):
            raise Unavailable(f"{why}; apt-get install -y {package} failed")
    found = shutil.which(name)
    if found is None:
        raise Unavailable(f"{why}, even after apt-get install -y {package}")
    return found
