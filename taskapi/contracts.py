"""The system's event contracts as one app, for the ``tidings`` commands that read an
app's contracts without running it::

    tidings schema check taskapi.contracts:app     # may they be registered? (CI)
    tidings tail task-events --upcast taskapi.contracts:app
    tidings catalog taskapi.contracts:app --html site/catalog
    tidings asyncapi taskapi.contracts:app

Its log is the system's (``$TIDINGS_URL``, else ``<data>/events.db``; ``--url`` sets
``$TIDINGS_URL`` before this module is imported). It declares the topic and every type
with its owner, versions and upcasters (:func:`taskapi.events.register`); it has no
subscribers and is never started by the system itself.
"""

from __future__ import annotations

from taskapi.events import API, CHECKPOINTS, TOPIC, TYPES, register
from taskapi.settings import Settings
from tidings import Tidings

__all__ = ["app"]

app = register(Tidings(Settings.from_env().tidings_url, service=API))
app.publishes(TOPIC, TYPES)  # all of them: each contract's owner says which service
app.publishes(CHECKPOINTS, ["audit.checkpointed"])
