"""Debian's Chromium, headless, driven by Playwright (PyPI ``playwright``): Playwright's
own browser download is never used, it is pointed at ``/usr/bin/chromium``.

The flags keep Chromium off the network but for the pages it is sent to: without
``--disable-background-networking`` and its kin, its own connections to Google's hosts
are refused by a closed network many at a time. Playwright gives each launch a fresh
profile folder of its own (and removes it), so no run sees another's cookies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

ARGS = (
    "--headless",
    "--no-sandbox",  # root, and no user namespaces in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LAUNCH_TIMEOUT_MS = 120_000  # a loaded machine starts Chromium slowly


@contextmanager
def chromium(executable: str) -> Iterator[Browser]:
    """A headless Chromium (``executable``, e.g. from
    :func:`devservers.debian.debian_program`) under Playwright's synchronous API; closed,
    and its processes gone, when the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=list(ARGS), timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()
