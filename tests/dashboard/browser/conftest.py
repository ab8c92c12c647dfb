"""One Chromium for all browser tests, one seeded log and one ``tidings dashboard``
process per test process; a fresh browser context (no cookies shared) and page per
test. Chromium is Debian's (tests/debian.py: installed as root, else skipped saying
what to install, failed where ``CI=true``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devservers.chromium import chromium
from devservers.dashboard import run_dashboard
from tests.dashboard.browser.seed_app import seed
from tests.debian import debian_binary

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ACTION_TIMEOUT_MS = 60_000  # a click or a wait for an element, on a loaded machine


# One Chromium per module, not per session: Playwright's synchronous API keeps its event
# loop marked as running in this thread while it is open, so every asyncio test that the
# same xdist process ran after a browser test failed ("Cannot run the event loop while
# another loop is running"). pytest closes a module's fixtures before the next module's
# tests run.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium(debian_binary("chromium", "chromium")) as browser:
        yield browser


@pytest.fixture(scope="session")
def browser_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="session")
def seeded_url(browser_folder: Path) -> str:
    """The SQLite log of tests/dashboard/browser/seed_app.py, seeded by a real worker."""
    url = f"sqlite:///{browser_folder}/log.db"
    seed(url)
    return url


@pytest.fixture(scope="session")
def dashboard(seeded_url: str, browser_folder: Path) -> Iterator[str]:
    """The base address of ``tidings dashboard`` on the seeded log."""
    with run_dashboard(seeded_url, browser_folder / "dashboard.log", counted=True) as running:
        yield running.base


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()
