"""Arm controller core: no motion without a reason, hold at the measured position, limits."""

import dataclasses
import math

import numpy as np
import pytest

from telesurg.arm.kinematics import HOME_POSITIONS, JOINT_LIMITS, JOINT_NAMES, forward, inverse
from telesurg.patient.arm_control import ARM_JOINTS, ArmController, ArmControllerConfig

DEFAULTS = ArmControllerConfig.defaults()  # what the arm_controller node runs with
DT = 1.0 / DEFAULTS.rate_hz  # one tick per /joint_states message


def ticks(seconds):
    """Ticks that take at least seconds."""
    return math.ceil(seconds / DT)


def started(measured=HOME_POSITIONS, supervisor_timeout_s=1e9, **config):
    """A controller on an arm at measured, ENABLED by a supervisor that (by default) never
    falls silent in these short tests."""
    controller = ArmController(dataclasses.replace(
        DEFAULTS, supervisor_timeout_s=supervisor_timeout_s, **config))
    controller.on_operating_state("ENABLED", 0.0)
    controller.on_joint_states(np.array(measured, dtype=float), 0.0)
    assert controller.tick(0.0) is not None
    return controller


def shifted_tip(q, offset):
    pose = forward(np.asarray(q)[:ARM_JOINTS])
    pose[:3, 3] += offset
    return pose


def test_commands_nothing_until_the_arm_reports():
    controller = ArmController(DEFAULTS)
    assert controller.tick(0.0) is None
    assert controller.on_servo_cp(forward(HOME_POSITIONS[:ARM_JOINTS]), 0.0)


def test_starts_holding_where_the_arm_is():
    measured = HOME_POSITIONS + 0.01
    controller = started(measured)
    assert controller.holding and controller.hold_reason == "no command yet"
    np.testing.assert_allclose(controller.setpoint, measured)


def test_follows_a_goal_within_velocity_limits():
    controller = started()
    goal = shifted_tip(HOME_POSITIONS, [0.003, 0.0, 0.0])
    limits = np.array([JOINT_LIMITS[n].velocity for n in JOINT_NAMES])
    previous = controller.setpoint.copy()
    now = 0.0
    for _ in range(400):
        now += DT
        assert controller.on_servo_cp(goal, now) == ""
        controller.on_joint_states(controller.setpoint, now)
        setpoint = controller.tick(now)
        assert np.all(np.abs(setpoint - previous) <= limits * DT * 1.0001)
        previous = setpoint.copy()
    np.testing.assert_allclose(forward(setpoint[:ARM_JOINTS])[:3, 3], goal[:3, 3], atol=1e-6)
    assert not controller.holding


#: The largest tool tip step one tick may command: the tip speed cap over the longest tick
#: (a late tick earns 1.5 periods).
TICK_STEP_LIMIT_M = DEFAULTS.max_tip_speed_m_s * 1.5 * DT


def tip(q):
    return forward(np.asarray(q)[:ARM_JOINTS])[:3, 3]


def settle_on(controller, held, now):
    """Tick (the arm standing at held) until the setpoint reaches held, every step within one
    tick's limit; returns the time reached."""
    for _ in range(20):
        if np.allclose(controller.setpoint, held):
            return now
        before = tip(controller.setpoint)
        now += DT
        controller.on_operating_state(controller.operating_state or "", now)
        controller.on_joint_states(held, now)
        controller.tick(now)
        assert np.linalg.norm(tip(controller.setpoint) - before) <= TICK_STEP_LIMIT_M + 1e-9
    raise AssertionError(f"the setpoint never reached {held}: {controller.setpoint}")


def test_stale_commands_hold_at_the_measured_position_not_the_setpoint():
    controller = started()
    goal = shifted_tip(HOME_POSITIONS, [0.002, 0.0, 0.0])
    for i in range(1, 50):
        controller.on_servo_cp(goal, i * DT)
        controller.tick(i * DT)
    lagging = controller.setpoint.copy()
    lagging[:ARM_JOINTS] -= 0.0005  # the arm has not caught up yet
    now = 49 * DT
    for _ in range(ticks(DEFAULTS.command_timeout_s) + 1):  # no commands for the timeout
        now += DT
        controller.on_joint_states(lagging, now)
        controller.tick(now)
    assert controller.holding and controller.hold_reason == "commands stale"
    settle_on(controller, lagging, now)


def test_entering_and_leaving_a_hold_never_steps_further_than_one_tick_allows():
    """The arm lags its setpoint by 0.8 mm of tip when commands go stale (a stalled site): the
    hold goes back to where the arm is, and the first goal after it moves on, each within the
    tick's step limit (the setpoint used to jump to the measured position at once)."""
    controller = started()
    goal = shifted_tip(HOME_POSITIONS, [0.003, 0.0, 0.0])
    now = follow(controller, goal, 0.0, 60)
    lag = shifted_tip(controller.setpoint, [-0.0008, 0.0, 0.0])
    lagging = controller.setpoint.copy()
    lagging[:ARM_JOINTS] = inverse(lag, seed=controller.setpoint[:ARM_JOINTS]).q
    tips = [tip(controller.setpoint)]
    for _ in range(ticks(DEFAULTS.command_timeout_s) + 20):  # commands stale, then held
        now += DT
        controller.on_joint_states(lagging, now)
        controller.tick(now)
        tips.append(tip(controller.setpoint))
    assert controller.holding
    np.testing.assert_allclose(controller.setpoint, lagging, atol=1e-9)
    onwards = shifted_tip(lagging, [0.004, 0.0, 0.0])
    for _ in range(30):  # commands again, 4 mm on: leaving the hold
        now += DT
        assert controller.on_servo_cp(onwards, now) == ""
        controller.on_joint_states(controller.setpoint, now)
        controller.tick(now)
        tips.append(tip(controller.setpoint))
    assert not controller.holding
    steps = np.linalg.norm(np.diff(tips, axis=0), axis=1)
    assert steps.max() <= TICK_STEP_LIMIT_M + 1e-9, steps.max()


def test_a_goal_that_jumps_is_refused_and_the_arm_holds():
    controller = started()
    refusal = controller.on_servo_cp(shifted_tip(HOME_POSITIONS, [0.02, 0, 0]), DT)
    assert "jump limit" in refusal
    assert controller.refused_goals == 1
    np.testing.assert_allclose(controller.tick(DT), HOME_POSITIONS)
    assert controller.holding


def test_an_unreachable_goal_is_counted_and_the_nearest_reachable_followed():
    q = HOME_POSITIONS.copy()
    q[2] = JOINT_LIMITS["outer_insertion"].upper - 0.0005
    controller = started(q)
    beyond = shifted_tip(q, [0.0, 0.0, -0.002])  # the shaft points down at home
    assert controller.on_servo_cp(beyond, DT) == ""
    assert controller.unreachable_goals == 1
    for i in range(1, 100):
        controller.on_joint_states(controller.setpoint, i * DT)
        setpoint = controller.tick(i * DT)
    assert setpoint[2] == pytest.approx(JOINT_LIMITS["outer_insertion"].upper)


def test_silent_arm_stops_commands():
    controller = started()
    timeout = DEFAULTS.joint_states_timeout_s
    assert controller.tick(timeout) is not None
    assert controller.tick(math.nextafter(timeout, math.inf)) is None  # no joint states since 0


@pytest.mark.parametrize("tip_speed_m_s", [DEFAULTS.max_tip_speed_m_s,
                                           DEFAULTS.max_tip_speed_m_s / 2])
def test_tip_speed_is_capped_even_when_joints_could_go_faster(tip_speed_m_s):
    controller = started(max_tip_speed_m_s=tip_speed_m_s)
    goal = shifted_tip(HOME_POSITIONS, [0.004, 0.0, -0.002])
    previous_tip = controller.setpoint_tip()[:3, 3].copy()
    now = 0.0
    moves = []
    for _ in range(ticks(0.3)):
        now += 2 * DT  # late ticks: the step allowance is still bounded
        controller.on_servo_cp(goal, now)
        controller.on_joint_states(controller.setpoint, now)
        controller.tick(now)
        tip = controller.setpoint_tip()[:3, 3]
        moves.append(np.linalg.norm(tip - previous_tip))
        previous_tip = tip.copy()
    largest = tip_speed_m_s * 1.5 * DT  # a late tick earns at most 1.5 periods
    assert max(moves) <= largest * 1.01
    assert max(moves) >= largest * 0.99  # the cap, not the joints, limited the motion
    np.testing.assert_allclose(previous_tip, goal[:3, 3], atol=1e-6)


def follow(controller, goal, start, ticks):
    """Ticks of a following arm (the arm tracks its setpoint); returns the time reached."""
    now = start
    for _ in range(ticks):
        now += DT
        controller.on_servo_cp(goal, now)
        controller.on_joint_states(controller.setpoint, now)
        controller.tick(now)
    return now


@pytest.mark.parametrize("state", ["PAUSED", "DISABLED", "FAULT"])
def test_any_state_but_enabled_holds_at_the_measured_position_and_ignores_commands(state):
    controller = started(supervisor_timeout_s=DEFAULTS.supervisor_timeout_s)
    goal = shifted_tip(HOME_POSITIONS, [0.002, 0.0, 0.0])
    now = follow(controller, goal, 0.0, 20)
    assert not controller.holding
    lagging = controller.setpoint.copy()
    lagging[:ARM_JOINTS] -= 0.0003  # the arm has not caught up with its setpoint
    controller.on_operating_state(state, now)
    controller.on_joint_states(lagging, now)
    controller.tick(now)
    assert controller.holding and controller.hold_reason == f"operating state {state}"
    now = settle_on(controller, lagging, now)
    far = shifted_tip(HOME_POSITIONS, [0.004, 0.0, 0.0])
    for _ in range(50):  # commands keep coming, the supervisor keeps repeating its state
        now += DT
        assert controller.on_servo_cp(far, now) == f"operating state {state}"
        controller.on_operating_state(state, now)
        controller.on_joint_states(lagging + 1e-5, now)  # measurement noise: no re-capture
        np.testing.assert_allclose(controller.tick(now), lagging)
    # ENABLED again: the held arm moves only on fresh commands.
    controller.on_operating_state("ENABLED", now)
    now += DT
    np.testing.assert_allclose(controller.tick(now), lagging)
    assert controller.on_servo_cp(goal, now) == ""
    assert not np.allclose(controller.tick(now + DT), lagging)


def test_a_silent_supervisor_makes_the_arm_hold_whatever_it_said_last():
    timeout = DEFAULTS.supervisor_timeout_s
    controller = started(supervisor_timeout_s=timeout)
    goal = shifted_tip(HOME_POSITIONS, [0.002, 0.0, 0.0])
    # ENABLED was said once, at 0.0, most of the timeout ago.
    now = follow(controller, goal, 0.0, ticks(0.8 * timeout))
    assert not controller.holding
    now = follow(controller, goal, now, ticks(0.25 * timeout))
    assert controller.holding and controller.hold_reason == "safety supervisor silent"
    assert controller.on_servo_cp(goal, now) == "safety supervisor silent"


def test_without_any_operating_state_the_arm_never_moves():
    controller = ArmController(DEFAULTS)
    controller.on_joint_states(np.array(HOME_POSITIONS, dtype=float), 0.0)
    controller.tick(0.0)
    goal = shifted_tip(HOME_POSITIONS, [0.002, 0.0, 0.0])
    assert controller.on_servo_cp(goal, DT) == (
        "no operating state from the safety supervisor yet")
    np.testing.assert_allclose(controller.tick(DT), HOME_POSITIONS)


def test_the_hold_reason_says_why_the_arm_holds_now():
    controller = started(supervisor_timeout_s=1e9)
    controller.on_operating_state("DISABLED", 0.0)
    controller.tick(DT)
    assert controller.hold_reason == "operating state DISABLED"
    controller.on_operating_state("ENABLED", DT)
    controller.tick(2 * DT)
    assert controller.holding and controller.hold_reason == "no command since ENABLED"
