"""The operator dashboard: lag, dead letters, events, traces, the catalog, sagas and
projections in a browser (decision 0039, docs/dashboard.md)::

    tidings dashboard --url sqlite:///./tidings.db        # http://127.0.0.1:8080

or mounted in a FastAPI (any ASGI) service::

    from tidings.dashboard import app as ops_dashboard
    api.mount("/ops", ops_dashboard(url="sqlite:///./tidings.db", token=TOKEN))

Server-rendered HTML (Jinja2, every value escaped) over the operating library: every
figure comes from :mod:`tidings.admin`, :mod:`tidings.dead_letters`,
:mod:`tidings.trace`, :mod:`tidings.tail`, :mod:`tidings.catalog`,
:mod:`tidings.sagas` and :mod:`tidings.projections`, as the command line computes it.
The sagas come from ``sagas_db`` (``--sagas-db``) and the sagas of ``service`` (a
:class:`~tidings.Tidings` app, ``--app``), the projections from ``service``.
One small script (``static/dashboard.js``) applies live updates from ``GET /live``
(server-sent events) and enables copy buttons; no inline script (the CSP is
``script-src 'self'``), nothing from a CDN.

Safe by default: :func:`app` and ``tidings dashboard`` listen on 127.0.0.1; another
address needs a token or read-only mode. Every action (replay, purge, reset) is a POST
with a CSRF field matching the browser's cookie, a confirmation step
(``confirm=yes``), and is recorded on ``_tidings.admin`` (:func:`tidings.admin.record_action`).

What tests can rely on (ids and ``data-*`` attributes; kept stable):

- ``<body data-page=...>``: ``overview``, ``group``, ``dead-letters``, ``dead-letter``,
  ``confirm``, ``job``, ``events-index``, ``events``, ``trace``, ``catalog``,
  ``catalog-event``, ``sagas``, ``saga``, ``projections``, ``actions``, ``login``,
  ``error``. ``data-live-url`` where the page
  takes live updates; ``data-live-frames`` counts the frames applied. A page whose
  part the dashboard still reads at start says so in ``#reading[data-reading]`` (its
  ``<body>`` carries the same ``data-reading``; it reloads once that is read).
- Overview: ``#groups`` rows ``tr[data-group][data-topic]`` with cells
  ``[data-field=partitions|lag|lag_seconds|sparkline|lost|dlq|members|status|health]``
  (live-updated); ``#topics`` rows ``tr[data-topic]`` with ``[data-field=partitions|
  events|bytes|rate|ends]`` (``data-bytes`` holds the size in bytes); ``#backlogs``
  rows ``tr[data-backlog]``; ``#actions`` rows ``tr[data-action][data-target]`` with
  ``[data-field=who|action|count|detail]``.
- Group: ``#group-name``; ``#groups`` as above (its topics); ``.lag-chart[data-topic]``
  holding ``svg.chart[data-points]``; ``#partitions`` rows ``tr[data-topic]
  [data-partition]`` with ``[data-field=committed|end|lag|lag_seconds|lost|dlq|member|
  lease_age|health]``; ``#members`` rows ``tr[data-member]``; ``#reset-form`` (fields
  ``to``, ``topic``, ``force``), then ``#reset-preview[data-done]`` with rows
  ``[data-field=old|new|effect]`` and ``#confirm-form``; ``#reset-done`` once done.
- Dead letters: ``#dlq-depth`` (live), ``#dlq-total``, ``#dlq-filters`` (``type``,
  ``error_type``, ``since``, ``until``, ``all``); ``#dead-letters`` rows
  ``tr[data-entry][data-state][data-event-id]`` with a checkbox ``input[name=id]``;
  ``#replay-selected`` (in ``#selection-form``), ``#replay-form``, ``#purge-form``;
  ``#pager[data-page][data-pages]`` with ``a[rel=prev]``/``a[rel=next]``.
- A dead letter: ``#entry[data-entry][data-state]``, ``#entry-error``,
  ``#entry-traceback``, ``#entry-payload``, ``#reveal-link``, ``#replay-one``,
  ``#purge-one``.
- Confirmation: ``#confirm[data-action][data-count]`` with ``#confirm-form`` (field
  ``operator``: a name recorded with the action); after a purge ``#action-done
  [data-count]``. A replay redirects to its job: ``#job[data-job-id][data-finished]``
  with ``[data-field=done|total|state]`` (live) and ``progress#job-progress``.
- Events: ``#events-form`` (``from``, ``type``, ``subject``, ``correlation``, ``id``);
  ``#events`` items ``li.event[data-event-id][data-partition][data-offset]`` with
  ``pre.json`` and ``textarea.publish-line`` (``tidings publish`` input) and its
  ``button[data-copy]``; ``#pager a[rel=next]``; ``#timed-out``.
- Trace: ``#trace-form``; ``#trace-summary[data-events][data-kind]``; ``#trace-tree``
  of ``li.trace-node[data-event-id][data-type]`` with ``li[data-group][data-status]``;
  ``svg#trace-timeline`` with ``g[data-event-id]``; ``#trace-empty``. A progress or
  cancellation event's node holds ``span.trace-note[data-field=note]`` (what
  :func:`tidings.trace.note` says).
- Sagas: ``#sagas-form`` (``name``, ``status``, ``limit``); ``#sagas`` rows
  ``tr[data-saga][data-key][data-status]`` with ``[data-field=name|key|state|status|
  version|updated]``; ``#sagas-off`` when no database is given. A key's page:
  ``#saga-key``; ``section.saga[data-saga][data-key][data-state][data-status]
  [data-version]`` with ``[data-field=state|data|started|updated]``, ``table.history``
  rows ``tr[data-event-id]`` (``[data-field=type|from|to|note]``), ``table.deadlines``
  rows ``tr[data-deadline]``, ``table.parked``; ``#saga-none`` (404).
- Projections: ``section.projection[data-projection][data-lag][data-rebuilding]``
  with ``table.partitions`` rows ``tr[data-topic][data-partition]``
  (``[data-field=position|committed|end|lag]``); ``#projections-off`` without an app,
  ``#projections-none`` when it declares none.
- Catalog: ``#catalog`` rows ``tr[data-type]``; a type's page ``#event-type[data-type]``,
  ``#consumers``, ``#flows``, ``section.version[data-version]``. Every event type shown
  anywhere is ``a.event-type[data-type]``, linking to its catalog page.
- Errors: ``#message[data-status]`` with ``#error-text`` (what was wrong) and
  ``#error-hint`` (what to do); the login form is ``#login-form``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tidings.dashboard.config import DEFAULT_HOST, DEFAULT_PORT, PAGE_SIZE, Config, check_bind

if TYPE_CHECKING:
    from tidings.app import Tidings
    from tidings.shredding import Shredder

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Config", "app", "check_bind"]


def app(
    url: str | None = None,
    *,
    token: str | None = None,
    read_only: bool = False,
    shredder: Shredder | None = None,
    outbox_db: str | None = None,
    outbox_table: str | None = None,
    page_size: int = PAGE_SIZE,
    sagas_db: Sequence[str] = (),
    service: Tidings | None = None,
) -> Any:
    """The dashboard of the log at ``url`` (default: ``$TIDINGS_URL``, then
    ``sqlite:///./tidings.db``) as an ASGI application, to serve or to mount; the
    arguments as :class:`Config` takes them. Needs ``tidings[dashboard]``."""
    from tidings.app import default_url

    try:
        from tidings.dashboard.server import build
    except ImportError as exc:  # starlette or jinja2 missing
        from tidings.errors import ConfigError

        raise ConfigError(
            f"the dashboard needs its extra: pip install 'tidings[dashboard]' ({exc})"
        ) from None
    config = Config(
        url or default_url(), token=token, read_only=read_only, shredder=shredder,
        outbox_db=outbox_db, outbox_table=outbox_table, page_size=page_size,
        sagas_db=tuple(sagas_db), service=service,
    )  # fmt: skip
    return build(config)
