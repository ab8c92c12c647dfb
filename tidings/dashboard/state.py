"""What the pages of one dashboard share: the opened log, its settings, what is kept
between looks (lag samples, dead-letter logs), the templates, running jobs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

import jinja2

from tidings import admin
from tidings.admin import size_text
from tidings.app import Tidings
from tidings.catalog.scan import Kept
from tidings.dashboard.background import Gate, in_background, mark_background, polite
from tidings.dashboard.config import Config
from tidings.dashboard.text import utc
from tidings.dead_letters import DeadLetter, DeadLetterLog, Filter
from tidings.trace import Tracer, note
from tidings.transport import Transport
from tidings.transports import open_transport

if TYPE_CHECKING:
    from tidings.outbox import Outbox
    from tidings.trace import Trace

__all__ = ["DASHBOARD_SOURCE", "Dashboard", "Job"]

log = logging.getLogger(__name__)

DASHBOARD_SOURCE = "tidings-dashboard"
"""The ``source`` of the events the dashboard publishes (its actions)."""
HISTORY = 720  # samples kept of each look per partition: an hour at one per 5 s
JOBS_KEPT = 50  # finished jobs remembered, for their progress pages
TRACERS_KEPT = 16  # the trace page's latest tracers, each read on from where it was
JOB_GRACE = 60.0  # seconds a closing dashboard waits for its running jobs


@dataclass
class Job:
    """A long action (a replay) running beside the pages, with its progress."""

    id: str
    action: str
    group: str
    total: int
    done: int = 0
    finished: bool = False
    error: str | None = None
    started: float = field(default_factory=time.time)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "action": self.action,
            "group": self.group,
            "done": self.done,
            "total": self.total,
            "finished": self.finished,
            "error": self.error,
        }


class Dashboard:
    """One dashboard over the log at ``config.url``: opened on the first request
    (so that it works mounted in another app, whose lifespan it does not get), closed
    by :meth:`close`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.windows = admin.LagWindows()  # lag samples where the log keeps none
        self.history = admin.LagWindows(HISTORY)  # what each look saw, for the charts
        # Every group's dead letters (every entry, without its original), read once for
        # the counts, the list pages and the trace alike.
        self.dead_logs: dict[str, DeadLetterLog] = {}
        self.jobs: dict[str, Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # running jobs, kept from the GC
        self._ids = itertools.count(1)
        self._app: Tidings | None = None
        self._outboxes: list[tuple[str, Outbox]] | None = None
        self.tracers: dict[tuple[str, int], Tracer] = {}  # (id, scan) -> its tracer
        self.catalog_scan = Kept()  # the catalog's scan, read on by each build
        self.counted: set[str] = set()  # groups whose dead letters the counting has read
        self.counting: asyncio.Task[None] | None = None
        self.gate = Gate()  # the background reading waits while a page is answered
        self.reading: set[str] = set()  # what the reading at start has still to read
        self.catalog_lock = asyncio.Lock()  # one catalog build at a time (its Kept)
        self.lag_stamps: dict[tuple[str, int, int], int] = {}  # admin.partition_lag's
        self._listings: dict[str, tuple[object, list[DeadLetter]]] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._trace_lock = asyncio.Lock()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("tidings.dashboard", "templates"),
            autoescape=True,  # every value is escaped unless a template says otherwise
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["utc"] = utc
        self.templates.filters["size"] = size_text
        self.templates.filters["trace_note"] = note  # progress and cancellations, as the CLI says

    async def app(self) -> Tidings:
        """The opened log (opened now if it is not yet)."""
        if self._app is None:
            async with self._lock:
                if self._app is None:
                    transport = open_transport(self.config.url, create=False)
                    app = Tidings(self.config.url, service=DASHBOARD_SOURCE, transport=transport)
                    self._app = await self._stack.enter_async_context(app)
        return self._app

    async def transport(self) -> Transport:
        return (await self.app()).transport

    def start_counting(self) -> None:
        """Read in the background (at server start) what the first pages would wait
        for, pages first (:mod:`~tidings.dashboard.background`): the append times of
        the lag, every group's dead-letter log (the first reading of 100,000 entries
        takes seconds; the counts, the list pages and the trace use the same logs), then
        the catalog's scan. Until a group's dead letters are read, :meth:`uncounted`
        names it and the pages say "counting..." in place of its figures, and its list
        page "reading..."; until the catalog's scan is read, ``"catalog"`` is in
        :attr:`reading` and its pages say "reading..."."""
        if self.counting is None:
            self.reading = {"lag", "dead letters", "catalog", "dead-letter lists"}
            self.counting = asyncio.get_running_loop().create_task(self._count())

    async def _count(self) -> None:
        from tidings.catalog import DEFAULT_SCAN, build_catalog
        from tidings.dead_letters import waiting

        mark_background()
        try:
            transport = polite(await self.transport(), self.gate)
            for name in self.templates.list_templates(filter_func=_is_page):
                await asyncio.sleep(0)  # a page asked meanwhile is let in
                await self.gate.turn()
                self.templates.get_template(name)  # compiled once, before the first page
            now = transport.clock.time_ms() / 1000
            for row in await admin.group_rows(transport):
                if row.lag:
                    await admin.partition_lag(transport, row, now, self.lag_stamps)
            self.reading.discard("lag")
            groups = sorted(info.group for info in await transport.groups())
            for group in groups:
                await waiting(transport, [group], self.dead_logs, resolved=True)
                self.counted.add(group)
            self.reading -= {"dead letters", "dead-letter lists"}
            async with self.catalog_lock:
                await build_catalog(transport, scan_limit=DEFAULT_SCAN, kept=self.catalog_scan)
            self.reading.discard("catalog")
        except Exception:  # the pages read the logs themselves, and show what failed
            log.exception("the dashboard's reading at start failed")
        finally:
            self.reading.clear()

    def still_reading(self, groups: Iterable[str]) -> list[str]:
        """What the reading at start has still to read, as the pages waiting for it
        name it (their ``data-reading``): ``catalog``, ``dead-letter lists`` (all the
        list pages' logs: the trace's) and ``dead-letter list GROUP`` of ``groups``."""
        lists = [f"dead-letter list {g}" for g in sorted(set(groups))]
        return sorted(self.reading) + [key for key in lists if self.unread(key)]

    def unread(self, key: str) -> bool:
        """Whether the reading at start has still to read ``key`` (see
        :meth:`still_reading`): the page asking says "reading..." until it is read."""
        if not self.reading:
            return False
        if key.startswith("dead-letter list "):
            return "dead-letter lists" in self.reading and key[17:] not in self.counted
        return key in self.reading

    async def counted_all(self) -> None:
        """Wait for the counting at start to be over (tests, benchmarks)."""
        if self.counting is not None:
            await asyncio.gather(self.counting, return_exceptions=True)

    def uncounted(self, groups: Iterable[str]) -> set[str]:
        """Of ``groups``, those whose dead letters the counting at start has not read
        yet (none once it is over, or if it was not started: the pages read them)."""
        if self.counting is None or self.counting.done():
            return set()
        return {g for g in groups if g not in self.counted}

    async def dead_log(self, group: str) -> DeadLetterLog:
        """``group``'s dead letters, every entry without its original (read in full by
        :func:`~tidings.dead_letters.read_entry`), refreshed: only what is new is read."""
        from tidings.dead_letters import open_log

        kept = self.dead_logs.get(group)
        transport = await self.transport()
        if in_background():
            transport = polite(transport, self.gate)
        async with self.gate.wanting() if not in_background() else contextlib.nullcontext():
            if kept is None:
                kept = await open_log(transport, group, values=False)
                self.dead_logs[group] = kept
            else:
                await kept.refresh()  # under its lock: the background's reading goes on
        return kept

    async def trace(self, id: str, scan: int) -> Trace:
        """The trace of ``id`` as :func:`tidings.trace.trace` gives it, by a tracer kept
        for the next look at the same id: that one reads only what was appended since
        (its window, the newest ``scan`` records of each partition when first read,
        grows with what is new), and the dead letters through :meth:`dead_log`'s logs."""
        busy = self.gate.wanting() if self.reading else contextlib.nullcontext()
        async with busy, self._trace_lock:  # the background may hold a log's lock
            tracer = self.tracers.pop((id, scan), None)
            if tracer is None:
                tracer = Tracer(await self.transport(), id, scan=scan, dead_logs=self.dead_logs)
            self.tracers[(id, scan)] = tracer  # the newest last
            for old in list(self.tracers)[: max(len(self.tracers) - TRACERS_KEPT, 0)]:
                del self.tracers[old]
            await tracer.refresh()
            return tracer.trace()

    async def outboxes(self) -> list[tuple[str, Outbox]]:
        """The outbox tables whose backlog the overview shows, opened once: the
        scheduler's where the log keeps it (SQLite), and ``config.outbox_db``'s."""
        if self._outboxes is None:
            from tidings.outbox import DEFAULT_TABLE, Outbox
            from tidings.scheduler import SCHEDULER_TABLE, default_scheduler_db

            app = await self.app()
            url = self.config.url
            found = []
            db = default_scheduler_db(url)
            if db is not None and not url.startswith("memory:"):
                found.append(
                    (f"scheduler ({SCHEDULER_TABLE})", Outbox(app, db, table=SCHEDULER_TABLE))
                )
            if self.config.outbox_db is not None:
                table = self.config.outbox_table or DEFAULT_TABLE
                found.append((f"outbox ({table})", Outbox(app, self.config.outbox_db, table=table)))
            self._outboxes = found
        return self._outboxes

    async def dead_listing(
        self, group: str, where: Filter, *, every: bool
    ) -> tuple[DeadLetterLog, list[DeadLetter]]:
        """``group``'s log, and its entries that ``where`` matches (``every``: in any
        state) as :meth:`~tidings.dead_letters.DeadLetterLog.matching` gives them (as
        ``tidings dlq list`` lists them); the last of each group is kept until the log
        changes."""
        log = await self.dead_log(group)
        key = (log.changes, every, where)
        kept = self._listings.get(group)
        if kept is not None and kept[0] == key:
            return log, kept[1]
        entries = log.matching(where, include_resolved=every)
        self._listings[group] = (key, entries)
        return log, entries

    def new_job(self, action: str, group: str, total: int) -> Job:
        job = Job(str(next(self._ids)), action, group, total)
        self.jobs[job.id] = job
        finished = [j for j in self.jobs.values() if j.finished]
        for old in finished[: max(len(finished) - JOBS_KEPT, 0)]:
            del self.jobs[old.id]
        return job

    async def close(self) -> None:
        """Let running jobs finish (a replay cut short is safe to run again, but a
        finished one needs no second look), then close the log."""
        if self.counting is not None:
            self.counting.cancel()
            await asyncio.gather(self.counting, return_exceptions=True)
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=JOB_GRACE)
        for task in list(self.tasks):
            task.cancel()
        for _, outbox in self._outboxes or ():
            await outbox.dispose()
        self._outboxes = None
        await self._stack.aclose()
        self._app = None


def _is_page(name: str) -> bool:
    return name.endswith(".html")


def static_folder() -> str:
    """Where the CSS and the script are, in the installed package."""
    return str(resources.files("tidings.dashboard") / "static")
