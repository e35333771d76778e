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
