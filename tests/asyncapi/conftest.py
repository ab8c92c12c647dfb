"""The AsyncAPI parser for the whole session: installed once (``parser.install``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.asyncapi.parser import Parsed, ParserUnavailable, install, parse

Validate = Callable[[Mapping[str, Any]], dict[str, Parsed]]


@pytest.fixture(scope="session")
def asyncapi_parser() -> Path:
    """Where ``@asyncapi/parser`` is installed. Without node or npm the tests that need
    it are skipped on a developer's machine; in CI (``CI=true``) they fail."""
    try:
        return install()
    except ParserUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture
def validate(asyncapi_parser: Path, tmp_path: Path) -> Validate:
    """Write each named document to a file and parse them all in one node process;
    what the parser said of each, by name."""

    def run(documents: Mapping[str, Any]) -> dict[str, Parsed]:
        files = {}
        for name, doc in documents.items():
            files[name] = tmp_path / f"{name}.json"
            files[name].write_text(json.dumps(doc, indent=2))
        said = parse(asyncapi_parser, *files.values())
        return {name: said[file] for name, file in files.items()}

    return run
