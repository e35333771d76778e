"""Patient-side arm control: Cartesian servo goals to joint setpoints the arm can follow.

Pure Python + numpy (no rclpy). The controller never moves the arm without a reason: it starts
by holding where the arm is, follows only fresh goals, interpolates between command packets
within the joint velocity limits, refuses goals that would jump, and holds the arm's measured
position as soon as commands go stale, the safety supervisor's operating state is anything but
ENABLED, or the supervisor falls silent (defense in depth: whatever any other node says).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from telesurg.arm.kinematics import ARM_JOINT_NAMES, JOINT_LIMITS, JOINT_NAMES, forward, inverse
from telesurg.contract import params
from telesurg.contract.states import HoldCause, OperatingState

ARM_JOINTS = len(ARM_JOINT_NAMES)


@dataclass(frozen=True)
class ArmControllerConfig:
    """The controller's settings: the arm_controller node's parameters (telesurg.contract.params
    gives their defaults and meaning), timeouts in seconds. Build it with from_parameters() or
    defaults()."""

    rate_hz: float
    command_timeout_s: float
    joint_states_timeout_s: float
    max_goal_jump_m: float
    max_tip_speed_m_s: float
    velocity_scale: float
    interpolation_max_s: float
    supervisor_timeout_s: float

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> ArmControllerConfig:
        """From the arm_controller node's parameter values, by name (timeouts in ms there)."""
        return cls(rate_hz=values["rate_hz"],
                   command_timeout_s=values["command_timeout_ms"] / 1000.0,
                   joint_states_timeout_s=values["joint_states_timeout_ms"] / 1000.0,
                   max_goal_jump_m=values["max_goal_jump_m"],
                   max_tip_speed_m_s=values["max_tip_speed_m_s"],
                   velocity_scale=values["velocity_scale"],
                   interpolation_max_s=values["interpolation_max_s"],
                   supervisor_timeout_s=values["supervisor_timeout_ms"] / 1000.0)

    @classmethod
    def defaults(cls) -> ArmControllerConfig:
        """What the arm_controller node runs with unless its parameters are set."""
        return cls.from_parameters(params.defaults("arm_controller"))


class ArmController:
    def __init__(self, config: ArmControllerConfig):
        self.config = config
        self._lower = np.array([JOINT_LIMITS[name].lower for name in JOINT_NAMES])
        self._upper = np.array([JOINT_LIMITS[name].upper for name in JOINT_NAMES])
        self._max_speed = config.velocity_scale * np.array(
            [JOINT_LIMITS[name].velocity for name in JOINT_NAMES])
        self.measured: np.ndarray | None = None
        self._measured_time = -math.inf
        self.setpoint: np.ndarray | None = None
        self._setpoint_tip: np.ndarray | None = None
        self._last_tick = None
        # Interpolation from where the setpoint was to the newest goal, over one packet period.
        self._goal_from: np.ndarray | None = None
        self._goal_to: np.ndarray | None = None
        self._goal_time = -math.inf
        self._goal_duration = 0.0
        self._period_estimate = 1.0 / config.rate_hz
        self._last_command_time = -math.inf
        self._jaw_goal: float | None = None
        self.holding = True
        self.hold_cause: HoldCause | None = HoldCause.NO_COMMAND_YET  # None while following
        self._hold_at: np.ndarray | None = None  # where the arm was when the hold began
        self.unreachable_goals = 0
        self.refused_goals = 0
        self.operating_state: OperatingState | None = None  # the supervisor's, once heard
        self._operating_state_time = -math.inf

    def on_operating_state(self, state: str, now: float) -> None:
        """The safety supervisor's /psm/operating_state, repeated as its heartbeat. A state
        that is none of CRTK's counts as not ENABLED, and is not kept."""
        self.operating_state = OperatingState.parse(state)
        self._operating_state_time = now

    def why_not_enabled(self, now: float) -> HoldCause | None:
        """Why the arm may not follow commands now (None if it may)."""
        if now - self._operating_state_time > self.config.supervisor_timeout_s:
            return (HoldCause.SUPERVISOR_SILENT if math.isfinite(self._operating_state_time)
                    else HoldCause.SUPERVISOR_NOT_HEARD)
        if self.operating_state is not OperatingState.ENABLED:
            return HoldCause.NOT_ENABLED
        return None

    @property
    def hold_reason(self) -> str:
        """Why the arm holds, in words ("" while it follows)."""
        return self._in_words(self.hold_cause)

    def _in_words(self, cause: HoldCause | None) -> str:
        if cause is HoldCause.NOT_ENABLED:
            return f"{cause} {self.operating_state or 'unknown'}"
        return cause or ""

    def on_joint_states(self, positions: np.ndarray, now: float) -> None:
        """Measured positions of JOINT_NAMES (7 values)."""
        self.measured = np.asarray(positions, dtype=float)
        self._measured_time = now

    def on_servo_cp(self, pose: np.ndarray, now: float) -> str:
        """A Cartesian tool tip goal; returns "" if taken, else why it was refused."""
        if self.setpoint is None:
            return "arm position unknown"
        not_enabled = self.why_not_enabled(now)
        if not_enabled:
            return self._in_words(not_enabled)
        result = inverse(pose, seed=self.setpoint[:ARM_JOINTS])
        if not result.reachable:
            self.unreachable_goals += 1  # follow the nearest reachable pose
        jump = float(np.linalg.norm(forward(result.q)[:3, 3] - self.setpoint_tip()[:3, 3]))
        if jump > self.config.max_goal_jump_m:
            self.refused_goals += 1
            return f"goal {jump * 1000:.1f} mm from the setpoint exceeds the jump limit"
        since_last = now - self._last_command_time
        if since_last < self.config.interpolation_max_s:
            self._period_estimate += 0.1 * (since_last - self._period_estimate)
        # The new segment starts where the interpolated target is now, so the target path is
        # continuous and trails the goals by about one command period.
        self._goal_from = self._target(now)
        self._goal_to = result.q
        self._goal_time = now
        self._goal_duration = min(self._period_estimate, self.config.interpolation_max_s)
        self._last_command_time = now
        return ""

    def on_jaw(self, jaw: float, now: float) -> None:
        self._jaw_goal = float(np.clip(jaw, self._lower[-1], self._upper[-1]))

    def setpoint_tip(self) -> np.ndarray:
        if self._setpoint_tip is None:
            self._setpoint_tip = forward(self.setpoint[:ARM_JOINTS])
        return self._setpoint_tip

    def arm_silent(self, now: float) -> bool:
        """True while the arm's joint states are missing or older than the timeout."""
        return self.measured is None or (
            now - self._measured_time > self.config.joint_states_timeout_s)

    def tick(self, now: float) -> np.ndarray | None:
        """One control period: the joint setpoint to command, or None while the arm is silent
        (with no measurement there is nothing safe to command)."""
        if self.arm_silent(now):
            self._last_tick = None
            return None
        # A late tick (a stalled process) earns at most 1.5 periods of motion, not a burst.
        dt = 1.0 / self.config.rate_hz if self._last_tick is None else min(
            now - self._last_tick, 1.5 / self.config.rate_hz)
        self._last_tick = now
        not_enabled = self.why_not_enabled(now)
        if not_enabled:
            if not self.holding or self.setpoint is None:
                self._hold(not_enabled)
            self.hold_cause = not_enabled
            self._last_command_time = -math.inf  # following resumes on fresh commands only
        elif now - self._last_command_time > self.config.command_timeout_s:
            cause = (HoldCause.COMMANDS_STALE if self.setpoint is not None
                     else HoldCause.NO_COMMAND_YET)
            if not self.holding or self.setpoint is None:
                self._hold(cause)
            elif self.hold_cause not in (HoldCause.COMMANDS_STALE, HoldCause.NO_COMMAND_YET):
                self.hold_cause = HoldCause.NO_COMMAND_SINCE_ENABLED  # the old cause is gone
        else:
            self.holding = False
            self.hold_cause = None
        if self.holding:
            self._step_towards(self._hold_at[:ARM_JOINTS], self._hold_at[-1], dt)
        else:
            self._step_towards(self._target(now), self._jaw_goal, dt)
        return self.setpoint

    def _step_towards(self, target: np.ndarray, jaw: float | None, dt: float) -> None:
        """Move the setpoint towards target (arm joints) and jaw within one tick of dt: the
        joint velocity limits and the tool tip speed cap hold for every step, entering and
        leaving a hold included."""
        limit = self._max_speed * dt
        setpoint = self.setpoint.copy()
        step = np.clip(target - setpoint[:ARM_JOINTS], -limit[:ARM_JOINTS], limit[:ARM_JOINTS])
        # Cap the tool tip's speed too: joint limits alone allow centimetres per second more
        # at the tip than surgical motion needs. Steps are small, so scaling is near-linear.
        tip_move = float(np.linalg.norm(
            forward(setpoint[:ARM_JOINTS] + step)[:3, 3] - self.setpoint_tip()[:3, 3]))
        tip_limit = self.config.max_tip_speed_m_s * dt
        if tip_move > tip_limit:
            step *= tip_limit / tip_move
        setpoint[:ARM_JOINTS] += step
        if jaw is not None:
            setpoint[-1] += np.clip(jaw - setpoint[-1], -limit[-1], limit[-1])
        self._set(np.clip(setpoint, self._lower, self._upper))

    def _target(self, now: float) -> np.ndarray:
        """Where the interpolation between the last two goals is at time now."""
        if self._goal_to is None:
            return self.setpoint[:ARM_JOINTS].copy()
        alpha = 1.0 if self._goal_duration <= 0 else min(
            1.0, (now - self._goal_time) / self._goal_duration)
        return self._goal_from + alpha * (self._goal_to - self._goal_from)

    def _hold(self, cause: HoldCause) -> None:
        """Hold where the arm is now (its measured position, not the last setpoint): the
        setpoint goes there within the same per-tick limits as any motion (it is the arm's
        tracking lag away, or the whole way when this is the first setpoint)."""
        self.holding = True
        self.hold_cause = cause
        self._hold_at = np.clip(self.measured, self._lower, self._upper)
        if self.setpoint is None:
            self._set(self._hold_at)
        self._jaw_goal = None
        self._goal_from = self._goal_to = None

    def _set(self, setpoint: np.ndarray) -> None:
        self.setpoint = setpoint
        self._setpoint_tip = None
