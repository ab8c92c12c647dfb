"""The Nu Html Checker for the whole session: installed once (``html_check.install``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.catalog.html_check import install
from tests.npm_pinned import ToolUnavailable


@pytest.fixture(scope="session")
def vnu_jar() -> Path:
    """Where ``vnu.jar`` is. Without node, npm or java the tests that need it are
    skipped on a developer's machine; in CI (``CI=true``) they fail."""
    try:
        return install()
    except ToolUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
