"""The pipeline's settings, from the environment.

``AGENTS_OPENAI_BASE_URL`` (unset: the demo starts the local stand-in and uses it),
``AGENTS_MODEL``, ``OPENAI_API_KEY``; ``AGENTS_LOG_URL`` (the tidings log; default a
SQLite file in a temporary folder), ``AGENTS_TIMEOUT`` (seconds per handler call),
``AGENTS_RATE`` and ``AGENTS_MAX_CALLS`` (each agent group's shared limit on the model
API: calls per second, calls at once) and ``AGENTS_CONCURRENCY`` (requests of one
partition an agent group works on at once).
For Ollama: ``AGENTS_OPENAI_BASE_URL=http://127.0.0.1:11434/v1 AGENTS_MODEL=llama3.2``;
for OpenAI: ``AGENTS_OPENAI_BASE_URL=https://api.openai.com/v1 AGENTS_MODEL=gpt-4o-mini``
and ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from examples.agents.standin import MODEL


@dataclass(frozen=True)
class Settings:
    base_url: str | None = None  # None: the local stand-in
    model: str = MODEL
    api_key: str = "none"  # the stand-in takes any key
    log_url: str | None = None  # None: sqlite in a temporary folder
    timeout: float = 10.0  # the handler deadline, per call, seconds
    attempts: int = 4  # calls per event before it is dead-lettered
    backoff: float = 0.5  # the first retry's wait, doubling (tidings.Retry)
    batch: int = 4  # documents per model call of the researcher
    progress_every: float = 0.5  # at most one progress event per call this often (s)
    rate: float | None = 8.0  # model calls per second, per agent group, over its workers
    max_calls: int | None = 4  # model calls at once, per agent group, over its workers
    concurrency: int = 4  # requests of one partition worked on at once, per worker

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        settings = cls(
            base_url=env.get("AGENTS_OPENAI_BASE_URL") or None,
            model=env.get("AGENTS_MODEL") or MODEL,
            api_key=env.get("OPENAI_API_KEY") or "none",
            log_url=env.get("AGENTS_LOG_URL") or None,
            timeout=float(env.get("AGENTS_TIMEOUT") or cls.timeout),
            rate=float(env.get("AGENTS_RATE") or 8.0),
            max_calls=int(env.get("AGENTS_MAX_CALLS") or 4),
            concurrency=int(env.get("AGENTS_CONCURRENCY") or cls.concurrency),
        )
        return replace(settings, **overrides)
