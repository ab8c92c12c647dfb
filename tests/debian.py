"""The tests' policy on a program from Debian's packages (Prometheus, Chromium): taken
from PATH; else, as root with apt-get, installed (devservers/debian.py); else the test
is skipped saying what to install, and failed where ``CI=true`` (CI must run it)."""

from __future__ import annotations

import os

import pytest

from devservers.debian import APT_TIMEOUT, Unavailable, debian_program

__all__ = ["APT_TIMEOUT", "debian_binary"]


def debian_binary(name: str, package: str) -> str:
    """The path of ``name``, a program of Debian's ``package``, installed if need be
    and possible; else the calling test is skipped (failed in CI)."""
    try:
        return debian_program(name, package)
    except Unavailable as why:
        if os.environ.get("CI") == "true":
            pytest.fail(str(why))
        pytest.skip(str(why))
