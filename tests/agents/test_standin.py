"""The stand-in speaks the chat API as the official openai client reads it, and
misbehaves as configured."""

from __future__ import annotations

import json
from collections import Counter

import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from examples.agents import textmodel
from examples.agents.pipeline import RESEARCHER, SUMMARISER
from examples.agents.standin import MODEL, NO_FAULTS, Faults, Server, StandIn

PROMPT = (
    "Question: Why does the moon cause tides?\n\nPassages:\n"
    "[1] Eels swim up rivers at night.\n"
    "[2] The moon pulls the ocean, and the tides follow the moon. The sea rises.\n"
    "[3] Barnacles close at low water."
)


def messages(system: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": system}, {"role": "user", "content": PROMPT}]


def test_the_model_picks_the_passages_with_the_questions_keywords() -> None:
    passages = textmodel.passages_of(PROMPT)
    assert textmodel.relevant("Why does the moon cause tides?", passages) == [2]
    assert textmodel.relevant("What about volcanoes?", passages) == []
    # Sentences sharing no word with the question or the others are left out.
    moon = "The moon pulls the ocean, and the tides follow the moon."
    assert textmodel.summary("the moon", passages, sentences=2) == moon
    assert textmodel.summary("the moon and the sea", passages) == f"{moon} The sea rises."
    assert textmodel.summary("volcanoes", {1: "Lava flows."}) == ""


async def test_the_openai_client_reads_plain_and_streamed_answers() -> None:
    with Server(NO_FAULTS) as server:
        async with AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0) as client:
            listed = await client.models.list()
            assert [m.id for m in listed.data] == [MODEL]
            plain = await client.chat.completions.create(model=MODEL, messages=messages(RESEARCHER))
            assert plain.choices[0].message.content is not None
            assert plain.choices[0].message.content.startswith("Relevant: [2]")
            assert plain.choices[0].finish_reason == "stop"
            assert plain.usage is not None
            assert plain.usage.completion_tokens > 0
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=messages(SUMMARISER),
                stream=True,
            )
            chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 3  # a word at a time
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert text == textmodel.summary(
        "Why does the moon cause tides?", textmodel.passages_of(PROMPT)
    )
    assert text.startswith("The moon pulls the ocean")


async def test_a_429_carries_retry_after_and_a_500_is_a_server_error() -> None:
    with Server(Faults(latency=(0, 0), rate_429=1.0, retry_after=3)) as server:
        async with AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0) as client:
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(model=MODEL, messages=messages(RESEARCHER))
    assert limited.value.response.headers["retry-after"] == "3"
    with Server(Faults(latency=(0, 0), rate_500=1.0)) as server:
        async with AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model=MODEL, messages=messages(RESEARCHER))
        assert server.standin.fault_counts == Counter({"500": 1})


async def test_a_hung_request_is_never_answered() -> None:
    with Server(Faults(latency=(0, 0), hang_on=("eels",))) as server:
        async with AsyncOpenAI(
            base_url=server.url, api_key="k", max_retries=0, timeout=0.5
        ) as client:
            with pytest.raises(openai.APITimeoutError):  # the caller's deadline ends it
                await client.chat.completions.create(model=MODEL, messages=messages(RESEARCHER))
        assert server.standin.fault_counts == Counter({"hang": 1})


def test_faults_are_drawn_per_request_body_whatever_the_order() -> None:
    faults = Faults(seed=11, rate_429=0.2, rate_500=0.1, rate_hang=0.1)
    bodies = [json.dumps({"messages": [], "n": i}).encode() for i in range(300)]
    first, second = StandIn(faults), StandIn(faults)
    drawn = {b: first.draw(b) for b in bodies}
    assert {b: second.draw(b) for b in reversed(bodies)} == drawn
    kinds = Counter(kind for _, kind in drawn.values())
    assert 30 <= kinds["429"] <= 90
    assert 10 <= kinds["500"] <= 50
    assert 10 <= kinds["hang"] <= 50
    assert all(1.0 <= delay <= 3.0 for delay, _ in drawn.values())
    # The same body sent again is a new draw (a retry may succeed).
    again = [first.draw(b)[1] for b in bodies]
    assert again != [kind for _, kind in drawn.values()]
