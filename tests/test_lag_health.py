"""Burrow's lag evaluation rules (tidings.lag_health), one scripted offset history per
status, with the clock injected as ``now_ms``."""

from __future__ import annotations

import pytest

from tidings.lag_health import (
    WINDOW,
    LagStatus,
    LagWindows,
    Rules,
    evaluate,
    evaluate_group,
    status,
)
from tidings.transport import GroupPartition, LagSample
from tidings.transports.sqlite.samples import KEPT

STEP = 5_000  # ms between samples


def history(*points: tuple[int, int], start: int = 1_000_000) -> list[LagSample]:
    """Samples every STEP ms from ``start``: (committed offset, lag) each."""
    return [LagSample(start + i * STEP, c, lag) for i, (c, lag) in enumerate(points)]


def just_after(samples: list[LagSample]) -> int:
    return samples[-1].ts_ms + STEP


def test_a_group_keeping_up_is_ok() -> None:
    # Lag comes and goes, and is zero at times: nothing to report.
    samples = history(*[(100 + 10 * i, 5 if i % 2 else 0) for i in range(10)])
    health = evaluate(samples, just_after(samples))
    assert (health.status, health.complete) == (LagStatus.OK, 1.0)


def test_a_group_catching_up_is_ok() -> None:
    # Lag never zero, but it shrinks: the group is working through a backlog.
    samples = history(*[(100 + 50 * i, 1_000 - 40 * i) for i in range(10)])
    assert evaluate(samples, just_after(samples)).status is LagStatus.OK


def test_lag_that_never_shrinks_while_offsets_move_is_warn() -> None:
    samples = history(*[(100 + 10 * i, 300 + 20 * i) for i in range(10)])
    health = evaluate(samples, just_after(samples))
    assert health.status is LagStatus.WARN
    assert health.reason == "lag never shrank over 10 samples: 300 to 480 (offset 100 to 190)"
    assert health.lag == 480


def test_one_shrinking_step_is_enough_to_be_ok() -> None:
    points = [(100 + 10 * i, 300 + 20 * i) for i in range(10)]
    points[6] = (160, 200)  # lag went down once in the window
    samples = history(*points)
    assert evaluate(samples, just_after(samples)).status is LagStatus.OK


def test_samples_that_keep_coming_with_the_same_offset_and_lag_are_stall() -> None:
    samples = history(*[(1_042, 310 + i) for i in range(10)])
    health = evaluate(samples, just_after(samples))
    assert health.status is LagStatus.STALL
    assert health.reason == "offset 1,042 has not moved for 10 samples while lag is 319"


def test_a_stalled_offset_without_lag_is_ok() -> None:
    # Nothing to handle: an idle group does not move either.
    samples = history(*[(1_042, 0)] * 10)
    assert evaluate(samples, just_after(samples)).status is LagStatus.OK


def test_no_sample_for_longer_than_the_window_spans_is_stop() -> None:
    samples = history(*[(100 + 10 * i, 50 - i) for i in range(10)])
    span = samples[-1].ts_ms - samples[0].ts_ms
    assert evaluate(samples, samples[-1].ts_ms + span).status is LagStatus.OK  # not yet
    health = evaluate(samples, samples[-1].ts_ms + span + 1)
    assert health.status is LagStatus.STOP
    assert health.reason.startswith("no sample for 45.0s, longer than the window's 45.0s")


def test_no_sample_for_long_without_lag_is_ok() -> None:
    samples = history(*[(100 + 10 * i, 0) for i in range(10)])
    assert evaluate(samples, samples[-1].ts_ms + 10**9).status is LagStatus.OK


def test_an_offset_that_went_back_and_stays_back_is_rewind() -> None:
    points = [(500 + 10 * i, 20) for i in range(5)] + [(100 + 10 * i, 400) for i in range(5)]
    samples = history(*points)
    health = evaluate(samples, just_after(samples))
    assert health.status is LagStatus.REWIND
    assert health.reason == "offset went back from 540 to 100 and has not returned; lag is 400"


def test_a_rewind_the_group_recovered_from_is_judged_by_the_other_rules() -> None:
    # A rebalance redid a few events, then the group passed where it was.
    points = [(500 + 10 * i, 20) for i in range(5)] + [(530, 30), (545, 15)]
    points += [(560 + 10 * i, 10 - i) for i in range(3)]
    samples = history(*points)
    assert evaluate(samples, just_after(samples)).status is LagStatus.OK


def test_too_few_samples_is_ok_and_incomplete_not_an_alarm() -> None:
    # Three samples of a stalled offset: a full window would say STALL.
    samples = history(*[(7, 90)] * 3)
    health = evaluate(samples, just_after(samples) + 10**9)  # and long quiet: no STOP
    assert (health.status, health.complete) == (LagStatus.OK, 0.3)
    assert health.reason == "too few samples to judge (3 of 10); lag is 90"
    assert evaluate([], 0) == evaluate([], 0)
    assert (evaluate([], 0).status, evaluate([], 0).complete) == (LagStatus.OK, 0.0)
    full = history(*[(7, 90)] * 10)
    assert evaluate(full, just_after(full)).status is LagStatus.STALL


def test_the_window_and_the_minimum_are_parameters() -> None:
    samples = history(*[(100, 90 + i) for i in range(4)])
    health = evaluate(samples, just_after(samples), Rules(window=4, min_samples=4))
    assert (health.status, health.complete) == (LagStatus.STALL, 1.0)
    # Only the last `window` samples count: an old backwards step has left it.
    old = history((900, 10), (100, 5), (110, 5), (120, 4), (130, 3))
    assert evaluate(old, just_after(old), Rules(window=4, min_samples=4)).status is LagStatus.OK
    assert evaluate(old, just_after(old), Rules(window=5, min_samples=5)).status is LagStatus.REWIND
    # Lag at or under allowed_lag counts as none.
    small = history(*[(100, 2)] * 10)
    assert evaluate(small, just_after(small), Rules(allowed_lag=2)).status is LagStatus.OK


def test_a_group_is_err_when_a_partition_errs_and_names_it() -> None:
    ok = history(*[(100 + 10 * i, 0) for i in range(10)])
    warn = history(*[(100 + 10 * i, 300 + 20 * i) for i in range(10)])
    stall = history(*[(1_042, 310)] * 10)
    now = just_after(ok)
    group = evaluate_group({("g", "t", 0): ok, ("g", "t", 1): stall, ("g", "t", 2): warn}, now)
    assert group.status is LagStatus.ERR
    assert group.reason == "t[1] STALL: offset 1,042 has not moved for 10 samples while lag is 310"
    assert group.partitions[("g", "t", 1)].status is LagStatus.STALL
    assert group.complete == 1.0
    warned = evaluate_group({("g", "t", 0): ok, ("g", "t", 2): warn}, now)
    assert (warned.status, warned.reason.split(":")[0]) == (LagStatus.WARN, "t[2] WARN")
    assert status({("g", "t", 0): ok}, now) is LagStatus.OK
    assert int(status({("g", "t", 1): stall}, now)) == 3  # a metric's value: ERR


def test_a_group_with_a_thin_partition_says_so() -> None:
    ok = history(*[(100 + 10 * i, 0) for i in range(10)])
    thin = history((5, 1), (6, 1))
    group = evaluate_group({("g", "t", 0): ok, ("g", "t", 1): thin}, just_after(ok))
    assert (group.status, group.complete) == (LagStatus.OK, 0.2)
    assert group.reason == "t[1]: too few samples to judge (2 of 10); lag is 1"


def test_the_severity_order_is_burrows() -> None:
    assert sorted(LagStatus, key=int) == [
        LagStatus.OK,
        LagStatus.WARN,
        LagStatus.ERR,
        LagStatus.STOP,
        LagStatus.STALL,
        LagStatus.REWIND,
    ]


def test_windows_keep_the_last_samples_of_each_started_partition() -> None:
    windows = LagWindows(window=3)
    for i in range(5):
        rows = [
            GroupPartition("g", "t", 0, committed=10 * i, end=100),
            GroupPartition("g", "t", 1, committed=None, end=100),  # not started: no sample
        ]
        windows.observe(rows, 1_000 * i)
    assert windows.samples() == {
        ("g", "t", 0): [
            LagSample(2_000, 20, 80),
            LagSample(3_000, 30, 70),
            LagSample(4_000, 40, 60),
        ]
    }


def test_the_log_keeps_as_many_samples_as_are_judged() -> None:
    assert KEPT == WINDOW


@pytest.mark.parametrize("count", [0, 1, WINDOW - 1])
def test_any_short_history_is_incomplete(count: int) -> None:
    samples = history(*[(1, 99)] * count)
    health = evaluate(samples, 10**12)
    assert health.status is LagStatus.OK
    assert health.complete == pytest.approx(count / WINDOW)


def test_the_lag_now_decides_whether_there_is_lag_at_all() -> None:
    # A stopped group's newest sample says lag 0; events arrived since.
    samples = history(*[(100 + 10 * i, 0) for i in range(10)])
    late = samples[-1].ts_ms + 10**6
    assert evaluate(samples, late).status is LagStatus.OK
    health = evaluate(samples, late, lag=25)
    assert (health.status, health.lag) == (LagStatus.STOP, 25)
    key = ("g", "t", 0)
    assert status({key: samples}, late, lags={key: 25}) is LagStatus.ERR
