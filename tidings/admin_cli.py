"""The operating commands of ``tidings`` (topics, groups, publish, tail, offsets)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the operating commands on the ``tidings`` sub-parser."""
