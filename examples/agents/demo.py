"""One command runs the pipeline: the stand-in (unless a model URL is set), a worker,
N requests (one of them rejected, one cancelled on the way, one the stand-in always
fails on), and a console that prints
progress and results until every request is summarised, rejected, cancelled or
dead-lettered (with the reason)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.agents import pipeline
from examples.agents.settings import Settings
from examples.agents.standin import DEMO_FAULTS, Faults, Server
from tidings import Context, Tidings, Worker
from tidings.dead_letters import open_log
from tidings.errors import TopicNotFound

QUESTIONS = [
    "Why are there two high tides a day?",
    "What are spring tides and neap tides?",
    "How do tides slow the rotation of the Earth?",
    "",  # rejected by validation
    "Where is the tidal range largest, and why?",
    "How is tidal energy turned into electricity?",
    "What lives on the shore between the tides?",
    "How does a storm surge add to a high tide?",
    "Are there tides in the Sargasso Sea?",  # the demo's stand-in always fails on it
]
CANCELLED = 1  # the index of the request cancelled after its first progress report
AGENT_GROUPS = ("researchers", "summarisers")


@dataclass
class Report:
    """What became of each request, by request id: ``summarised``, ``rejected``,
    ``cancelled`` or ``dead: <group> <error type>: <message>``; and the progress
    fractions each reported, in the order they arrived."""

    outcomes: dict[str, str] = field(default_factory=dict)
    progress: dict[str, list[float]] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)
    correlations: dict[str, str] = field(default_factory=dict)  # request id -> correlation id
    cancelled: str | None = None


def watch(app: Tidings, report: Report, out: Callable[[str], None]) -> None:
    """A console group: prints the pipeline's events and notes how requests ended."""

    @app.subscriber(pipeline.TOPIC, group="console")
    async def show(payload: Any, ctx: Context) -> None:
        rid = str(ctx.event.subject)
        if ctx.event.type.endswith(".progressed"):
            report.progress.setdefault(rid, []).append(payload["fraction"])
            out(f"{rid}  {payload['group']:<11} {payload['fraction']:4.0%}  {payload['note']}")
        elif isinstance(payload, pipeline.AnalysisRejected):
            report.outcomes[rid] = "rejected"
            out(f"{rid}  rejected: {payload.reason}")
        elif isinstance(payload, pipeline.ResearchCompleted):
            docs = sorted({p.document for p in payload.passages})
            out(f"{rid}  research completed: {len(payload.passages)} passages from {docs}")
        elif isinstance(payload, pipeline.SummaryGenerated):
            report.outcomes[rid] = "summarised"
            report.summaries[rid] = payload.summary
            out(f"{rid}  summary: {payload.summary}")


async def dead_letters(app: Tidings, report: Report, out: Callable[[str], None]) -> None:
    """Note the requests the agents gave up on, with the reason."""
    by_correlation = {c: r for r, c in report.correlations.items()}
    for group in AGENT_GROUPS:
        try:
            dead = await open_log(app.transport, group, values=False)
        except TopicNotFound:
            continue
        for entry in dead.entries.values():
            rid = by_correlation.get(entry.correlationid or "")
            if rid and rid not in report.outcomes:
                report.outcomes[rid] = f"dead: {group} {entry.error_type}: {entry.error_message}"
                out(
                    f"{rid}  dead-lettered by {group} after {entry.attempts} attempts: "
                    f"{entry.error_type}: {entry.error_message}"
                )


@contextlib.contextmanager
def model_url(settings: Settings, faults: Faults) -> Iterator[str]:
    """The model API's base URL: the settings', or a stand-in's started for the run."""
    if settings.base_url:
        yield settings.base_url
        return
    with Server(faults) as server:
        yield server.url


async def run(
    settings: Settings,
    faults: Faults = DEMO_FAULTS,
    questions: list[str] = QUESTIONS,
    cancel: int | None = CANCELLED,
    out: Callable[[str], None] = print,
    deadline: float = 600.0,
) -> Report:
    """Run the pipeline on ``questions`` until each request has an outcome (or
    ``deadline`` seconds pass: TimeoutError); return the report."""
    report = Report()
    with tempfile.TemporaryDirectory() as folder, model_url(settings, faults) as url:
        log_url = settings.log_url or f"sqlite:///{Path(folder) / 'agents.db'}"
        model = pipeline.client(settings, url)
        app = pipeline.build(settings, model, log_url)
        watch(app, report, out)
        out(f"model API: {url} ({settings.model}); log: {log_url}")
        async with model, app:
            worker = Worker(app)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                await asyncio.wait_for(worker.ready.wait(), 60)
                await _requests(app, worker, report, questions, cancel, out, deadline)
            finally:
                stop.set()
                await task
    return report


async def _requests(
    app: Tidings,
    worker: Worker,
    report: Report,
    questions: list[str],
    cancel: int | None,
    out: Callable[[str], None],
    deadline: float,
) -> None:
    ids = [f"req-{i + 1}" for i in range(len(questions))]
    for rid, question in zip(ids, questions, strict=True):
        asked = pipeline.AnalysisRequested(request_id=rid, question=question, docset="tides")
        event = await app.publish(pipeline.TOPIC, asked)
        report.correlations[rid] = event.correlationid or event.id  # a new chain: its own id
        out(f"{rid}  asked: {question!r}")
    ends = time.monotonic() + deadline
    while any(rid not in report.outcomes for rid in ids):
        if cancel is not None and report.cancelled is None and report.progress.get(ids[cancel]):
            report.cancelled = ids[cancel]
            await app.cancel(report.correlations[ids[cancel]], reason="the user left")
            out(f"{ids[cancel]}  cancelled: the user left")
        if report.cancelled and report.cancelled not in report.outcomes and worker.stats.cancelled:
            report.outcomes[report.cancelled] = "cancelled"
        await dead_letters(app, report, out)
        if time.monotonic() > ends:
            missing = [rid for rid in ids if rid not in report.outcomes]
            raise TimeoutError(f"no outcome within {deadline} s for {missing}")
        await asyncio.sleep(0.1)
