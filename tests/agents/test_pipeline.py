"""The research pipeline end to end against the stand-in with its faults on: every
request is summarised, rejected, cancelled or dead-lettered with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from examples.agents import demo
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
    assert "attempts" in "\n".join(lines)
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
    report = await demo.run(
        settings(sqlite_url, timeout=60.0), FAULTS, questions, cancel=1, out=lambda _: None
    )
    assert report.cancelled == "req-2"
    assert report.outcomes == {"req-1": "summarised", "req-2": "cancelled"}
    assert report.progress["req-2"] == [0.0]  # it got no further
    assert "req-2" not in report.summaries


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
