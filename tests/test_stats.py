"""tidings.stats: the handling-time histogram."""

from __future__ import annotations

import itertools

import pytest

from tidings.stats import Durations


def marks_of(durations: list[float]) -> list[float]:
    """Clock readings 100 s on, one at the start and one at each call's end."""
    return list(itertools.accumulate(durations, initial=100.0))


@pytest.mark.parametrize(
    "durations",
    [
        [0.0001] * 20,  # all within the first bound, together too: one count
        [0.0004, 0.0004, 0.0004],  # each within it, together not
        [0.0001, 0.3, 0.0001, 0.002, 12.0, 0.0005, 0.001],  # every bucket kind, +Inf too
        [],
    ],
)
def test_a_run_s_marks_count_as_each_call_observed_alone(durations: list[float]) -> None:
    run, alone = Durations(), Durations()
    marks = marks_of(durations)
    run.observe_marks(marks, len(durations))
    for start, end in itertools.pairwise(marks):
        alone.observe(end - start)  # as the clock read them (0.0005 is then not exact)
    assert run.counts == alone.counts
    assert run.sum == pytest.approx(alone.sum, abs=1e-9)
    assert run.count == len(durations)


def test_only_the_first_count_marks_are_observed() -> None:
    """An abandoned run's thread may have read the clock for events not yet counted."""
    durations = Durations()
    durations.observe_marks(marks_of([0.0001, 0.2, 0.3]), 1)
    assert durations.count == 1
    assert durations.counts[0] == 1
    assert durations.sum == pytest.approx(0.0001)
