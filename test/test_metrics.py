"""Session figures computed from recorded streams."""

import numpy as np

from telesurg.metrics import (
    following_intervals,
    jump_after_engage,
    largest_tick_step,
    limit_violations,
    motion_while_held,
    percentiles,
    tracking_errors,
)

MS = 1_000_000


def test_tracking_error_pairs_poses_by_stamp():
    setpoints = {1: np.zeros(3), 2: np.zeros(3), 3: np.zeros(3)}
    measured = {2: np.array([0.003, 0.004, 0.0]), 3: np.zeros(3), 4: np.ones(3)}
    np.testing.assert_allclose(sorted(tracking_errors(setpoints, measured)), [0.0, 0.005])


def test_percentiles_scale_and_empty():
    assert percentiles([0.001] * 100, 1000.0) == {"p50": 1.0, "p99": 1.0, "max": 1.0}
    assert percentiles([], 1000.0)["p99"] is None


def test_largest_tick_step_skips_missing_ticks():
    stamps = [0, 1 * MS, 2 * MS, 10 * MS]           # a gap between 2 ms and 10 ms
    positions = [[0, 0, 0], [0.0001, 0, 0], [0.0003, 0, 0], [0.05, 0, 0]]
    assert np.isclose(largest_tick_step(stamps, positions, 0.001), 0.0002)


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
    positions[300:400, 0] = positions[299, 0]        # stopping distance window
    positions[450:600, 0] = positions[299, 0] + 0.0002  # drifts 0.2 mm while held
    positions[600:, 0] = positions[599, 0]
    held = motion_while_held(stamps, positions, intervals)
    assert np.isclose(held, 0.0002)
    assert np.isclose(jump_after_engage(stamps, positions, intervals, 0.001), 1e-5)
