"""The log the browser tests (and the screenshots) look at, filled by a real worker.

:func:`seed` runs :func:`build`'s app until:

- group ``mail`` dead-lettered notes n=0..3 (``TimeoutError`` for even n, ``OSError``
  for odd n: two error types for the dead-letter filters);
- group ``audit`` handled every note (lag 0);
- group ``reports`` handled the first report, then stopped: the reports published after
  it wait for it (lag :data:`REPORTS_WAITING`).

``tidings run tests.dashboard.browser.seed_app:app --group reports --url URL`` (from the
repository's root) is the worker that drains ``reports``, as :func:`drain` starts it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from tidings import Retry, Tidings
from tidings.dead_letters import open_log
from tidings.testing import eventually, running

ROOT = Path(__file__).resolve().parents[3]
NOTES = 4
REPORTS_WAITING = 30


class Note(BaseModel):
    note_id: str
    n: int


class Report(BaseModel):
    report_id: str
    pages: int


def build(url: str | None = None) -> Tidings:
    """The app: ``mail`` fails every note once (no retries), ``audit`` and ``reports``
    handle theirs."""
    app = Tidings(url, service="browser-seed")
    app.event("note.added", subject="note_id")(Note)
    app.event("report.filed", subject="report_id")(Report)

    @app.subscriber("notes", group="mail", retry=Retry(max_attempts=1))
    async def send(note: Note) -> None:
        raise (TimeoutError if note.n % 2 == 0 else OSError)(f"note {note.n}: mail is down")

    @app.subscriber("notes", group="audit")
    async def record(note: Note) -> None:
        pass

    @app.subscriber("reports", group="reports")
    async def file(report: Report) -> None:
        pass

    return app


app = build()  # for `tidings run ...seed_app:app`: the URL comes from --url


async def _seed(url: str) -> None:
    seeding = build(url)
    async with seeding:
        async with running(seeding):
            await seeding.publish_many(
                "notes", [Note(note_id=f"note-{n}", n=n) for n in range(NOTES)],
                correlation_id="browser-seed",
            )  # fmt: skip
            await seeding.publish("reports", Report(report_id="report-0", pages=1))

            async def settled() -> bool:
                dead = (await open_log(seeding.transport, "mail")).depth() == NOTES
                lags = {g.group: g.lag for g in await seeding.transport.groups()}
                return dead and lags.get("audit") == 0 and lags.get("reports") == 0

            await eventually(settled, timeout=120, interval=0.1, what="the seeded log")
        waiting = range(1, REPORTS_WAITING + 1)
        await seeding.publish_many(
            "reports", [Report(report_id=f"report-{n}", pages=n) for n in waiting]
        )


def seed(url: str) -> None:
    """Fill the log at ``url`` (a new SQLite log) as the module docstring says."""
    asyncio.run(_seed(url))


def drain(url: str, log: Path) -> subprocess.Popen[bytes]:
    """Start the worker that drains group ``reports`` (stop it by its PID)."""
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    argv = [sys.executable, "-m", "tidings", "run", f"{__name__}:app", "--group", "reports"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*argv, "--url", url], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
