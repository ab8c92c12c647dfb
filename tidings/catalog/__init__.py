"""The event catalog (decision 0022): every event type with its versions (schemas,
the changes between them, deprecation and sunset), description, owner, producers,
consumers (groups, the versions each reads, their SLAs), topics, partition key and
example payloads, and the flows between types that the causation of the events in the
log shows (``task.created -> task.reminder_due``)::

    async with app:
        catalog = await build_catalog(app.transport, app=app)
    print(render_text(catalog))
    write_html(catalog, "catalog/")  # a static site: no server, no script

- :func:`build_catalog`: from the log's schema registry (what every service recorded
  at start), an app's own declarations if given, and the newest events of each topic;
- :func:`render_text`, :func:`catalog_json`, :func:`write_html`: what ``tidings
  catalog``, ``--json`` and ``--html DIR`` print or write;
- :class:`Catalog`, :class:`EventInfo`, :class:`VersionInfo`, :class:`Producer`,
  :class:`Consumer`, :class:`Flow`: the catalog as data.
"""

from __future__ import annotations

from tidings.catalog.html import write_html
from tidings.catalog.model import (
    Catalog,
    Consumer,
    EventInfo,
    Flow,
    Producer,
    VersionInfo,
    build_catalog,
)
from tidings.catalog.scan import DEFAULT_SCAN
from tidings.catalog.text import catalog_json, render_text

__all__ = [
    "DEFAULT_SCAN",
    "Catalog",
    "Consumer",
    "EventInfo",
    "Flow",
    "Producer",
    "VersionInfo",
    "build_catalog",
    "catalog_json",
    "render_text",
    "write_html",
]
