"""Session figures from what the demo recorded: tracking error, tip jumps, limit violations.

Pure Python + numpy. Inputs are plain arrays so the same code serves live sessions and bags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def percentiles(values, scale: float = 1.0) -> dict[str, float | None]:
    """p50, p99 and max of values times scale, rounded for reading; None when empty."""
    values = np.asarray(values, dtype=float) * scale
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(float(np.percentile(values, 50)), 4),
            "p99": round(float(np.percentile(values, 99)), 4),
            "max": round(float(values.max()), 4)}


def tracking_error_series(set_stamps: np.ndarray, set_positions: np.ndarray,
                          stamps: np.ndarray, positions: np.ndarray,
                          max_gap_s: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Tip distance between each measured pose (time-ordered stamps ns, positions) and the
    setpoint in force when it was measured (interpolated between the setpoints around it), so
    that the age of a measurement when it reached the controller does not count as tracking
    error: (the measured stamps kept, their distances). Measurements without setpoints less
    than max_gap_s apart around them are skipped."""
    if set_stamps.size < 2 or not stamps.size:
        return np.array([], dtype=np.int64), np.array([])
    after = np.searchsorted(set_stamps, stamps)
    inside = (after > 0) & (after < set_stamps.size)
    stamps, after, positions = stamps[inside], after[inside], positions[inside]
    t0, t1 = set_stamps[after - 1], set_stamps[after]
    close = (t1 - t0) <= max_gap_s * 1e9
    stamps, after, positions, t0, t1 = (a[close] for a in (stamps, after, positions, t0, t1))
    fraction = ((stamps - t0) / np.maximum(t1 - t0, 1))[:, None]
    before = set_positions[after - 1]
    expected = before + fraction * (set_positions[after] - before)
    return stamps, np.linalg.norm(positions - expected, axis=1)


def largest_step(positions) -> float:
    """Largest displacement between consecutive positions (consecutive controller ticks). A
    tick that was not received makes two ticks count as one step: this over-reports, never
    under-reports."""
    positions = np.asarray(positions, dtype=float)
    if len(positions) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(positions, axis=0), axis=1).max())


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


def count_within(times_ns, intervals: list[tuple[int, int]]) -> int:
    """How many of the times fall inside one of the (start, end) intervals (ends included)."""
    times = np.sort(np.asarray(times_ns, dtype=np.int64))
    return sum(int(np.searchsorted(times, end, side="right") - np.searchsorted(times, start))
               for start, end in intervals)


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


def engage_offsets(engage_ns, goal_stamps_ns, goal_positions, held_stamps_ns, held_positions,
                   gap_s: float = 0.1, near_s: float = 0.3) -> np.ndarray:
    """For every engage, the distance from its first goal to where the arm was held just
    before: what the arm would jump by on engaging. Incremental mapping makes this zero up to
    the tracking error. An engage's first goal is the one that ends a pause of at least gap_s
    in the goal stream, nearest to the engage's announcement (within near_s: the announcement
    and the goal travel separately)."""
    goal_stamps = np.asarray(goal_stamps_ns, dtype=np.int64)
    held_stamps = np.asarray(held_stamps_ns, dtype=np.int64)
    if goal_stamps.size == 0:
        return np.array([])
    pauses = np.diff(goal_stamps, prepend=np.iinfo(np.int64).min // 2) >= gap_s * 1e9
    firsts = np.flatnonzero(pauses)
    offsets = []
    for engage in engage_ns:
        distance = np.abs(goal_stamps[firsts] - engage)
        if distance.size == 0 or distance.min() > near_s * 1e9:
            continue
        first = firsts[int(np.argmin(distance))]
        before = int(np.searchsorted(held_stamps, goal_stamps[first], side="right")) - 1
        if before >= 0:
            offsets.append(np.linalg.norm(np.asarray(goal_positions[first])
                                          - np.asarray(held_positions[before])))
    return np.array(offsets)


class LatencyHistogram:
    """Latencies counted in fixed bins: percentiles over a session of any length in constant
    memory (a bridge receives millions of commands in an hour).

    A value in [-tolerance_ms, 0) (two sites' clocks a little out of step) counts in the first
    bin. A value below -tolerance_ms or above max_ms is no latency this histogram can stand for
    (clocks far out of step, a forged stamp): it is counted in `out_of_range` and left out of the
    percentiles, never clipped into them.
    """

    def __init__(self, bin_ms: float = 0.01, max_ms: float = 2000.0, tolerance_ms: float = 0.0):
        if not 0.0 < bin_ms < max_ms or tolerance_ms < 0.0:
            raise ValueError(f"LatencyHistogram needs 0 < bin_ms < max_ms and tolerance_ms >= 0, "
                             f"got {bin_ms}, {max_ms}, {tolerance_ms}")
        self.bin_ms = bin_ms
        self.max_ms = max_ms
        self.tolerance_ms = tolerance_ms
        self._counts = np.zeros(int(round(max_ms / bin_ms)) + 1, dtype=np.int64)
        self.count = 0
        self.out_of_range = 0

    def add(self, value_ms: float) -> bool:
        """Count value_ms; False (and counted out of range) if it is not a plausible one."""
        if not -self.tolerance_ms <= value_ms <= self.max_ms:  # NaN too
            self.out_of_range += 1
            return False
        self._counts[max(0, int(value_ms / self.bin_ms))] += 1
        self.count += 1
        return True

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0 to 100), to the upper edge of its bin; None when empty."""
        if not self.count:
            return None
        rank = max(1, int(np.ceil(q / 100.0 * self.count)))
        index = int(np.searchsorted(np.cumsum(self._counts), rank))
        return round((index + 1) * self.bin_ms, 6)


def largest_gap_within(arrivals, intervals) -> int:
    """Largest time between consecutive arrivals of a stream whose items were both sent inside
    one of intervals (so pauses of the sender in between intervals do not count).

    arrivals: (arrival time, send stamp) in arrival order, ns; intervals: (start, end) in the
    send stamps' clock. 0 when no two consecutive items share an interval.
    """
    def interval_of(stamp):
        return next((i for i, (start, end) in enumerate(intervals) if start <= stamp <= end),
                    None)

    largest = 0
    previous = None
    for arrival, stamp in arrivals:
        current = interval_of(stamp)
        if previous is not None and current is not None and current == previous[1]:
            largest = max(largest, arrival - previous[0])
        previous = (arrival, current)
    return largest


def path_at(stamps_ns, points, at_ns) -> np.ndarray:
    """A path's positions (time-ordered stamps, one point per row) at the times at_ns (any
    shape; the result has one more axis), interpolated, held at the path's ends."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    points = np.asarray(points, dtype=float)
    grid = (stamps_ns - stamps_ns[0]) * 1e-9
    at = (np.asarray(at_ns, dtype=np.int64) - stamps_ns[0]) * 1e-9
    return np.stack([np.interp(at, grid, points[:, axis]) for axis in range(points.shape[1])],
                    axis=-1)


def path_deviation(reference_ns, reference_positions, replay_ns, replay_positions,
                   offset_ns: int, search_ns: int = 500_000_000, step_ns: int = 1_000_000,
                   window_ns: int = 0) -> tuple[int, np.ndarray]:
    """How far a replayed path lies from a reference path, time-aligned: the replay's time t
    is the reference's t - offset, with offset_ns refined within +-search_ns to the one that
    minimises the median distance (the two sessions' latencies differ a little). Returns
    that offset and, for each replay sample inside the reference's time span, its distance
    to the reference position at the aligned time or, with window_ns, the nearest reference
    position within +-window_ns of it (so that a moment's delay in either session, which
    shifts the path in time but not in space, does not count as deviation)."""
    reference_ns = np.asarray(reference_ns, dtype=np.int64)
    reference = np.asarray(reference_positions, dtype=float)
    replay_ns = np.asarray(replay_ns, dtype=np.int64)
    replay = np.asarray(replay_positions, dtype=float)
    if reference_ns.size < 2 or replay_ns.size == 0:
        return offset_ns, np.array([])

    def distances(offset: int, window: int = 0) -> np.ndarray:
        aligned = replay_ns - offset
        inside = (aligned >= reference_ns[0]) & (aligned <= reference_ns[-1])
        shifts = (np.arange(-window, window + 1, step_ns, dtype=np.int64) if window
                  else np.zeros(1, dtype=np.int64))
        # (samples, shifts, 3)
        candidates = path_at(reference_ns, reference, aligned[inside][:, None] + shifts[None, :])
        gaps = np.linalg.norm(candidates - replay[inside][:, None, :], axis=2)
        return gaps.min(axis=1)

    def median_distance(offset: int) -> float:
        found = distances(offset)
        return float(np.median(found)) if found.size else np.inf

    best = min(range(offset_ns - search_ns, offset_ns + search_ns + 1, step_ns),
               key=median_distance)
    return best, distances(best, window_ns)


@dataclass(frozen=True)
class FollowingStretch:
    """A stretch of replay time in which both sessions' consoles followed."""
    start_ns: int
    end_ns: int
    #: After a lasting difference in following (one session paused or stopped following and
    #: re-engaged while the other went on) the two arms no longer stand at the same place:
    #: the teleoperation is incremental, so from a common engage on they move alike, but from
    #: where each was. Such a stretch is compared relative to where it starts.
    rebased: bool


def clipped_intervals(changes: list[tuple[int, bool]], from_ns: int,
                      end_ns: int) -> list[tuple[int, int]]:
    """following_intervals of time-ordered changes, clipped to [from_ns, end_ns]."""
    return [(max(s, from_ns), min(e, end_ns)) for s, e in following_intervals(changes, end_ns)
            if e > from_ns and s < end_ns]


def command_gaps(intervals: list[tuple[int, int]], command_ns, gap_ns: int,
                 settle_ns: int) -> list[tuple[int, int]]:
    """The gaps of more than gap_ns in a console's commands within its following intervals,
    each with settle_ns after it: the arm stood (a stall of the console, its bridge or its
    device) although the console still said following, then caught up."""
    commands = np.sort(np.asarray(command_ns, dtype=np.int64))
    gaps = []
    for start, end in intervals:
        inside = commands[(commands > start) & (commands < end)]
        moments = np.concatenate(([start], inside, [end]))
        gaps += [(int(before), int(after) + settle_ns)
                 for before, after in zip(moments[:-1], moments[1:], strict=True)
                 if after - before > gap_ns]
    return gaps


def following_stretches(reference: list[tuple[int, bool]], replay: list[tuple[int, bool]],
                        offset_ns: int, from_ns: int, end_ns: int,
                        tolerance_ns: int = 100_000_000, shortest_ns: int = 50_000_000,
                        excluded: list[tuple[int, int]] = ()
                        ) -> tuple[list[FollowingStretch], int]:
    """The stretches from from_ns to end_ns (replay time; the replay's time t is the
    reference's t - offset_ns) in which both the reference and the replay followed, at least
    shortest_ns long, and the number of lasting differences: moments at which one followed
    and the other not for longer than tolerance_ns (an engage 30 ms later in one session
    is timing, not a difference). Every stretch after the first lasting difference is
    rebased. The excluded (start, end) intervals are cut out of the stretches: moments not to
    compare (command gaps) that are no difference in following."""
    shifted = [(t + offset_ns, following) for t, following in reference]
    ours = clipped_intervals(shifted, from_ns, end_ns)
    theirs = clipped_intervals(replay, from_ns, end_ns)
    both = [(max(a, c), min(b, d)) for a, b in ours for c, d in theirs if max(a, c) < min(b, d)]
    # Where exactly one follows: the symmetric difference of the two interval sets.
    edges = sorted({from_ns, end_ns, *(t for span in ours + theirs for t in span)})
    lasting, run_start = [], None
    for left, right in zip(edges, edges[1:], strict=False):
        middle = (left + right) // 2
        differ = (any(a <= middle < b for a, b in ours)
                  != any(c <= middle < d for c, d in theirs))
        if differ and run_start is None:
            run_start = left
        if not differ and run_start is not None:
            if left - run_start > tolerance_ns:
                lasting.append(run_start)
            run_start = None
    if run_start is not None and end_ns - run_start > tolerance_ns:
        lasting.append(run_start)
    first_difference = min(lasting, default=None)
    for cut_start, cut_end in sorted(excluded):
        both = [piece for start, end in both
                for piece in ((start, min(end, cut_start)), (max(start, cut_end), end))
                if piece[0] < piece[1]]
    stretches = [FollowingStretch(start, end, first_difference is not None
                                  and first_difference <= start)
                 for start, end in both if end - start >= shortest_ns]
    return stretches, len(lasting)
