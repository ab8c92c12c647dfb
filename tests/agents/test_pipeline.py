"""The research pipeline end to end against the stand-in with its faults on: every
request is summarised, rejected, cancelled or dead-lettered with the reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from examples.agents import demo, pipeline
from examples.agents.settings import Settings
from examples.agents.standin import Faults

ROOT = Path(__file__).resolve().parent.parent.parent
# Latency scaled to 1-3 hundredths of a second; a 429, 500 or hang in every fourth call.
FAULTS = Faults(
    seed=3,
    scale=0.01,
    rate_429=0.12,
    rate_500=0.08,
    rate_hang=0.05,
    hang_on=("eels",),
    fail_on=("kelp",),
)
QUESTIONS = [
    *demo.QUESTIONS,
    "Do eels swim with the tide?",
    "Does kelp grow faster at spring tides?",
]


def settings(sqlite_url: str, timeout: float) -> Settings:
    return Settings(log_url=sqlite_url, timeout=timeout, backoff=0.01, progress_every=0.001)


def calls(fractions: list[float]) -> list[list[float]]:
    """One request's progress reports, split into its calls: each starts at 0.0 (a
    retried call starts again)."""
    assert fractions[0] == 0.0
    split: list[list[float]] = []
    for fraction in fractions:
        if fraction == 0.0:
            split.append([])
        split[-1].append(fraction)
    return split


async def test_every_request_is_summarised_or_dead_lettered_with_the_reason(
    sqlite_url: str,
) -> None:
    lines: list[str] = []
    report = await demo.run(
        settings(sqlite_url, timeout=2.0), FAULTS, QUESTIONS, cancel=None, out=lines.append
    )
    outcomes = report.outcomes
    assert sorted(outcomes) == sorted(f"req-{i + 1}" for i in range(len(QUESTIONS)))
    assert outcomes["req-4"] == "rejected"
    # A model call that never returns: the handler deadline, then the policy gives up.
    eels, kelp = f"req-{len(QUESTIONS) - 1}", f"req-{len(QUESTIONS)}"
    assert outcomes[eels].startswith("dead: researchers tidings.errors.HandlerTimeout: ")
    assert outcomes[kelp].startswith("dead: researchers openai.InternalServerError: ")
    printed = "\n".join(lines)
    assert f"{kelp}  dead-lettered by researchers after 4 attempts: " in printed
    for rid, outcome in outcomes.items():
        assert outcome in ("summarised", "rejected") or outcome.startswith("dead: "), rid
        if outcome == "summarised":
            assert report.summaries[rid]
            attempts = calls(report.progress[rid])
            assert attempts[-1][-1] == 1.0  # the call that succeeded reported its end
            for fractions in attempts:  # each call's reports arrived in order
                assert fractions == sorted(fractions)
    assert sum(o == "summarised" for o in outcomes.values()) >= 3


async def test_a_cancelled_request_skips_the_rest_of_its_chain(sqlite_url: str) -> None:
    # Its model call hangs, so the cancellation surely finds it under way.
    questions = ["Why are there two high tides a day?", "Do eels swim with the tide?"]
    lines: list[str] = []
    report = await demo.run(
        settings(sqlite_url, timeout=60.0), FAULTS, questions, cancel=1, out=lines.append
    )
    assert report.cancelled == "req-2"
    assert report.outcomes == {"req-1": "summarised", "req-2": "cancelled"}
    assert report.progress["req-2"] == [0.0]  # it got no further
    assert "req-2" not in report.summaries
    assert "req-1  research completed" in "\n".join(lines)
    assert "req-2  research completed" not in "\n".join(lines)


def test_one_command_runs_the_demo() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "examples.agents", "demo", "--no-faults"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "req-4: rejected" in done.stdout
    assert "req-2: cancelled" in done.stdout or "req-2: summarised" in done.stdout
    assert done.stdout.count(": summarised") >= 6


def test_validation_rejects_empty_long_and_unknown_requests() -> None:
    def asked(question: str, docset: str = "tides") -> str | None:
        return pipeline.check(
            pipeline.AnalysisRequested(request_id="r", question=question, docset=docset)
        )

    assert asked("Why do tides rise?") is None
    assert asked("   ") == "the question is empty"
    assert asked("why " * 100) == "the question is longer than 300 characters"
    assert asked("Why?", "eels") == "no document set 'eels' (there are: tides)"


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGENTS_OPENAI_BASE_URL", "AGENTS_MODEL", "OPENAI_API_KEY", "AGENTS_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env() == Settings()  # the stand-in
    monkeypatch.setenv("AGENTS_OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("AGENTS_MODEL", "llama3.2")
    monkeypatch.setenv("AGENTS_TIMEOUT", "90")
    ollama = Settings.from_env(attempts=2)
    assert (ollama.base_url, ollama.model, ollama.timeout) == (
        "http://127.0.0.1:11434/v1",
        "llama3.2",
        90.0,
    )
    assert ollama.attempts == 2


def test_the_standin_command_serves_the_api() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "examples.agents", "standin", "--port", "0", "--no-faults"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "the stand-in serves http://127.0.0.1:PORT/v1 ..."
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:")
        with OpenAI(base_url=url, api_key="k", max_retries=0) as client:
            assert [m.id for m in client.models.list().data] == ["standin-extractive"]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()  # not left running into the next test of this process
            server.wait()
            raise
        finally:
            if server.stdout is not None:
                server.stdout.close()
        assert code == 0
