"""Safety supervisor: the arm's CRTK operating state (DISABLED, ENABLED, PAUSED, FAULT), run as
the dVRK runs it, and the causes that change it.

Pure Python + numpy (no rclpy): time is passed in as float seconds of a monotonic clock. The
node feeds every input to an on_* method and every /psm/state_command to command(), and calls
update(now) when next_deadline(now) is due. Each of them first evaluates the state at now and
returns the transitions made, so the node can publish /psm/operating_state at once.

Commands (a refusal changes nothing and says why; "=" is accepted without a transition):

    state \\ command  enable               disable    pause            resume
    DISABLED         ENABLED if no cause  =          refused          refused
    ENABLED          =                    DISABLED   PAUSED (operator) refused
    PAUSED           refused: use resume  DISABLED   =                ENABLED if no cause
    FAULT            refused: disable     DISABLED   refused          refused

Homing (CRTK's is_homed; the state does not change). The arms telesurg drives report absolute
joint positions (MuJoCo, Gazebo), so the arm is homed from the start and homing needs no
motion: home is accepted whenever the arm's joint states are consistent (it answers is_homed
true, is_busy false), refused otherwise. unhome is accepted in DISABLED and FAULT only (an
arm that may move stays calibrated: disable first); while not homed, enable and resume are
refused until home. Nothing here takes time, so is_busy stays false.

Automatic transitions: ENABLED -> PAUSED on any pause cause; ENABLED or PAUSED -> FAULT on any
fault condition. Nothing else moves by itself: PAUSED leaves only on resume or disable, FAULT
only on disable. Every transition records its cause and a detail with the figures.

Pause causes. A cause "persists" while its condition holds now; enable and resume are refused,
naming every persisting cause and fault condition with its figures.

- LINK_LOST: the last /bridge/link_state overall is LOST (or unknown), or none came for
  link_state_timeout_ms (a dead patient bridge), or none ever came.
- COMMAND_STALE: the console reports following, yet no /psm/servo_cp came for
  command_timeout_ms (counted from the later of the last command and the start of following).
  Not while the console is clutched or disengaged: commands stop then by design.
- COMMAND_AGE: the latest command's one-way age (from its header stamp) is above
  max_command_age_ms, while the stream is live (that command came within command_timeout_ms).
  Once commands stop, no old command is being acted on, and the next command's age decides: else
  a stream stopped by the pause would block resume for ever. Age unknown (None or NaN): not
  checked, reported in warnings().
- COMMAND_STAMP: likewise, the latest command is stamped more than max_clock_skew_ms in the
  future: the sites' clocks are out of step (or the stamp is forged), so no age limit holds.
- PRESENCE_LOST: the operator-present pedal released while the console reports following, or
  within presence_grace_ms of a stop that ended a stream of commands (an event), or the console
  reporting following without the operator for presence_grace_ms (the two reports cross the
  bridge on topics of their own, so on an engage "following" may come before "present"). The
  latter clears as soon as the operator is back or the console stops following (re-engaging
  needs presence).
- STEP_LIMIT (event, never persists): the tip moved more than step_limit_mm (plus
  max_tip_speed_m_s times the time since the previous command arrived) between consecutive
  commands while ENABLED and following (a non-finite tip counts as over). The reference is
  dropped whenever following stops or the state leaves ENABLED: a re-engage re-captures, so its
  first command is no step from the last one before.
- JOINT_LIMIT (event, never persists): a measured joint comes within joint_limit_margin x its
  range of a limit while ENABLED. A persisting cause could never clear, as the paused arm holds
  where it is; instead a joint already inside the margin at enable or resume may move out, but
  not deeper than it was (plus joint_limit_slack x the margin, for measurement noise) without
  pausing again. Being inside the margin is reported in warnings().
- OPERATOR (event): the pause command.

Fault conditions (need a person before any enable):

- INCONSISTENT_JOINTS: the latest joint states have the wrong number of values or a NaN / inf.
- ARM_SILENT: no joint states for arm_timeout_ms, or none ever.

enable and resume are also refused while the console reports following: whatever happened in
between, the arm starts again only from a deliberate engage, never by rejoining a motion the
console kept streaming (for example if it missed a short PAUSED).

A fault condition does not move DISABLED (nothing is powered, and the arm may simply not be up
yet at start): it refuses enable instead. disable is accepted from every state, FAULT included,
as in CRTK: it is the safe direction, and enable stays refused while the condition persists.
"Safety supervisor silent" is the arm controller's own watchdog, not handled here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum

import numpy as np

from telesurg.contract import params
from telesurg.contract.states import LINK_ALIVE, OperatingState, OverallState
from telesurg.contract.states import StateCommand as Command


class Cause(StrEnum):
    # Pause causes.
    LINK_LOST = "link lost"
    COMMAND_STALE = "command stream stale"
    COMMAND_AGE = "command too old"
    COMMAND_STAMP = "command stamped in the future"
    STEP_LIMIT = "commanded step over the limit"
    JOINT_LIMIT = "arm near a joint limit"
    PRESENCE_LOST = "operator presence lost while following"
    OPERATOR = "operator pause"
    # Fault causes.
    INCONSISTENT_JOINTS = "inconsistent joint states"
    ARM_SILENT = "arm joint states stopped"


FAULT_CAUSES = frozenset({Cause.INCONSISTENT_JOINTS, Cause.ARM_SILENT})

DISABLED, ENABLED = OperatingState.DISABLED, OperatingState.ENABLED
PAUSED, FAULT = OperatingState.PAUSED, OperatingState.FAULT

@dataclass(frozen=True)
class SafetyConfig:
    """The supervisor's limits. Every field but joint_limit_slack is the safety_supervisor
    node's parameter of the same name and unit (telesurg.contract.params, which gives the
    defaults and the reasons for them): build it with from_parameters() or defaults()."""

    # One-way age of a command on arrival: above max pauses, above warn is reported.
    max_command_age_ms: float
    warn_command_age_ms: float
    # No command for this long while the console reports following: the stream is stale.
    command_timeout_ms: float
    # No /bridge/link_state for this long counts as LOST.
    link_state_timeout_ms: float
    step_limit_mm: float  # tip distance between consecutive commanded goals
    # Plus this much per second since the previous command arrived (the arm controller's tip
    # speed cap, the same parameter): gaps in the stream do not read as jumps.
    max_tip_speed_m_s: float
    # A command stamped further in the future than this is invalid: its age cannot be trusted.
    max_clock_skew_ms: float
    # Fraction of each joint's range: the arm's joints mix radians and metres. 2 % is 0.06 rad
    # on the outer yaw, 4.8 mm on the insertion.
    joint_limit_margin: float
    arm_timeout_ms: float  # no joint states for this long: FAULT
    # Following without the operator for this long: the console's own stop did not come.
    presence_grace_ms: float
    # How much deeper (fraction of the margin) a joint already inside the margin at enable or
    # resume may go before pausing again: measurement noise while holding must not re-pause.
    joint_limit_slack: float = 0.1

    @classmethod
    def from_parameters(cls, values: Mapping[str, object]) -> SafetyConfig:
        """From the safety_supervisor node's parameter values, by name."""
        return cls(**params.values_of_fields(cls, values))

    @classmethod
    def defaults(cls) -> SafetyConfig:
        """What the safety_supervisor node runs with unless its parameters are set."""
        return cls.from_parameters(params.defaults("safety_supervisor"))

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (_is_number(value) and math.isfinite(value)):
                raise ValueError(f"SafetyConfig.{field.name} must be a finite number, "
                                 f"got {value!r}")
        for name in ("max_command_age_ms", "warn_command_age_ms", "command_timeout_ms",
                     "link_state_timeout_ms", "step_limit_mm", "max_tip_speed_m_s",
                     "arm_timeout_ms", "presence_grace_ms"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"SafetyConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_clock_skew_ms < 0.0:
            raise ValueError(f"SafetyConfig.max_clock_skew_ms must be >= 0, "
                             f"got {self.max_clock_skew_ms!r}")
        if self.warn_command_age_ms >= self.max_command_age_ms:
            raise ValueError(f"SafetyConfig.warn_command_age_ms ({self.warn_command_age_ms!r}) "
                             f"must be < max_command_age_ms ({self.max_command_age_ms!r})")
        # Half the range from both ends would cover every position.
        if not 0.0 < self.joint_limit_margin < 0.5:
            raise ValueError(f"SafetyConfig.joint_limit_margin must be in (0, 0.5), "
                             f"got {self.joint_limit_margin!r}")
        if not 0.0 <= self.joint_limit_slack <= 1.0:
            raise ValueError(f"SafetyConfig.joint_limit_slack must be in [0, 1], "
                             f"got {self.joint_limit_slack!r}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Transition:
    time: float
    previous: OperatingState
    current: OperatingState
    cause: str  # a Cause, several joined by ", ", or "<command> command"
    detail: str  # human-readable, with the figures


@dataclass(frozen=True)
class CommandResult:
    accepted: bool
    state: OperatingState  # after the command
    reason: str  # what happened, or why refused
    transitions: list[Transition]  # made by this call, automatic ones included


@dataclass(frozen=True)
class _Finding:
    cause: Cause
    figures: str  # "" or the figures behind it

    def text(self) -> str:
        return f"{self.cause} ({self.figures})" if self.figures else str(self.cause)


def _g(value: float) -> str:
    return f"{value:g}"


class SafetySupervisor:
    """The operating state machine. See the module docstring for the rules."""

    def __init__(self, config: SafetyConfig | None, joint_limits: Sequence[Sequence[float]],
                 joint_names: Sequence[str] | None = None) -> None:
        self.config = config or SafetyConfig.defaults()
        limits = np.array(joint_limits, dtype=float)
        if limits.ndim != 2 or limits.shape[0] == 0 or limits.shape[1] != 2:
            raise ValueError(f"joint_limits must be a non-empty sequence of (lower, upper), "
                             f"got shape {limits.shape}")
        if not (np.all(np.isfinite(limits)) and np.all(limits[:, 0] < limits[:, 1])):
            raise ValueError(f"joint_limits must be finite with lower < upper, "
                             f"got {limits.tolist()}")
        if joint_names is None:
            joint_names = [f"joint {i}" for i in range(len(limits))]
        if len(joint_names) != len(limits):
            raise ValueError(f"joint_names must name the {len(limits)} joints, "
                             f"got {list(joint_names)}")
        self.joint_names = tuple(joint_names)
        self._lower, self._upper = limits[:, 0], limits[:, 1]
        self._margin = self.config.joint_limit_margin * (self._upper - self._lower)
        config = self.config
        self._command_timeout = config.command_timeout_ms * 1e-3
        self._link_timeout = config.link_state_timeout_ms * 1e-3
        self._arm_timeout = config.arm_timeout_ms * 1e-3
        self._max_tip_speed_mm_s = config.max_tip_speed_m_s * 1e3

        self._state = DISABLED
        self._transitions: list[Transition] = []
        self._link_overall: str | None = None
        self._link_heard = -math.inf
        self._command_time = -math.inf
        self._command_age_ms: float | None = None
        self._step_reference: np.ndarray | None = None
        self._following = False
        self._following_since = -math.inf
        self._present = False
        self._absent_since = -math.inf
        self._following_stopped_at = -math.inf
        self._joint_time = -math.inf
        self._joint_problem = ""  # why the latest joint states are inconsistent
        self._positions: np.ndarray | None = None  # latest consistent joint states
        self._joint_allowance: np.ndarray | None = None  # depth into the margin, while ENABLED
        self._homed = True  # absolute joint positions: see the module docstring

    @classmethod
    def for_arm(cls, config: SafetyConfig | None = None) -> SafetySupervisor:
        """A supervisor of telesurg.arm.kinematics' arm joints. Not the jaw: it rests at its closed
        limit."""
        from telesurg.arm.kinematics import ARM_JOINT_NAMES, JOINT_LIMITS

        limits = [(JOINT_LIMITS[name].lower, JOINT_LIMITS[name].upper)
                  for name in ARM_JOINT_NAMES]
        return cls(config, limits, ARM_JOINT_NAMES)

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> OperatingState:
        return self._state

    @property
    def is_homed(self) -> bool:
        return self._homed

    @property
    def cause(self) -> str:
        """The cause of the last transition ("" before any)."""
        return self._transitions[-1].cause if self._transitions else ""

    @property
    def transitions(self) -> list[Transition]:
        """Every transition so far, oldest first."""
        return list(self._transitions)

    def persisting_causes(self, now: float) -> list[str]:
        """What refuses enable and resume at now: pause causes, then fault conditions."""
        return [finding.text() for finding in self._pause_findings(now) + self._faults(now)]

    def fault_conditions(self, now: float) -> list[str]:
        return [finding.text() for finding in self._faults(now)]

    def warnings(self, now: float) -> list[str]:
        """Conditions worth reporting that change no state."""
        config = self.config
        out = []
        if self._command_live(now):
            age = self._command_age_ms
            if age is None:
                out.append("command age unknown: the one-way age limit is not checked")
            elif config.warn_command_age_ms < age <= config.max_command_age_ms:
                out.append(f"command age {_g(age)} ms above the warning level "
                           f"{_g(config.warn_command_age_ms)} ms")
        if (self._link_overall == OverallState.SINGLE
                and now < self._link_heard + self._link_timeout):
            out.append("link SINGLE: no redundancy left")
        if self._positions is not None:
            depth = self._depth(self._positions)
            out += [f"{Cause.JOINT_LIMIT}: {self._joint_figures(j)}"
                    for j in np.flatnonzero(depth > 0.0)]
        return out

    def next_deadline(self, now: float) -> float | None:
        """When update() must next run for a timeout to act on time if nothing arrives (now if
        already due), or None. Call it after update(now)."""
        deadlines = []
        if self._state in (ENABLED, PAUSED):
            deadlines.append(self._joint_time + self._arm_timeout)
        if self._state is ENABLED:
            deadlines.append(self._link_heard + self._link_timeout)
            if self._following:
                deadlines.append(self._stream_since() + self._command_timeout)
                if not self._present:
                    deadlines.append(self._presence_deadline())
        return max(now, min(deadlines)) if deadlines else None

    def _presence_deadline(self) -> float:
        """When following without the operator becomes a cause."""
        return (max(self._absent_since, self._following_since)
                + self.config.presence_grace_ms * 1e-3)

    # -- inputs ------------------------------------------------------------------------------

    def update(self, now: float) -> list[Transition]:
        """Applies the timeouts (link state silent, stream stale, arm silent) at now."""
        return self._evaluate(now, [])

    def on_link_state(self, now: float, overall: str) -> list[Transition]:
        """The overall state of /bridge/link_state: REDUNDANT, SINGLE or LOST (anything else
        counts as LOST)."""
        self._link_overall = str(overall)
        self._link_heard = now
        return self._evaluate(now, [])

    def on_command(self, now: float, tip_position: np.ndarray,
                   age_ms: float | None = None) -> list[Transition]:
        """Every /psm/servo_cp: its tip position (m) and one-way age from its header stamp."""
        tip = np.array(tip_position, dtype=float)
        if tip.shape != (3,):
            raise ValueError(f"tip_position must have shape (3,), got {tip.shape}")
        since_last = now - self._command_time
        self._command_time = now
        self._command_age_ms = None if age_ms is None or math.isnan(age_ms) else float(age_ms)
        events = []
        if self._state is ENABLED and self._following:
            reference = self._step_reference
            if not np.all(np.isfinite(tip)):
                events.append(_Finding(Cause.STEP_LIMIT, "non-finite tip position"))
                self._step_reference = None
            else:
                if reference is not None:
                    step_mm = float(np.linalg.norm(tip - reference)) * 1e3
                    # Commands lost on the way (a busy site, a lossy link) make the step
                    # between those that arrive longer, by at most the tip speed cap.
                    limit_mm = (self.config.step_limit_mm
                                + self._max_tip_speed_mm_s * since_last)
                    if step_mm > limit_mm:
                        events.append(_Finding(Cause.STEP_LIMIT,
                                               f"{_g(step_mm)} mm > {_g(limit_mm)} mm"))
                self._step_reference = tip
        else:
            self._step_reference = None
        return self._evaluate(now, events)

    def on_following(self, now: float, following: bool) -> list[Transition]:
        """/console/following, bridged from the master site."""
        following = bool(following)
        if following and not self._following:
            self._following_since = now
        if not following:
            self._step_reference = None  # the next engage re-captures
            # Only a stop that ends a stream of commands can be the console's answer to a
            # release still on its way; one held back by a link outage arrives long after the
            # commands ceased, and a release after it is no release while following.
            commanded = now - self._command_time <= self.config.presence_grace_ms * 1e-3
            if self._following and commanded:
                self._following_stopped_at = now
        self._following = following
        return self._evaluate(now, [])

    def on_operator_present(self, now: float, present: bool) -> list[Transition]:
        """/console/operator_present, bridged from the master site."""
        events = []
        if self._present and not present:
            self._absent_since = now
            # Released while the arm follows: a person must resume. The console stops following
            # on the same release and its report may cross the bridge first: a stop reported
            # within the grace before counts as following still.
            recently = now - self._following_stopped_at <= self.config.presence_grace_ms * 1e-3
            if self._following or recently:
                events.append(_Finding(Cause.PRESENCE_LOST, "released while following"))
        self._present = bool(present)
        return self._evaluate(now, events)

    def on_joint_states(self, now: float, positions: np.ndarray) -> list[Transition]:
        """The arm's measured positions, one per joint of joint_limits, in that order."""
        positions = np.array(positions, dtype=float)
        self._joint_time = now
        count = len(self._lower)
        events = []
        if positions.ndim != 1 or positions.size != count:
            self._joint_problem = f"{positions.size} values for {count} joints"
        elif not np.all(np.isfinite(positions)):
            bad = int(np.flatnonzero(~np.isfinite(positions))[0])
            self._joint_problem = f"{self.joint_names[bad]} is {positions[bad]}"
        else:
            self._joint_problem = ""
            self._positions = positions
            if self._state is ENABLED:
                events = self._joint_limit_events(positions)
        return self._evaluate(now, events)

    def command(self, now: float, command: Command | str) -> CommandResult:
        """A /psm/state_command: enable, disable, home, unhome, pause or resume."""
        transitions = self._evaluate(now, [])
        state = self._state
        try:
            command = Command(command)
        except ValueError:
            valid = ", ".join(Command)
            return self._refused(f"unknown command {command!r}: valid commands are {valid}",
                                 transitions)
        if command is Command.DISABLE:
            if state is DISABLED:
                return self._accepted("already DISABLED", transitions)
            detail = "disable command"
            faults = self.fault_conditions(now)
            if faults:  # enable will say so too; the transition records it
                detail += f"; enable stays refused while: {', '.join(faults)}"
            transitions.append(self._transition(now, DISABLED, "disable command", detail))
            return self._accepted(f"{state} -> DISABLED", transitions)
        if command is Command.HOME:
            faults = self.fault_conditions(now)
            if faults:
                return self._refused(f"home refused: {', '.join(faults)}", transitions)
            if self._homed:
                return self._accepted("already homed", transitions)
            self._homed = True
            return self._accepted("homed (absolute joint positions: no homing motion)",
                                  transitions)
        if command is Command.UNHOME:
            if state in (ENABLED, PAUSED):
                return self._refused(f"unhome refused in {state}: disable first", transitions)
            self._homed = False
            return self._accepted("not homed: enable refused until home", transitions)
        if command is Command.PAUSE:
            if state is PAUSED:
                return self._accepted("already PAUSED", transitions)
            if state is not ENABLED:
                return self._refused(f"pause refused in {state}: only ENABLED pauses",
                                     transitions)
            transitions.append(self._transition(now, PAUSED, Cause.OPERATOR, "pause command"))
            return self._accepted("ENABLED -> PAUSED", transitions)
        if command is Command.ENABLE:
            if state is ENABLED:
                return self._accepted("already ENABLED", transitions)
            if state is PAUSED:
                return self._refused("enable refused in PAUSED: use resume", transitions)
            if state is FAULT:
                return self._refused(f"enable refused in FAULT: disable first "
                                     f"({self._transitions[-1].detail})", transitions)
        elif state is not PAUSED:  # resume
            return self._refused(f"resume refused in {state}: only PAUSED resumes", transitions)
        blocking = self.persisting_causes(now)
        if not self._homed:
            blocking.append("the arm is not homed: send home")
        if self._following:
            # The console must have stopped (it learns the state over the bridge) so that the
            # operator engages afresh after the resume, and the arm does not rejoin a motion.
            blocking.append("the console is still following: it must stop, then re-engage")
        if blocking:
            return self._refused(f"{command} refused: {', '.join(blocking)}", transitions)
        transitions.append(self._transition(now, ENABLED, f"{command} command",
                                            f"{command} command, no cause persists"))
        return self._accepted(f"{state} -> ENABLED", transitions)

    # -- evaluation --------------------------------------------------------------------------

    def _evaluate(self, now: float, events: list[_Finding]) -> list[Transition]:
        if self._state in (ENABLED, PAUSED):
            faults = self._faults(now)
            if faults:
                return [self._transition_on(now, FAULT, faults)]
        if self._state is ENABLED:
            causes = events + self._pause_findings(now)
            if causes:
                return [self._transition_on(now, PAUSED, causes)]
        return []

    def _pause_findings(self, now: float) -> list[_Finding]:
        config = self.config
        out = []
        link = self._link_figures(now)
        if link:
            out.append(_Finding(Cause.LINK_LOST, link))
        if self._following:
            silence = now - self._stream_since()
            if now >= self._stream_since() + self._command_timeout:
                out.append(_Finding(Cause.COMMAND_STALE,
                                    f"no command for {_g(silence * 1e3)} ms while following, "
                                    f"limit {_g(config.command_timeout_ms)} ms"))
        age = self._command_age_ms
        if self._command_live(now) and age is not None:
            if age > config.max_command_age_ms:
                out.append(_Finding(Cause.COMMAND_AGE,
                                    f"{_g(age)} ms > {_g(config.max_command_age_ms)} ms"))
            elif age < -config.max_clock_skew_ms:
                out.append(_Finding(Cause.COMMAND_STAMP,
                                    f"{_g(-age)} ms ahead of this clock, more than the "
                                    f"{_g(config.max_clock_skew_ms)} ms the clocks may disagree"))
        if self._following and not self._present and now >= self._presence_deadline():
            out.append(_Finding(Cause.PRESENCE_LOST, ""))
        return out

    def _link_figures(self, now: float) -> str:
        """Why the link counts as lost at now, "" if it does not."""
        if self._link_overall is None:
            return "no /bridge/link_state yet"
        if now >= self._link_heard + self._link_timeout:
            return (f"no /bridge/link_state for {_g((now - self._link_heard) * 1e3)} ms, "
                    f"limit {_g(self.config.link_state_timeout_ms)} ms")
        if self._link_overall not in LINK_ALIVE:
            return f"overall {self._link_overall}"
        return ""

    def _faults(self, now: float) -> list[_Finding]:
        out = []
        if self._joint_problem:
            out.append(_Finding(Cause.INCONSISTENT_JOINTS, self._joint_problem))
        if self._joint_time == -math.inf:
            out.append(_Finding(Cause.ARM_SILENT, "none yet"))
        elif now >= self._joint_time + self._arm_timeout:
            out.append(_Finding(Cause.ARM_SILENT,
                                f"none for {_g((now - self._joint_time) * 1e3)} ms, "
                                f"limit {_g(self.config.arm_timeout_ms)} ms"))
        return out

    def _stream_since(self) -> float:
        return max(self._command_time, self._following_since)

    def _command_live(self, now: float) -> bool:
        return now < self._command_time + self._command_timeout

    def _depth(self, positions: np.ndarray) -> np.ndarray:
        """How far each joint is inside its margin (0 outside it)."""
        distance = np.minimum(positions - self._lower, self._upper - positions)
        return np.maximum(self._margin - distance, 0.0)

    def _joint_limit_events(self, positions: np.ndarray) -> list[_Finding]:
        depth = self._depth(positions)
        allowance = self._joint_allowance
        if allowance is None:  # enabled before any consistent joint states: none allowed
            allowance = np.zeros_like(depth)
        over = np.flatnonzero(depth > allowance)
        # Moving out of the margin narrows what is allowed: back in, it pauses again.
        self._joint_allowance = np.minimum(allowance, self._allowance(depth))
        return [_Finding(Cause.JOINT_LIMIT, self._joint_figures(j)) for j in over]

    def _allowance(self, depth: np.ndarray) -> np.ndarray:
        return np.where(depth > 0.0, depth + self.config.joint_limit_slack * self._margin, 0.0)

    def _joint_figures(self, j: int) -> str:
        position = self._positions[j]
        lower, upper = self._lower[j], self._upper[j]
        side, limit = ("lower", lower) if position - lower <= upper - position else (
            "upper", upper)
        return (f"{self.joint_names[j]} at {_g(position)}, {_g(abs(position - limit))} from "
                f"its {side} limit {_g(limit)}, margin {_g(self._margin[j])}")

    # -- transitions -------------------------------------------------------------------------

    def _transition_on(self, now: float, current: OperatingState,
                       findings: list[_Finding]) -> Transition:
        causes = list(dict.fromkeys(finding.cause for finding in findings))
        return self._transition(now, current, ", ".join(causes),
                                "; ".join(finding.text() for finding in findings))

    def _transition(self, now: float, current: OperatingState, cause: str,
                    detail: str) -> Transition:
        transition = Transition(now, self._state, current, str(cause), detail)
        self._transitions.append(transition)
        self._state = current
        # Each stay in ENABLED starts afresh: the next command is no step from an older one, and
        # a joint inside the margin now may move out but not deeper.
        self._step_reference = None
        self._joint_allowance = None
        if current is ENABLED and self._positions is not None:
            self._joint_allowance = self._allowance(self._depth(self._positions))
        return transition

    def _accepted(self, reason: str, transitions: list[Transition]) -> CommandResult:
        return CommandResult(True, self._state, reason, transitions)

    def _refused(self, reason: str, transitions: list[Transition]) -> CommandResult:
        return CommandResult(False, self._state, reason, transitions)
