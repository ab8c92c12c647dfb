"""A local stand-in for an OpenAI-compatible chat API, with a real one's faults.

``POST /v1/chat/completions`` (plain and ``stream=true``: server-sent ``data: {...}``
chunks ending with ``data: [DONE]``) and ``GET /v1/models``, in the shapes the official
``openai`` client parses. It behaves like a busy hosted model: seconds of latency, 429s
with ``Retry-After``, occasional 500s, and hangs (a request that is never answered:
only the caller's deadline ends it). Its answers come from :mod:`.textmodel`.

Every draw (latency, fault) comes from a random generator seeded with the seed, the
request's body and how many times that body was sent before: a run gives the same
answers and faults to the same requests whatever the order they arrive in.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from examples.agents import textmodel

MODEL = "standin-extractive"
QUESTION = re.compile(r"^Question:\s*(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Faults:
    """How the stand-in misbehaves. Rates are per request, in [0, 1].

    ``latency``: seconds before the first byte, drawn uniformly, times ``scale`` (tests
    scale it down). ``hang_on``/``fail_on``: a request whose messages contain one of
    these words always hangs / always gets a 500 (for tests that need a certain fault).
    """

    seed: int = 7
    latency: tuple[float, float] = (1.0, 3.0)
    scale: float = 1.0
    rate_429: float = 0.0
    retry_after: int = 1  # seconds, as the header says
    rate_500: float = 0.0
    rate_hang: float = 0.0
    hang_on: tuple[str, ...] = ()
    fail_on: tuple[str, ...] = ()
    # Like a hosted API's limit: past this many requests in the last second, a 429
    # (with ``retry_after``) whatever the draw. None: no such limit.
    limit_per_second: float | None = None


NO_FAULTS = Faults(latency=(0.0, 0.0), scale=0.0)
# The demo's: a busy hosted model, and a question it always fails on (the Sargasso Sea's).
DEMO_FAULTS = Faults(
    latency=(0.5, 1.5), rate_429=0.1, rate_500=0.05, rate_hang=0.03, fail_on=("sargasso",)
)


def answer(messages: list[dict[str, Any]]) -> str:
    """What the stand-in's model says to ``messages``: the researcher's system prompt
    mentions relevant passages, the summariser's asks for a summary."""
    system = " ".join(m.get("content") or "" for m in messages if m.get("role") == "system")
    prompt = "\n".join(m.get("content") or "" for m in messages if m.get("role") != "system")
    found = QUESTION.search(prompt)
    question = found.group(1) if found else prompt
    passages = textmodel.passages_of(prompt)
    if "relevant" in system.lower():
        picked = textmodel.relevant(question, passages)
        refs = " ".join(f"[{n}]" for n in picked) or "none"
        return f"Relevant: {refs}\nKeywords: {', '.join(textmodel.keywords(question))}"
    if "summar" in system.lower():
        return textmodel.summary(question, passages) or "Nothing relevant was found."
    return f"Keywords: {', '.join(textmodel.keywords(prompt))}"


class StandIn:
    """The stand-in's ASGI app and its fault draws. ``hung`` counts requests left
    unanswered; ``requests`` counts all, ``faults`` by kind (for tests)."""

    def __init__(self, faults: Faults = DEMO_FAULTS) -> None:
        self.faults = faults
        self.seen: Counter[str] = Counter()
        self.requests = 0
        self.fault_counts: Counter[str] = Counter()
        self.recent: collections.deque[float] = collections.deque()  # arrival times, 1 s
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )

    def draw(self, body: bytes) -> tuple[float, str | None]:
        """The latency (seconds) and the fault (``"429"``, ``"500"``, ``"hang"`` or None)
        of a request with ``body``: this body's next draw."""
        digest = hashlib.sha256(body).hexdigest()
        n = self.seen[digest]
        self.seen[digest] += 1
        rng = random.Random(f"{self.faults.seed}:{digest}:{n}")
        f = self.faults
        delay = rng.uniform(*f.latency) * f.scale
        text = body.decode(errors="replace").lower()
        roll = rng.random()
        if any(w.lower() in text for w in f.hang_on):
            return delay, "hang"
        if any(w.lower() in text for w in f.fail_on):
            return delay, "500"
        for kind, rate in (("429", f.rate_429), ("500", f.rate_500), ("hang", f.rate_hang)):
            if roll < rate:
                return delay, kind
            roll -= rate
        return delay, None

    def over_limit(self) -> bool:
        """Whether a request arriving now is past ``limit_per_second`` (a sliding
        window of one second; refused requests count, as a hosted API's do)."""
        limit = self.faults.limit_per_second
        if limit is None:
            return False
        now = time.monotonic()
        self.recent.append(now)
        while self.recent[0] <= now - 1.0:
            self.recent.popleft()
        return len(self.recent) > limit

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "tidings"}],
            }
        )

    async def completions(self, request: Request) -> Response:
        body = await request.body()
        self.requests += 1
        try:
            doc = json.loads(body)
            messages = list(doc["messages"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_request_error", "the body needs a messages list")
        delay, fault = self.draw(body)
        if self.over_limit():
            fault = "429"
        if fault:
            self.fault_counts[fault] += 1
        if fault == "429":
            headers = {"Retry-After": str(self.faults.retry_after)}
            return _error(429, "rate_limit_exceeded", "Rate limit reached; retry later", headers)
        await asyncio.sleep(delay)
        if fault == "500":
            return _error(500, "server_error", "The server had an error processing the request")
        if fault == "hang":
            await asyncio.Event().wait()  # never answered: the caller's deadline ends it
        text = answer(messages)
        model = str(doc.get("model") or MODEL)
        if doc.get("stream"):
            return StreamingResponse(_chunks(text, model), media_type="text/event-stream")
        return JSONResponse(_completion(text, model, messages))


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    error = {"message": message, "type": code, "param": None, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _completion(text: str, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    asked = sum(len(str(m.get("content") or "").split()) for m in messages)
    said = len(text.split())
    return {
        "id": f"chatcmpl-{hashlib.sha1(text.encode()).hexdigest()[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": asked, "completion_tokens": said, "total_tokens": asked + said},
    }


async def _chunks(text: str, model: str) -> Any:
    """The answer as server-sent events, a word at a time, then ``[DONE]``."""
    base = {
        "id": f"chatcmpl-{hashlib.sha1(text.encode()).hexdigest()[:16]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in re.findall(r"\S+\s*", text)]
    for delta in deltas:
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
        await asyncio.sleep(0)
    choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
    yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
    yield "data: [DONE]\n\n"


class Server:
    """The stand-in served on 127.0.0.1 by uvicorn in a thread of its own::

    with Server(Faults(scale=0.01)) as server:
        client = AsyncOpenAI(base_url=server.url, api_key="none", max_retries=0)
    """

    def __init__(self, faults: Faults = DEMO_FAULTS, port: int = 0) -> None:
        self.standin = StandIn(faults)
        config = uvicorn.Config(
            self.standin.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="standin", daemon=True)

    @property
    def url(self) -> str:
        """The base URL the ``openai`` client takes (``.../v1``)."""
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the stand-in server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.thread.is_alive():  # a connection outlasting the graceful second: close all
            self.server.force_exit = True
            self.thread.join(10)
