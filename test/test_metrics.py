"""Session figures computed from recorded streams."""

import numpy as np
import pytest

from telesurg.analysis.metrics import (
    LatencyHistogram,
    count_within,
    engage_offsets,
    following_intervals,
    largest_gap_within,
    largest_step,
    limit_violations,
    motion_while_held,
    percentiles,
    tracking_error_series,
)

MS = 1_000_000


def arrays(positions: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Time-ordered stamps and positions of {stamp: position}."""
    stamps = sorted(positions)
    return np.array(stamps, dtype=np.int64), np.array([positions[s] for s in stamps])


def test_tracking_error_compares_with_the_setpoint_in_force_when_measured():
    # Setpoint moving along x at 1 m/s, sampled every 10 ms; a gap after 30 ms.
    setpoints = {t * MS: np.array([t * 1e-3, 0.0, 0.0]) for t in (0, 10, 20, 30, 200)}
    measured = {5 * MS: np.array([0.005, 0.0, 0.0]),      # on the path: no error
                15 * MS: np.array([0.014, 0.0, 0.0]),     # 1 mm behind
                25 * MS: np.array([0.025, 0.0, 0.002]),   # 2 mm off the path
                100 * MS: np.array([9.0, 9.0, 9.0]),      # setpoints too far apart: skipped
                300 * MS: np.zeros(3)}                   # after the last setpoint: skipped
    stamps, errors = tracking_error_series(*arrays(setpoints), *arrays(measured))
    assert stamps.tolist() == [5 * MS, 15 * MS, 25 * MS]
    np.testing.assert_allclose(errors, [0.0, 0.001, 0.002], atol=1e-12)
    assert tracking_error_series(*arrays(setpoints), *arrays({300 * MS: np.zeros(3)}))[1].size == 0


def test_percentiles_scale_and_empty():
    assert percentiles([0.001] * 100, 1000.0) == {"p50": 1.0, "p99": 1.0, "max": 1.0}
    assert percentiles([], 1000.0)["p99"] is None


def test_largest_step_between_consecutive_ticks():
    positions = [[0, 0, 0], [0.0001, 0, 0], [0.0003, 0, 0], [0.0003, 0.0004, 0]]
    assert np.isclose(largest_step(positions), 0.0004)
    assert largest_step([[1, 2, 3]]) == 0.0


def test_limit_violations_counts_rows():
    rows = [[0.0, 0.0], [2.0, 0.0], [0.0, -2.0], [2.0, -2.0]]
    assert limit_violations(rows, [-1, -1], [1, 1]) == 3
    assert limit_violations(rows, [-1, -1], [1, 1], tolerance=1.5) == 0


def test_following_intervals_and_hold_motion():
    changes = [(0, False), (100 * MS, True), (300 * MS, False), (600 * MS, True)]
    intervals = following_intervals(changes, 800 * MS)
    assert intervals == [(100 * MS, 300 * MS), (600 * MS, 800 * MS)]
    stamps = np.arange(0, 800) * MS
    positions = np.zeros((800, 3))
    positions[:300, 0] = np.arange(300) * 1e-5       # moving while following
    positions[300:450, 0] = positions[299, 0]        # stopped
    positions[450:600, 0] = positions[299, 0] + 0.0002  # drifts 0.2 mm while held
    positions[600:, 0] = positions[599, 0]
    held = motion_while_held(stamps, positions, intervals)
    assert np.isclose(held, 0.0002)


def test_engage_offsets_compare_each_first_goal_with_the_held_arm():
    held_stamps = [0, 10 * MS, 20 * MS, 500 * MS]
    held = [[0, 0, 0], [0.001, 0, 0], [0.002, 0, 0], [0.003, 0, 0]]
    goal_stamps = [25 * MS, 27 * MS, 29 * MS, 600 * MS, 602 * MS, 1500 * MS]
    goals = [[0.0021, 0, 0], [0.009, 0, 0], [0.009, 0, 0], [0.003, 0.0004, 0], [0.0, 0, 0],
             [0.05, 0, 0]]  # the last one ends a stall, not an engage: not an offset
    engages = [26 * MS, 680 * MS]  # announced after the first goal, once 80 ms late
    np.testing.assert_allclose(
        engage_offsets(engages, goal_stamps, goals, held_stamps, held), [0.0001, 0.0004],
        atol=1e-12)
    assert engage_offsets([], goal_stamps, goals, held_stamps, held).size == 0
    assert engage_offsets([10**12], goal_stamps, goals, held_stamps, held).size == 0
    assert engage_offsets([0], [], [], held_stamps, held).size == 0


def test_latency_histogram_percentiles_match_numpy_within_a_bin():
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 0.4, 20_000)  # ms, a skewed latency distribution
    histogram = LatencyHistogram(bin_ms=0.01)
    for value in values:
        histogram.add(value)
    assert histogram.count == len(values) and histogram.out_of_range == 0
    for q in (50, 99, 100):
        assert abs(histogram.percentile(q) - np.percentile(values, q)) <= 0.011


def test_latency_histogram_counts_implausible_values_apart_and_never_clips_them():
    histogram = LatencyHistogram(bin_ms=1.0, max_ms=10.0, tolerance_ms=2.0)
    assert histogram.percentile(50) is None
    taken = [histogram.add(value) for value in (-1.5, 2.5, 4.5, -3.0, 50.0, float("nan"))]
    assert taken == [True, True, True, False, False, False]
    assert (histogram.count, histogram.out_of_range) == (3, 3)
    assert histogram.percentile(1) == 1.0  # within the clocks' tolerance: the first bin
    assert histogram.percentile(50) == 3.0
    assert histogram.percentile(100) == 5.0  # the hour-old or future ones are not in it
    with pytest.raises(ValueError, match="bin_ms"):
        LatencyHistogram(bin_ms=0.0)


def test_largest_gap_counts_only_gaps_inside_one_following_interval():
    intervals = [(0, 100 * MS), (200 * MS, 300 * MS)]
    # (arrival, stamp): 2 ms apart, except a 30 ms hole inside the first interval and the
    # clutch between the intervals (a 120 ms hole that is no loss of commands).
    stamps = [*range(0, 50 * MS, 2 * MS), *range(80 * MS, 101 * MS, 2 * MS),
              *range(220 * MS, 300 * MS, 2 * MS)]
    arrivals = [(stamp + 60 * MS, stamp) for stamp in stamps]
    assert largest_gap_within(arrivals, intervals) == 32 * MS
    assert largest_gap_within(arrivals[:3], []) == 0


def test_count_within_counts_only_the_commands_sent_while_following():
    # 4 ms apart for 1 s; following from 100 to 500 ms and from 700 ms to the end (ends count).
    times = list(range(0, 1000 * MS, 4 * MS))
    intervals = [(100 * MS, 500 * MS), (700 * MS, 996 * MS)]
    assert count_within(times, intervals) == 101 + 75
    assert count_within(list(reversed(times)), intervals) == 176  # order does not matter
    assert count_within(times, []) == 0
    assert count_within([], intervals) == 0
