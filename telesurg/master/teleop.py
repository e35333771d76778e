"""Master-to-arm teleoperation mapping, after the dVRK's mtsTeleOperationPSM.

Incremental mapping: every engage captures the (filtered) master pose and the arm pose, and
the arm goal is the captured arm pose moved by the scaled master displacement since then, so
engaging never moves the arm. Pure Python + numpy; the ROS node feeds update() at rate_hz.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from telesurg.arm.kinematics import JAW_JOINT_NAME, JOINT_LIMITS
from telesurg.contract import params
from telesurg.master.tremor import MAX_RATE_HZ, MIN_RATE_HZ, TremorFilter

#: The master device's base frame, which its poses are in.
MASTER_FRAME = "mtm_base"
IDLE = "idle"  # not following; the presence pedal must be released before a press engages
ARMED = "armed"  # not following; pressing the presence pedal engages
FOLLOWING = "following"
CLUTCHED = "clutched"  # operator present, clutch held: arm holds, releasing resumes


@dataclass(frozen=True)
class MasterInput:
    position: np.ndarray  # 3, master tip position, metres
    rotation: np.ndarray  # 3x3 master orientation
    gripper: float  # master gripper opening angle, rad
    clutch: bool  # clutch pedal pressed
    operator_present: bool  # operator-present pedal / head sensor


@dataclass(frozen=True)
class TeleopConfig:
    """The mapping's settings. Every field but the jaw range is the master_console node's
    parameter of the same name and unit (telesurg.contract.params gives the defaults): build
    it with from_parameters() or defaults()."""

    scale: float  # master to arm motion scale
    rate_hz: float  # rate update() is called at (and the tremor filter runs at)
    step_limit_m: float  # largest arm goal step accepted between two updates
    jaw_rate_rad_s: float  # jaw speed limit when following
    jaw_engage_rate_rad_s: float  # slower jaw right after engage
    jaw_engage_ramp_s: float  # how long the slow jaw lasts after engage
    gripper_to_jaw: float  # jaw angle per master gripper angle
    tremor_filter: bool
    # The arm's jaw range, the URDF's.
    jaw_min: float = JOINT_LIMITS[JAW_JOINT_NAME].lower
    jaw_max: float = JOINT_LIMITS[JAW_JOINT_NAME].upper

    @classmethod
    def from_parameters(cls, values: Mapping[str, object]) -> TeleopConfig:
        """From the master_console node's parameter values, by name."""
        return cls(**params.values_of_fields(cls, values))

    @classmethod
    def defaults(cls) -> TeleopConfig:
        """What the master_console node runs with unless its parameters are set."""
        return cls.from_parameters(params.defaults("master_console"))

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, bool) and not math.isfinite(value):
                raise ValueError(f"TeleopConfig.{field.name} must be finite, got {value}")
        for name in ("scale", "rate_hz", "step_limit_m", "jaw_rate_rad_s",
                     "jaw_engage_rate_rad_s", "gripper_to_jaw"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"TeleopConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.jaw_engage_ramp_s < 0.0:
            raise ValueError(
                f"TeleopConfig.jaw_engage_ramp_s must be >= 0, got {self.jaw_engage_ramp_s}")
        if self.jaw_min >= self.jaw_max:
            raise ValueError(f"TeleopConfig.jaw_min ({self.jaw_min}) must be < jaw_max "
                             f"({self.jaw_max})")
        if self.tremor_filter and not MIN_RATE_HZ <= self.rate_hz <= MAX_RATE_HZ:
            raise ValueError(f"TeleopConfig.rate_hz must be in [{MIN_RATE_HZ}, {MAX_RATE_HZ}] "
                             f"with the tremor filter on, got {self.rate_hz}")


@dataclass(frozen=True)
class TeleopCommand:
    following: bool
    goal: np.ndarray | None  # 4x4 arm tip goal in the arm base frame, None when not following
    jaw: float | None
    event: str  # "" or what changed this tick (see TeleopMapping)


class TeleopMapping:
    """Turns master inputs into arm goals, one update() per tick at config.rate_hz.

    Events: "engaged", "clutch_pressed", "clutch_released", "operator_left", "step_limit",
    "disengaged:<reason>". Engaging needs a press of the presence pedal seen after it was
    released (never a pedal already held at start or held through a stop).
    """

    def __init__(self, config: TeleopConfig) -> None:
        self.config = config
        self._tremor_filter = TremorFilter(config.rate_hz) if config.tremor_filter else None
        self._state = IDLE  # a pedal already held at start must be released first
        self._pending_event = ""
        self._master_at_engage: np.ndarray | None = None
        self._master_rotation_at_engage: np.ndarray | None = None
        self._arm_at_engage: np.ndarray | None = None
        self._previous_goal_position: np.ndarray | None = None
        self._jaw = 0.0
        self._ticks_since_engage = 0

    @property
    def following(self) -> bool:
        return self._state == FOLLOWING

    @property
    def state(self) -> str:
        return self._state

    def disengage(self, reason: str) -> None:
        """External stop (e.g. arm not ENABLED); a deliberate re-engage is needed afterwards."""
        self._state = IDLE
        self._pending_event = f"disengaged:{reason}"

    def update(self, master: MasterInput, arm_pose: np.ndarray, arm_jaw: float) -> TeleopCommand:
        event, self._pending_event = self._pending_event, ""
        if not master.operator_present:
            if self._state in (FOLLOWING, CLUTCHED):
                event = "operator_left"
            self._state = ARMED
            return self._holding(event)
        if self._state == IDLE:
            return self._holding(event)
        if self._state == ARMED:  # a fresh press of the presence pedal
            if master.clutch:
                self._state = CLUTCHED
                return self._holding("engaged")
            return self._engage(master, arm_pose, arm_jaw, "engaged")
        if master.clutch:
            if self._state == FOLLOWING:
                self._state = CLUTCHED
                return self._holding("clutch_pressed")
            return self._holding(event)
        if self._state == CLUTCHED:
            return self._engage(master, arm_pose, arm_jaw, "clutch_released")
        return self._follow(master)

    def _holding(self, event: str) -> TeleopCommand:
        return TeleopCommand(following=False, goal=None, jaw=None, event=event)

    def _engage(self, master: MasterInput, arm_pose: np.ndarray, arm_jaw: float,
                event: str) -> TeleopCommand:
        arm_pose = np.array(arm_pose, dtype=float)
        if arm_pose.shape != (4, 4):
            raise ValueError(f"arm_pose must be 4x4, got shape {arm_pose.shape}")
        self._master_at_engage = np.array(master.position, dtype=float)
        self._master_rotation_at_engage = np.array(master.rotation, dtype=float)
        self._arm_at_engage = arm_pose
        self._previous_goal_position = arm_pose[:3, 3].copy()
        if self._tremor_filter is not None:
            self._tremor_filter.reset(self._master_at_engage)
        self._jaw = float(arm_jaw)
        self._ticks_since_engage = 0
        self._state = FOLLOWING
        return TeleopCommand(following=True, goal=arm_pose.copy(), jaw=self._jaw, event=event)

    def _follow(self, master: MasterInput) -> TeleopCommand:
        config = self.config
        position = np.asarray(master.position, dtype=float)
        if self._tremor_filter is not None:
            position = self._tremor_filter.step(position)
        goal_position = (self._arm_at_engage[:3, 3]
                         + config.scale * (position - self._master_at_engage))
        # "not <=" also refuses a NaN goal from a faulty master reading.
        if not (np.linalg.norm(goal_position - self._previous_goal_position)
                <= config.step_limit_m):
            self._state = IDLE
            return self._holding("step_limit")
        master_rotation_change = np.asarray(master.rotation) @ self._master_rotation_at_engage.T
        goal = np.eye(4)
        goal[:3, :3] = master_rotation_change @ self._arm_at_engage[:3, :3]
        goal[:3, 3] = goal_position
        self._previous_goal_position = goal_position
        self._ticks_since_engage += 1
        return TeleopCommand(following=True, goal=goal, jaw=self._next_jaw(master.gripper),
                             event="")

    def _next_jaw(self, gripper: float) -> float:
        config = self.config
        target = min(max(gripper * config.gripper_to_jaw, config.jaw_min), config.jaw_max)
        just_engaged = self._ticks_since_engage <= config.jaw_engage_ramp_s * config.rate_hz
        rate = config.jaw_engage_rate_rad_s if just_engaged else config.jaw_rate_rad_s
        max_change = rate / config.rate_hz
        self._jaw += min(max(target - self._jaw, -max_change), max_change)
        return self._jaw


class StallGuard:
    """Whether a periodic silence check may judge now.

    After this process was itself not running (a stall of a busy machine), its first check
    comes before the samples that arrived meanwhile are taken, so the last sample it has looks
    old although the device kept sending. A check later than late_factor periods therefore
    waits one period; never two in a row, so a device silent through a stall of ours is still
    caught one period later.
    """

    def __init__(self, period_s: float, now: float, late_factor: float = 3.0) -> None:
        self.period_s = period_s
        self.late_factor = late_factor
        self.deferred = 0  # checks deferred so far, for the console's log
        self._last = now
        self._deferred_last = False

    def may_judge(self, now: float) -> bool:
        late = now - self._last > self.late_factor * self.period_s
        self._last = now
        if late and not self._deferred_last:
            self._deferred_last = True
            self.deferred += 1
            return False
        self._deferred_last = False
        return True
