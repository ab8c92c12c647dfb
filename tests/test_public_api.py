"""The public API is exactly the curated ``tidings.__all__``, plus the declared public
modules' ``__all__``; the reference system and the documented examples use nothing else."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re

import pytest

import tidings
from tests.docblocks import python_blocks

ERRORS = {
    "TidingsError",
    "ConfigError",
    "EventError",
    "InvalidEventType",
    "EventTooLarge",
    "DecodeError",
    "UnknownEventType",
    "TransportError",
    "TopicNotFound",
    "GroupNotFound",
    "GroupBusy",
}

PUBLIC = ERRORS | {
    # the application
    "Tidings",
    "Subscriber",
    "Worker",
    "Context",
    "correlation_scope",
    "current_scope",
    "DEFAULT_URL",
    # reliability
    "Retry",
    "Inbox",
    "Outbox",
    # the envelope and its codec
    "Event",
    "new_id",
    "encode",
    "decode",
    "DEFAULT_MAX_EVENT_BYTES",
    # transports
    "Transport",
    "open_transport",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(tidings.__all__) == PUBLIC
    assert len(tidings.__all__) == len(set(tidings.__all__)), "a name is listed twice"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_is_importable(name: str) -> None:
    module = importlib.import_module("tidings")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from tidings import {name}", namespace)
    assert namespace[name] is getattr(tidings, name)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from tidings import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_the_public_exceptions_are_the_tidings_errors() -> None:
    exceptions = {
        name
        for name in PUBLIC
        if inspect.isclass(getattr(tidings, name))
        and issubclass(getattr(tidings, name), BaseException)
    }
    assert exceptions == ERRORS
    for name in ERRORS:
        assert issubclass(getattr(tidings, name), tidings.TidingsError), name


def test_the_exported_errors_are_the_tree_drawn_in_the_errors_docstring() -> None:
    import tidings.errors

    doc = tidings.errors.__doc__ or ""
    parents: list[tuple[int, str]] = []  # (column, name) of the open branches
    drawn: set[str] = set()
    checked = 0
    for line in doc.splitlines():
        found = re.search(r"── (\w+)", line) or re.fullmatch(r"\s+(TidingsError)", line)
        if found is None:
            continue
        name = found.group(1)
        column = found.start(1)
        while parents and parents[-1][0] >= column:
            parents.pop()
        if parents:
            assert issubclass(getattr(tidings, name), getattr(tidings, parents[-1][1])), name
            checked += 1
        parents.append((column, name))
        drawn.add(name)
    assert drawn == ERRORS
    assert checked == len(ERRORS) - 1  # every error but the root hangs under a parent


def test_the_documented_default_url() -> None:
    assert tidings.DEFAULT_URL == "sqlite:///./tidings.db"


def test_version_is_exposed() -> None:
    assert isinstance(tidings.__version__, str)
    assert tidings.__version__.count(".") >= 2


# -- public modules ------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parent.parent
PUBLIC_MODULES = {
    "tidings",
    "tidings.errors",
    "tidings.middleware",
    "tidings.testing",
    "tidings.transport",
    "tidings.transports",
    "tidings.codec",
    "tidings.asgi",
    "tidings.outbox",
    "tidings.inbox",
    "tidings.scheduler",
    "tidings.sqltypes",
    "tidings.dead_letters",
    "tidings.admin",
    "tidings.schema",
    "tidings.personal",
    "tidings.shredding",
    "tidings.asyncapi",
    "tidings.catalog",
    "tidings.dashboard",
    "tidings.logs",
    "tidings.metrics",
    "tidings.otel",
    "tidings.aggregates",
    "tidings.projections",
    "tidings.sagas",
}


def test_the_public_modules_are_declared_in_the_package_docstring() -> None:
    declared = set(re.findall(r"^- (.+?):", tidings.__doc__ or "", re.MULTILINE))
    names = {m.strip("`") for line in declared for m in line.split(", ")}
    assert names == PUBLIC_MODULES


@pytest.mark.parametrize("module", sorted(PUBLIC_MODULES))
def test_each_public_module_lists_its_api_and_every_name_exists(module: str) -> None:
    loaded = importlib.import_module(module)
    assert isinstance(getattr(loaded, "__all__", None), list | tuple), f"{module} has no __all__"
    for name in loaded.__all__:
        assert getattr(loaded, name, None) is not None, f"{module}.{name}"


def _tidings_imports(source: str) -> list[tuple[str, str | None]]:
    """(module, name) of each ``from tidings... import name`` and ``import tidings...``."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tidings":
            found.extend((node.module or "", alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, None) for a in node.names if a.name.split(".")[0] == "tidings")
    return found


def _example_sources() -> list[tuple[str, str]]:
    """taskapi's and examples/'s modules, and the Python code blocks of the README and docs/."""
    modules = [*(ROOT / "taskapi").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]
    sources = [(str(p.relative_to(ROOT)), p.read_text()) for p in modules]
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for i, block in enumerate(python_blocks(page)):
            sources.append((f"{page.relative_to(ROOT)} (python block {i + 1})", block))
    return sources


def test_taskapi_and_the_documented_examples_import_only_public_names() -> None:
    private = []
    checked = 0
    for where, source in _example_sources():
        try:
            imports = _tidings_imports(source)
        except SyntaxError:
            continue  # a fragment (e.g. "..."), not a program
        for module, name in imports:
            checked += 1
            if module not in PUBLIC_MODULES:
                private.append(f"{where}: {module} is not a public module")
            elif name is not None and name not in importlib.import_module(module).__all__:
                private.append(f"{where}: {module}.{name} is not in its __all__")
    assert checked > 20  # the walk found the imports
    assert private == []


def test_each_public_module_has_its_page_in_the_api_reference() -> None:
    """docs/api/ holds one page per public module, rendered by mkdocstrings from the
    module's docstrings (``::: module``); mkdocs.yml's nav lists them (the strict build
    fails on a page left out)."""
    pages = {page.stem: page.read_text() for page in (ROOT / "docs" / "api").glob("*.md")}
    assert set(pages) == PUBLIC_MODULES
    for module, text in pages.items():
        assert f"\n::: {module}\n" in text, module
