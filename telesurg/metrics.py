"""Session figures from what the demo recorded: tracking error, tip jumps, limit violations.

Pure Python + numpy. Inputs are plain arrays so the same code serves live sessions and bags.
"""

from __future__ import annotations

import numpy as np


def percentiles(values, scale: float = 1.0) -> dict[str, float | None]:
    """p50, p99 and max of values times scale, rounded for reading; None when empty."""
    values = np.asarray(values, dtype=float) * scale
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(float(np.percentile(values, 50)), 4),
            "p99": round(float(np.percentile(values, 99)), 4),
            "max": round(float(values.max()), 4)}


def tracking_errors(setpoints: dict[int, np.ndarray], measured: dict[int, np.ndarray]):
    """Tip distance between measured and setpoint poses published with the same stamp."""
    common = sorted(setpoints.keys() & measured.keys())
    return np.array([np.linalg.norm(measured[s] - setpoints[s]) for s in common])


def largest_tick_step(stamps_ns, positions, period_s: float) -> float:
    """Largest tip displacement between consecutive controller ticks. Pairs further apart than
    1.5 periods (a message not received) are skipped rather than counted as one big step."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    positions = np.asarray(positions, dtype=float)
    if len(stamps) < 2:
        return 0.0
    order = np.argsort(stamps)
    stamps, positions = stamps[order], positions[order]
    gaps = np.diff(stamps) * 1e-9
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    consecutive = gaps <= 1.5 * period_s
    return float(steps[consecutive].max()) if consecutive.any() else 0.0


def limit_violations(joint_rows, lower, upper, tolerance: float = 0.0) -> int:
    """Rows (joint vectors) with any joint outside [lower - tolerance, upper + tolerance]."""
    rows = np.asarray(joint_rows, dtype=float)
    if rows.size == 0:
        return 0
    outside = (rows < np.asarray(lower) - tolerance) | (rows > np.asarray(upper) + tolerance)
    return int(outside.any(axis=1).sum())


def following_intervals(changes: list[tuple[int, bool]], end_ns: int) -> list[tuple[int, int]]:
    """(start, end) times while following, from (time, following) changes."""
    intervals, since = [], None
    for time_ns, following in changes:
        if following and since is None:
            since = time_ns
        elif not following and since is not None:
            intervals.append((since, time_ns))
            since = None
    if since is not None:
        intervals.append((since, end_ns))
    return intervals


def motion_while_held(stamps_ns, positions, intervals, settle_s: float = 0.1) -> float:
    """Largest tip displacement inside the gaps between following intervals (clutch, pauses),
    measured from where the tip is settle_s after following stopped (its stopping distance
    belongs to the motion before)."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    positions = np.asarray(positions, dtype=float)
    largest = 0.0
    for (_, stop), (restart, _) in zip(intervals, intervals[1:], strict=False):
        inside = (stamps >= stop + settle_s * 1e9) & (stamps < restart)
        if inside.sum() >= 2:
            held = positions[inside]
            largest = max(largest, float(np.linalg.norm(held - held[0], axis=1).max()))
    return largest


def jump_after_engage(stamps_ns, positions, intervals, period_s: float,
                      window_s: float = 0.5) -> float:
    """Largest tick-to-tick tip step in the first window_s of every following interval."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    positions = np.asarray(positions, dtype=float)
    largest = 0.0
    for start, _ in intervals:
        window = (stamps >= start - period_s * 1e9) & (stamps < start + window_s * 1e9)
        largest = max(largest, largest_tick_step(stamps[window], positions[window], period_s))
    return largest
