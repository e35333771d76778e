"""A virtual surgeon standing in for a haptic master device and its pedals.

Every sample is a deterministic function of (task, seed, t): the ROS node or a test may ask for
any time in any order. The hand moves smoothly (C1) through the whole session; at a clutch the
hand pauses the task and moves back toward the workspace centre, as surgeons do when the master
approaches the edge of its workspace; only the teleoperation mapping stops following.
"""

from __future__ import annotations

import math

import numpy as np

from telesurg.master.teleop import MasterInput

TASKS = ("suturing", "figure8")
PRESENCE_AT_S = 0.5  # operator-present pedal goes down here and stays down
CLUTCH_EVERY_S = 7.0  # mean spacing of clutch-and-reposition events
CLUTCH_JITTER_S = 0.5  # each event moves by up to this much, so spacing stays in 6-8 s
SESSION_LIMIT_S = 4 * 3600.0  # clutch events are drawn up front for this long
DRIFT_SPEED_M_S = 0.003  # the task creeps along the wound; clutches bring the hand back
TREMOR_HZ = (8.5, 11.5)
TREMOR_COMPONENTS = 3

SUTURE_RADIUS_M = 0.028
SUTURE_HZ = 0.22
SUTURE_WRIST_ROLL_RAD = math.pi / 4  # needle-driver roll either side of neutral per pass
# The roll of a needle pass turns the needle driver about its own shaft, which points down
# into the patient: about a horizontal axis it would tilt the wrist into its limits instead.
SHAFT_AXIS = np.array([0.0, 0.0, 1.0])
SUTURE_GRIPPER_OPEN_RAD = 0.8
SUTURE_GRIPPER_CLOSED_RAD = 0.15
FIGURE8_HALF_WIDTH_M = 0.02
FIGURE8_HZ = 0.2


def _rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation about a unit axis."""
    x, y, z = axis
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


class VirtualSurgeon:
    def __init__(self, task: str, seed: int, tremor_amplitude_m: float = 0.0003,
                 clutch_duration_s: float = 0.6) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
        if not 0.0 <= tremor_amplitude_m <= 0.005:
            raise ValueError(f"tremor_amplitude_m must be in [0, 0.005], got {tremor_amplitude_m}")
        if not 0.1 <= clutch_duration_s <= 2.0:
            raise ValueError(f"clutch_duration_s must be in [0.1, 2], got {clutch_duration_s}")
        self.task = task
        self.seed = seed
        self._clutch_duration = clutch_duration_s
        rng = np.random.default_rng(seed)
        shape = (TREMOR_COMPONENTS, 3)  # components x axes
        self._tremor_angular = 2.0 * math.pi * rng.uniform(*TREMOR_HZ, size=shape)
        self._tremor_phase = rng.uniform(0.0, 2.0 * math.pi, size=shape)
        weights = rng.uniform(0.5, 1.0, size=shape)
        self._tremor_amplitude = tremor_amplitude_m * weights / weights.sum(axis=0)
        self._task_phase = rng.uniform(0.0, 2.0 * math.pi)
        heading = rng.uniform(0.0, 2.0 * math.pi)
        # Wound (drift) direction, the horizontal across it, and up.
        self._along = np.array([math.cos(heading), math.sin(heading), 0.0])
        self._across = np.array([-math.sin(heading), math.cos(heading), 0.0])
        self._up = np.array([0.0, 0.0, 1.0])
        events = int(SESSION_LIMIT_S / CLUTCH_EVERY_S)
        self._clutch_starts = (PRESENCE_AT_S + CLUTCH_EVERY_S * np.arange(1, events + 1)
                               + rng.uniform(-CLUTCH_JITTER_S, CLUTCH_JITTER_S, size=events))

    def sample(self, t: float) -> MasterInput:
        if not 0.0 <= t <= SESSION_LIMIT_S:
            raise ValueError(f"t must be in [0, {SESSION_LIMIT_S}] s, got {t}")
        last = int(np.searchsorted(self._clutch_starts, t, side="right")) - 1
        into_clutch = t - self._clutch_starts[last] if last >= 0 else math.inf
        clutch = bool(into_clutch < self._clutch_duration)  # a numpy bool serialises as False
        task_time = t - self._task_time_lost(last, into_clutch)
        position, rotation, gripper = (self._suturing(task_time) if self.task == "suturing"
                                       else self._figure8(task_time))
        tremor = (self._tremor_amplitude
                  * np.sin(self._tremor_angular * t + self._tremor_phase)).sum(axis=0)
        position = position + self._drift(t, last, into_clutch) * self._along + tremor
        return MasterInput(position=position, rotation=rotation, gripper=gripper,
                           clutch=clutch, operator_present=t >= PRESENCE_AT_S)

    def _task_time_lost(self, last: int, into_clutch: float) -> float:
        """Task time lost to clutches up to now: during one the task slows to a stop and
        resumes (task speed cos^2 over the window), losing half the window, smoothly."""
        duration = self._clutch_duration
        lost = 0.5 * duration * max(last, 0)
        if into_clutch < duration:
            lost += 0.5 * into_clutch - duration * math.sin(
                2.0 * math.pi * into_clutch / duration) / (4.0 * math.pi)
        else:
            lost += 0.5 * duration * (last >= 0)
        return lost

    def _drift(self, t: float, last: int, into_clutch: float) -> float:
        """Distance crept along the wound since the last reposition.

        During a clutch the hand moves back to the start with a sin^2 speed profile, so the
        velocity is continuous at both ends of the window.
        """
        duration = self._clutch_duration
        if into_clutch >= duration:  # creeping since the end of the last clutch (or t=0)
            since = self._clutch_starts[last] + duration if last >= 0 else 0.0
            return DRIFT_SPEED_M_S * (t - since)
        previous_end = self._clutch_starts[last - 1] + duration if last >= 1 else 0.0
        at_press = DRIFT_SPEED_M_S * (self._clutch_starts[last] - previous_end)
        returned = (at_press + DRIFT_SPEED_M_S * duration) * (
            into_clutch / duration
            - math.sin(2.0 * math.pi * into_clutch / duration) / (2.0 * math.pi))
        return at_press + DRIFT_SPEED_M_S * into_clutch - returned

    def _suturing(self, task_time: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Circular needle passes across the wound, rolling the needle driver with each pass;
        the gripper holds the needle from the start of a pass until its end."""
        angle = 2.0 * math.pi * SUTURE_HZ * task_time + self._task_phase
        position = SUTURE_RADIUS_M * (math.cos(angle) * self._across
                                      + math.sin(angle) * self._up)
        rotation = _rotation_about(SHAFT_AXIS, -SUTURE_WRIST_ROLL_RAD * math.cos(angle))
        pass_fraction = (angle / (2.0 * math.pi)) % 1.0
        closed = _smoothstep(pass_fraction / 0.05) - _smoothstep((pass_fraction - 0.8) / 0.05)
        gripper = SUTURE_GRIPPER_OPEN_RAD - (
            SUTURE_GRIPPER_OPEN_RAD - SUTURE_GRIPPER_CLOSED_RAD) * closed
        return position, rotation, gripper

    def _figure8(self, task_time: float) -> tuple[np.ndarray, np.ndarray, float]:
        """A Gerono lemniscate in the horizontal plane with a gentle wrist sway."""
        angle = 2.0 * math.pi * FIGURE8_HZ * task_time + self._task_phase
        position = FIGURE8_HALF_WIDTH_M * math.sin(angle) * (
            self._along + math.cos(angle) * self._across)
        rotation = (_rotation_about(self._up, 0.25 * math.sin(angle))
                    @ _rotation_about(self._along, 0.15 * math.sin(2.0 * angle)))
        return position, rotation, 0.5 + 0.2 * math.sin(angle)


class PresenceRetry:
    """What a surgeon does when the console is not following although nothing asked it to stop
    (no clutch, pedal held): after patience_s, lift the operator-present pedal for release_s
    and press it again, the deliberate re-engage the console requires. Never automatic on the
    console's side: this is the operator acting."""

    def __init__(self, patience_s: float = 1.0, release_s: float = 0.2) -> None:
        self.patience_s = patience_s
        self.release_s = release_s
        self.presses = 0
        self._waiting_since = 0.0
        self._release_until: float | None = None

    def operator_present(self, t: float, pedal_down: bool, clutch: bool,
                         following: bool) -> bool:
        """The operator-present pedal as the surgeon works it at time t."""
        if self._release_until is not None:
            if t < self._release_until:
                return False
            self._release_until = None
            self._waiting_since = t
            self.presses += 1
            return pedal_down
        if not pedal_down or clutch or following:
            self._waiting_since = t
            return pedal_down
        if t - self._waiting_since >= self.patience_s:
            self._release_until = t + self.release_s
            return False
        return True
