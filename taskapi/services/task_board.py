"""The task-board service: keeps the ``task-board`` projection (:mod:`taskapi.board`)."""

from __future__ import annotations

import contextlib

from taskapi.board import NAME, declare
from taskapi.services import base_app
from taskapi.settings import Settings
from tidings import Tidings

__all__ = ["build"]


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    app = base_app(NAME, settings)
    projection = declare(app, settings)
    stack.callback(projection.close)
    return app
