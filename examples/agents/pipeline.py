"""The research pipeline: a question becomes a summary through two agents.

``analysis.requested`` -> validation (fast, deterministic: ``analysis.accepted`` or
``analysis.rejected``) -> the researcher (slow: asks the model which passages of the
document set are relevant, a batch of documents per call, reporting progress) ->
``research.completed`` -> the summariser (streams the model's summary) ->
``summary.generated``. One topic, ``analysis``; the subject (the partition key) is the
request's id, so one request's events stay in order.

The agents call an OpenAI-compatible chat API through the official ``openai`` client
with its own retries off (``max_retries=0``): the handler deadline and tidings's retry
policy act instead, so every attempt, timeout and give-up is the worker's, visible in
its stats and dead letters, and a 429 waits on the partition rather than in a client.
"""

from __future__ import annotations

import re

import openai
from openai import AsyncOpenAI
from pydantic import BaseModel

from examples.agents import docsets
from examples.agents.settings import Settings
from tidings import Context, Retry, Tidings

TOPIC = "analysis"
MAX_QUESTION = 300
MAX_PASSAGES = 6
REF = re.compile(r"\[(\d+)\]")

RESEARCHER = (
    "You are a researcher. Given a question and numbered passages, name the passages "
    "relevant to the question. Answer with their numbers only, like: Relevant: [2] [5]. "
    "If none is relevant, answer: Relevant: none."
)
SUMMARISER = (
    "You summarise. Given a question and the passages found for it, write a summary of "
    "at most three sentences that answers the question from the passages alone."
)


class Passage(BaseModel):
    document: str
    text: str


class AnalysisRequested(BaseModel):
    request_id: str
    question: str
    docset: str


class AnalysisAccepted(BaseModel):
    request_id: str
    question: str
    docset: str


class AnalysisRejected(BaseModel):
    request_id: str
    reason: str


class ResearchCompleted(BaseModel):
    request_id: str
    question: str
    passages: list[Passage]


class SummaryGenerated(BaseModel):
    request_id: str
    question: str
    summary: str
    sources: list[str]


def client(settings: Settings, base_url: str) -> AsyncOpenAI:
    """The agents' model client. Its own retries are off: tidings retries (see above).
    Its timeout is twice the handler deadline, so the deadline is what ends a hang."""
    return AsyncOpenAI(
        base_url=base_url, api_key=settings.api_key, max_retries=0, timeout=2 * settings.timeout
    )


def check(request: AnalysisRequested) -> str | None:
    """Why ``request`` cannot be worked on, or None."""
    if not request.question.strip():
        return "the question is empty"
    if len(request.question) > MAX_QUESTION:
        return f"the question is longer than {MAX_QUESTION} characters"
    if request.docset not in docsets.names():
        return f"no document set {request.docset!r} (there are: {', '.join(docsets.names())})"
    return None


def numbered(batch: list[docsets.Document]) -> list[Passage]:
    return [Passage(document=d.name, text=p) for d in batch for p in d.passages]


def prompt(question: str, passages: list[Passage]) -> str:
    lines = "\n".join(f"[{i}] {p.text}" for i, p in enumerate(passages, 1))
    return f"Question: {question}\n\nPassages:\n{lines}"


async def ask(model: AsyncOpenAI, settings: Settings, system: str, user: str) -> str:
    """One chat call. A 429 (``openai.RateLimitError``) reaches the group's rate limit,
    which waits its ``Retry-After`` and calls again (not a failed attempt)."""
    reply = await model.chat.completions.create(
        model=settings.model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
    )
    return reply.choices[0].message.content or ""


async def ask_streaming(model: AsyncOpenAI, settings: Settings, system: str, user: str) -> str:
    """One streamed chat call, its chunks joined."""
    stream = await model.chat.completions.create(
        model=settings.model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return "".join(pieces)


def build(settings: Settings, model: AsyncOpenAI, log_url: str) -> Tidings:
    """The pipeline's app: its events and its three groups."""
    app = Tidings(log_url, service="research-pipeline")
    app.event("analysis.requested", subject="request_id")(AnalysisRequested)
    app.event("analysis.accepted", subject="request_id")(AnalysisAccepted)
    app.event("analysis.rejected", subject="request_id")(AnalysisRejected)
    app.event("research.completed", subject="request_id")(ResearchCompleted)
    app.event("summary.generated", subject="request_id")(SummaryGenerated)
    # The agents share the model API's limits: each group keeps under them together,
    # across its workers, and waits out a 429's Retry-After; and each works on several
    # requests (keys) of a partition at once, each request's events still in order.
    # A group's rate counts handler calls: a research is one model call per batch of
    # documents, a summary one; settings.rate (model calls per second) is shared so.
    per_request = -(-len(docsets.load("tides")) // settings.batch) + 1  # model calls
    rate = None if settings.rate is None else settings.rate / per_request
    for group in ("researchers", "summarisers"):
        app.group(
            group,
            cancellable=True,
            rate=rate,
            max_calls=settings.max_calls,
            concurrency=settings.concurrency,
        )
    policy = Retry(
        max_attempts=settings.attempts,
        base_delay=settings.backoff,
        max_delay=8 * settings.backoff,
        # A request the API refuses as such fails the same way every time.
        never=(openai.BadRequestError, openai.AuthenticationError, openai.NotFoundError),
    )

    @app.subscriber(TOPIC, group="validation", types=["analysis.requested"])
    async def validate(request: AnalysisRequested, ctx: Context) -> None:
        reason = check(request)
        if reason:
            await ctx.publish(TOPIC, AnalysisRejected(request_id=request.request_id, reason=reason))
        else:
            await ctx.publish(TOPIC, AnalysisAccepted(**request.model_dump()))

    @app.subscriber(
        TOPIC,
        group="researchers",
        types=["analysis.accepted"],
        timeout=settings.timeout,
        retry=policy,
        progress_every=settings.progress_every,
    )
    async def research(request: AnalysisAccepted, ctx: Context) -> None:
        documents = docsets.load(request.docset)
        batches = [
            documents[i : i + settings.batch] for i in range(0, len(documents), settings.batch)
        ]
        await ctx.progress(0.0, f"reading {len(documents)} documents")
        found: list[Passage] = []
        for i, batch in enumerate(batches, 1):
            passages = numbered(batch)
            answer = await ask(model, settings, RESEARCHER, prompt(request.question, passages))
            picked = (int(n) for n in REF.findall(answer))
            found += [passages[n - 1] for n in picked if 0 < n <= len(passages)]
            read = min(i * settings.batch, len(documents))
            await ctx.progress(i / len(batches), f"read {read} of {len(documents)} documents")
        research = ResearchCompleted(
            request_id=request.request_id, question=request.question, passages=found[:MAX_PASSAGES]
        )
        await ctx.publish(TOPIC, research)

    @app.subscriber(
        TOPIC,
        group="summarisers",
        types=["research.completed"],
        timeout=settings.timeout,
        retry=policy,
    )
    async def summarise(research: ResearchCompleted, ctx: Context) -> None:
        text = await ask_streaming(
            model, settings, SUMMARISER, prompt(research.question, research.passages)
        )
        sources = sorted({p.document for p in research.passages})
        summary = SummaryGenerated(
            request_id=research.request_id,
            question=research.question,
            summary=text,
            sources=sources,
        )
        await ctx.publish(TOPIC, summary)

    return app
