"""How far a replayed session's arm tip path lies from the recorded one (`telesurg demo
--replay`, telesurg.session.playback).

The replay starts where the recorded arm was first ENABLED (replay_start). The two paths are
aligned by the player's clock (or on the first engagement), then by the constant time offset
that fits best, and compared over the stretches in which both consoles followed.

Pure: recorded messages by site and topic, [(arrival ns, CDR bytes)], in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telesurg.analysis.metrics import (
    FollowingStretch,
    clipped_intervals,
    command_gaps,
    following_stretches,
    path_at,
    path_deviation,
    percentiles,
)
from telesurg.analysis.recording import Track, decoded, following_changes, pose_track
from telesurg.contract import topics
from telesurg.contract.states import OperatingState
from telesurg.contract.topics import MASTER, PATIENT

#: How far from the aligned time a replayed tip position may match the recorded path: the
#: stalls of a busy machine delay either session by this order, in time but not in space.
REPLAY_WINDOW_MS = 100.0
#: After a gap in a console's commands, how long its arm is given to catch up before the
#: comparison resumes (at the arm controller's 0.1 m/s a 2 mm step, the most a console sends
#: without disengaging, takes 20 ms).
CATCH_UP_MS = 50.0


def receive_times(messages: list[tuple[int, bytes]]) -> np.ndarray:
    return np.array([t for t, _ in messages], dtype=np.int64)


def first_engagement(changes: list[tuple[int, bool]], after_ns: int) -> int | None:
    """Time of the first (time, following) change to following at or after after_ns."""
    return next((t for t, following in changes if t >= after_ns and following), None)


#: How long before the surgeon's engaging press a replay starts, when it cannot start at the
#: recorded ENABLED (replay_start): the pedal is then played released first, then pressed.
BEFORE_PRESS_NS = 1_000_000


def replay_start(enabled_ns: int, following: list[tuple[int, bool]],
                 presses: list[tuple[int, bool]]) -> int:
    """Where a replay of a recording starts: at the first ENABLED its master recorder took,
    unless the console followed before that (the recorder took the latched ENABLED late, at
    discovery): then just before the operator-present press that engaged the console (the
    last press at or before the first following, else that following itself), so that the
    replay engages as the recording did rather than at a later re-press. following and
    presses: (time, value) of /console/following and /console/operator_present in order."""
    engaged = first_engagement(following, 0)
    if engaged is None or engaged >= enabled_ns:
        return enabled_ns
    pressed = [t for (t, down), (_, before) in zip(presses, [(0, False), *presses], strict=False)
               if down and not before and t <= engaged]
    return (pressed[-1] if pressed else engaged) - BEFORE_PRESS_NS


def released_at_start(start_ns: int, enabled_ns: int, presses: list[tuple[int, bool]]) -> bool:
    """Whether a replay starting at start_ns holds the operator-present pedal released until
    the recording presses it: when it starts just before the press that engaged the console
    (replay_start), and when the recording holds no pedal state before start_ns but a press
    after it (its recorder joined the surgeon's pedal after the first state: released until
    that press). Else the replay takes the state recorded before the start, if any."""
    if start_ns < enabled_ns:
        return True
    if any(t < start_ns for t, _ in presses):
        return False
    return next((down for t, down in presses if t >= start_ns), False)


def procedure_end(states: list[tuple[int, str]]) -> int | None:
    """When a recorded procedure ended, from its operating states (time, state) in order: the
    first DISABLED after the last ENABLED, if the arm stayed DISABLED to the end; else None."""
    last_enabled = max((i for i, (_, state) in enumerate(states)
                        if state == OperatingState.ENABLED), default=None)
    if last_enabled is None or states[-1][1] != OperatingState.DISABLED:
        return None
    return next(t for t, state in states[last_enabled:] if state == OperatingState.DISABLED)


@dataclass(frozen=True)
class ReplayReference:
    """What a replay is compared with, from the recorded session (the master site's
    following and commands, the patient site's tip path)."""

    start_ns: int         # when the recorded arm was first ENABLED: where the replay starts
    engage_ns: int        # the recording's first engagement from there
    following: list[tuple[int, bool]]  # (receive time ns, following) at the master site
    commands_ns: np.ndarray  # receive times of the console's /psm/servo_cp
    tips: Track           # the arm's tip path
    # When the recorded procedure ended: the arm DISABLED after its last ENABLED (None if it
    # never was). Nothing later is compared: the replay's own end comes at its own moment.
    end_ns: int | None = None

    def deviation(self, messages: dict, played_at_ns: int | None) -> dict:
        """How far the new session's arm tip path (its recorded messages by site and topic)
        lies from the recorded one, over the stretches from the first engagement on in which
        both consoles followed (replay_compared_s of the reference's replay_following_s).

        replay_deviation_mm: each tip position's distance to the recorded path within
        REPLAY_WINDOW_MS of the aligned time; replay_deviation_rigid_mm: to the recorded
        position at the aligned time itself, which also counts the sessions' timing jitter
        (a 50 ms stall at 20 mm/s is 1 mm); replay_offset_ms: the fitted time offset beyond
        the alignment. replay_differences counts the moments at which
        one console followed and the other not for over 100 ms (a pause of one session
        only): every stretch after the first of them starts with the arms at different places
        and is compared relative to its start (replay_rebased_stretches of
        replay_stretches); replay_in_step_to_end says there was none."""
        changes = following_changes(decoded(messages, MASTER, topics.CONSOLE_FOLLOWING))
        engaged = first_engagement(changes, 0)
        track = pose_track(decoded(messages, PATIENT, topics.PSM_MEASURED_CP))
        stamps, tips = track.times_ns, track.positions_m
        if engaged is None or not stamps.size:
            return {"replay_deviation_mm": percentiles([]),
                    "replay_deviation_rigid_mm": percentiles([]), "replay_compared_s": 0.0,
                    "replay_following_s": 0.0, "replay_stretches": 0,
                    "replay_rebased_stretches": 0, "replay_differences": 0,
                    "replay_in_step_to_end": False, "replay_offset_ms": None}
        # Aligned by the player's clock: the recording's start was played at played_at_ns
        # (the consoles may engage at different moments, if one stalls or the recorder
        # joined late and missed a press); else on the first engagement.
        anchor = (played_at_ns - self.start_ns if played_at_ns is not None
                  else engaged - self.engage_ns)
        # From the first engagement of either (an earlier one in the recording is a
        # difference too: its arm moved first).
        engaged = min(engaged, self.engage_ns + anchor)
        end = min(int(stamps[-1]), int(self.tips.times_ns[-1]) + anchor,
                  *(() if self.end_ns is None else (self.end_ns + anchor,)))
        shifted = [(t + anchor, f) for t, f in self.following]
        # Where either console's commands stopped, its arm stood: not compared.
        gap, catch_up = int(REPLAY_WINDOW_MS * 1e6), int(CATCH_UP_MS * 1e6)
        stood = (command_gaps(clipped_intervals(changes, engaged, end),
                              receive_times(messages[MASTER].get(topics.PSM_SERVO_CP.name, [])),
                              gap, catch_up)
                 + command_gaps(clipped_intervals(shifted, engaged, end),
                                self.commands_ns + anchor, gap, catch_up))
        stretches, differences = following_stretches(
            self.following, changes, anchor, engaged, end, excluded=stood)
        reference = (self.tips.times_ns, self.tips.positions_m)
        # The time offset is fitted where the arms should stand at the same places.
        absolute = _inside(stamps, [s for s in stretches if not s.rebased])
        offset = (path_deviation(*reference, stamps[absolute], tips[absolute], anchor)[0]
                  if absolute.any() else anchor)
        windowed, rigid = [], []
        for stretch in stretches:
            inside = _inside(stamps, [stretch])
            points = tips[inside]
            if stretch.rebased:
                points = points - (path_at(stamps, tips, stretch.start_ns)
                                   - path_at(*reference, stretch.start_ns - offset))
            paths = (*reference, stamps[inside], points, offset)
            windowed.append(path_deviation(*paths, search_ns=0,
                                           window_ns=int(REPLAY_WINDOW_MS * 1e6))[1])
            rigid.append(path_deviation(*paths, search_ns=0)[1])
        reference_following = clipped_intervals(shifted, engaged, end)
        return {"replay_deviation_mm": percentiles(_joined(windowed), 1000.0),
                "replay_deviation_rigid_mm": percentiles(_joined(rigid), 1000.0),
                "replay_window_ms": REPLAY_WINDOW_MS,
                "replay_compared_s": round(sum(s.end_ns - s.start_ns for s in stretches) * 1e-9,
                                           3),
                "replay_following_s": round(sum(e - s for s, e in reference_following) * 1e-9,
                                            3),
                "replay_stretches": len(stretches),
                "replay_rebased_stretches": sum(s.rebased for s in stretches),
                "replay_differences": differences,
                "replay_in_step_to_end": differences == 0,
                "replay_offset_ms": round((offset - anchor) * 1e-6, 3)}


def _inside(stamps: np.ndarray, stretches: list[FollowingStretch]) -> np.ndarray:
    inside = np.zeros(stamps.shape, dtype=bool)
    for stretch in stretches:
        inside |= (stamps >= stretch.start_ns) & (stamps <= stretch.end_ns)
    return inside


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.array([])
