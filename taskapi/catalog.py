"""The system's event catalog as the documentation site shows it: every service of the
system started once on a log of its own in memory, so that each records what it
subscribes to and publishes, then :mod:`tidings.catalog` written as HTML.

What it cannot show is what only a running system's log holds (the causal flows, example
payloads): for those, run the system (``./scripts/demo``), then
``tidings catalog taskapi.contracts:app --html DIR`` on its log.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from taskapi.events import API, API_TYPES, TOPIC, register
from taskapi.services import SERVICES, build
from taskapi.settings import Settings
from tidings import Tidings
from tidings.catalog import build_catalog, write_html

__all__ = ["write_catalog"]

URL = "memory://taskapi"  # what the catalog's pages say it was made of


async def write_catalog(folder: Path | str) -> list[Path]:
    """Write the system's catalog into ``folder``; the files written."""
    with tempfile.TemporaryDirectory() as data:  # the services' inbox files
        settings = Settings.from_env(data, env={"TIDINGS_URL": URL})
        async with contextlib.AsyncExitStack() as stack:
            api = register(Tidings(URL, service=API))
            api.publishes(TOPIC, API_TYPES)
            await stack.enter_async_context(api)
            for name in SERVICES:
                await stack.enter_async_context(build(name, settings, stack))
            return write_html(await build_catalog(api.transport), folder)
