"""The public API is exactly the curated ``tidings.__all__``."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

import tidings

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
