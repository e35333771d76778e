"""Teleoperation mapping: engage rules, clutch, scale, orientation, safety stops and jaw."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from telesurg.arm.rotations import homogeneous
from telesurg.master.teleop import MasterInput, TeleopConfig, TeleopMapping

ARM_POSE = homogeneous(Rotation.from_euler("xyz", [0.3, -0.2, 1.1]).as_matrix(),
                       [0.05, -0.02, -0.12])
ARM_JAW = 0.3
DEFAULTS = TeleopConfig.defaults()  # what the master_console node runs with
NO_FILTER = dataclasses.replace(DEFAULTS, tremor_filter=False)


def master(position=(0.0, 0.0, 0.0), rotation=None, gripper=0.5, clutch=False, present=True):
    return MasterInput(position=np.array(position, dtype=float),
                       rotation=np.eye(3) if rotation is None else rotation,
                       gripper=gripper, clutch=clutch, operator_present=present)


def engaged(config=NO_FILTER, at=None, arm_pose=ARM_POSE):
    """A mapping that has just engaged (pedal released, then pressed); returns it and the
    engage command."""
    at = at or master()
    mapping = TeleopMapping(config)
    mapping.update(dataclasses.replace(at, operator_present=False), arm_pose, ARM_JAW)
    return mapping, mapping.update(at, arm_pose, ARM_JAW)


def move(mapping, start, end, ticks, **inputs):
    """Move the master in a straight line over ticks updates; returns the commands."""
    return [mapping.update(master(start + (end - start) * k / ticks, **inputs), ARM_POSE, ARM_JAW)
            for k in range(1, ticks + 1)]


rotations = st.builds(lambda v: Rotation.from_rotvec(v).as_matrix(),
                      st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3))
positions = st.lists(st.floats(-0.3, 0.3), min_size=3, max_size=3).map(np.array)


@settings(max_examples=50, deadline=None)
@given(arm_rotation=rotations, arm_position=positions, master_rotation=rotations,
       master_position=positions, tremor_filter=st.booleans())
def test_engage_never_moves_the_arm(arm_rotation, arm_position, master_rotation,
                                    master_position, tremor_filter):
    arm_pose = homogeneous(arm_rotation, arm_position)
    at = master(master_position, master_rotation)
    mapping, command = engaged(dataclasses.replace(DEFAULTS, tremor_filter=tremor_filter), at,
                               arm_pose)
    assert command.following and command.event == "engaged"
    np.testing.assert_allclose(command.goal, arm_pose, atol=1e-9)
    assert command.jaw == ARM_JAW
    # Holding the master still keeps the arm exactly where it was (filter reset at engage).
    for _ in range(20):
        np.testing.assert_allclose(mapping.update(at, arm_pose, ARM_JAW).goal, arm_pose,
                                   atol=1e-9)


def test_pedal_held_from_start_does_not_engage_until_pressed_again():
    mapping = TeleopMapping(NO_FILTER)
    for _ in range(50):
        command = mapping.update(master(), ARM_POSE, ARM_JAW)
        assert not command.following and command.goal is None
    assert mapping.state == "idle"
    mapping.update(master(present=False), ARM_POSE, ARM_JAW)
    assert mapping.state == "armed" and not mapping.following
    command = mapping.update(master(), ARM_POSE, ARM_JAW)
    assert command.following and command.event == "engaged" and mapping.state == "following"


def test_never_engages_without_operator_present():
    mapping = TeleopMapping(NO_FILTER)
    for k in range(50):
        command = mapping.update(master(present=False, clutch=k % 2 == 0), ARM_POSE, ARM_JAW)
        assert not command.following and command.goal is None


def test_arm_moves_by_scaled_master_displacement():
    mapping, _ = engaged()
    start, end = np.zeros(3), np.array([0.03, -0.02, 0.01])
    commands = move(mapping, start, end, ticks=100)
    assert all(command.following for command in commands)
    np.testing.assert_allclose(commands[-1].goal[:3, 3] - ARM_POSE[:3, 3],
                               NO_FILTER.scale * (end - start), atol=1e-12)
    np.testing.assert_allclose(commands[-1].goal[:3, :3], ARM_POSE[:3, :3], atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(master_at_engage=rotations, master_change=st.floats(-0.5, 0.5), axis=positions)
def test_orientation_follows_relative_master_rotation(master_at_engage, master_change, axis):
    mapping, _ = engaged(at=master(rotation=master_at_engage))
    axis = axis / np.linalg.norm(axis) if np.linalg.norm(axis) > 1e-3 else np.array([0, 0, 1.0])
    change = Rotation.from_rotvec(master_change * axis).as_matrix()
    command = mapping.update(master(rotation=change @ master_at_engage), ARM_POSE, ARM_JAW)
    np.testing.assert_allclose(command.goal[:3, :3], change @ ARM_POSE[:3, :3], atol=1e-9)
    np.testing.assert_allclose(command.goal[:3, 3], ARM_POSE[:3, 3], atol=1e-12)


def test_clutch_holds_the_arm_and_release_recaptures_without_jump():
    mapping, _ = engaged()
    move(mapping, np.zeros(3), np.array([0.02, 0.0, 0.0]), ticks=50)
    pressed = mapping.update(master([0.02, 0, 0], clutch=True), ARM_POSE, ARM_JAW)
    assert pressed.event == "clutch_pressed" and pressed.goal is None
    assert mapping.state == "clutched"
    # The hand repositions by 5 cm while clutched: nothing is commanded.
    held = move(mapping, np.array([0.02, 0, 0]), np.array([-0.03, 0, 0]), ticks=100, clutch=True)
    assert all(c.goal is None and c.jaw is None and not c.following for c in held)
    arm_now = ARM_POSE.copy()
    arm_now[:3, 3] += [0.004, 0.0, 0.0]  # where the arm ended up before the clutch
    released = mapping.update(master([-0.03, 0, 0]), arm_now, ARM_JAW)
    assert released.event == "clutch_released" and released.following
    np.testing.assert_allclose(released.goal, arm_now, atol=1e-9)
    # Following resumes from the new capture, without a new presence press.
    after = mapping.update(master([-0.025, 0, 0]), arm_now, ARM_JAW)
    np.testing.assert_allclose(after.goal[:3, 3], arm_now[:3, 3] + [0.001, 0, 0], atol=1e-12)


def test_clutch_held_at_engage_waits_for_release():
    mapping = TeleopMapping(NO_FILTER)
    mapping.update(master(present=False), ARM_POSE, ARM_JAW)
    command = mapping.update(master(clutch=True), ARM_POSE, ARM_JAW)
    assert not command.following and mapping.state == "clutched"
    command = mapping.update(master(), ARM_POSE, ARM_JAW)
    assert command.following and command.event == "clutch_released"
    np.testing.assert_allclose(command.goal, ARM_POSE, atol=1e-12)


@pytest.mark.parametrize("clutched", [False, True])
def test_operator_leaving_stops_and_needs_a_new_press(clutched):
    mapping, _ = engaged()
    if clutched:
        mapping.update(master(clutch=True), ARM_POSE, ARM_JAW)
    left = mapping.update(master(present=False), ARM_POSE, ARM_JAW)
    assert left.event == "operator_left" and left.goal is None and not mapping.following
    for _ in range(10):
        assert mapping.update(master(present=False), ARM_POSE, ARM_JAW).goal is None
    back = mapping.update(master([0.01, 0, 0]), ARM_POSE, ARM_JAW)
    assert back.event == "engaged"
    np.testing.assert_allclose(back.goal, ARM_POSE, atol=1e-12)


def test_step_limit_refuses_a_jump_and_stays_stopped_until_pressed_again():
    mapping, _ = engaged()
    # 15 mm at the master is 3 mm at the arm: over the 2 mm limit.
    refused = mapping.update(master([0.015, 0, 0]), ARM_POSE, ARM_JAW)
    assert refused.event == "step_limit" and refused.goal is None and not refused.following
    # Back where it was, pedal still held: stays stopped.
    for _ in range(20):
        assert mapping.update(master(), ARM_POSE, ARM_JAW).goal is None
    assert mapping.state == "idle"
    mapping.update(master(present=False), ARM_POSE, ARM_JAW)
    assert mapping.update(master(), ARM_POSE, ARM_JAW).event == "engaged"


def test_step_limit_accepts_steps_just_below_it():
    mapping, _ = engaged()
    step = np.array([0.0099, 0.0, 0.0])  # 1.98 mm at the arm per tick
    for k in range(1, 6):
        command = mapping.update(master(k * step), ARM_POSE, ARM_JAW)
        assert command.following, command.event


def test_non_finite_master_position_is_refused():
    mapping, _ = engaged()
    command = mapping.update(master([np.nan, 0, 0]), ARM_POSE, ARM_JAW)
    assert command.event == "step_limit" and command.goal is None


def test_jaw_is_slow_right_after_engage_then_faster():
    config = NO_FILTER
    target = config.jaw_max
    mapping, command = engaged(config, at=master(gripper=target / config.gripper_to_jaw))
    # The slow rate for the ramp after the engage, then the normal rate up to the target.
    slow_step = config.jaw_engage_rate_rad_s / config.rate_hz
    fast_step = config.jaw_rate_rad_s / config.rate_hz
    ramp_ticks = int(config.jaw_engage_ramp_s * config.rate_hz)
    fast_ticks = round((target - ARM_JAW - ramp_ticks * slow_step) / fast_step)
    assert fast_ticks > 10  # the target is beyond the ramp's reach
    jaws = [command.jaw] + [
        mapping.update(master(gripper=target / config.gripper_to_jaw), ARM_POSE, ARM_JAW).jaw
        for _ in range(ramp_ticks + fast_ticks + 10)]
    steps = np.diff(jaws)
    np.testing.assert_allclose(steps[:ramp_ticks], slow_step)
    # All but the last step, which may be shorter.
    np.testing.assert_allclose(steps[ramp_ticks:ramp_ticks + fast_ticks - 1], fast_step)
    assert jaws[-1] == pytest.approx(target)


def test_jaw_follows_gripper_clamped_to_its_range():
    config = dataclasses.replace(NO_FILTER, gripper_to_jaw=2.0, jaw_engage_ramp_s=0.0,
                                 jaw_rate_rad_s=100.0)
    mapping, _ = engaged(config)
    for gripper, jaw in [(0.3, 0.6), (1.0, 1.4), (-0.2, 0.0)]:
        for _ in range(100):
            command = mapping.update(master(gripper=gripper), ARM_POSE, ARM_JAW)
        assert command.jaw == pytest.approx(jaw)


def test_external_disengage_reports_and_needs_deliberate_reengage():
    mapping, _ = engaged()
    mapping.disengage("arm_not_enabled")
    assert not mapping.following
    command = mapping.update(master(), ARM_POSE, ARM_JAW)
    assert command.event == "disengaged:arm_not_enabled" and command.goal is None
    for _ in range(10):  # pedal still held
        command = mapping.update(master(), ARM_POSE, ARM_JAW)
        assert command.goal is None and command.event == ""
    mapping.update(master(present=False), ARM_POSE, ARM_JAW)
    assert mapping.update(master(), ARM_POSE, ARM_JAW).event == "engaged"


def test_tremor_filter_removes_hand_tremor_from_the_goal():
    def goal_wobble(config):
        mapping, _ = engaged(config)
        goals = []
        for k in range(3000):
            tremor = 0.0003 * np.sin(2 * np.pi * 10.0 * k / config.rate_hz)
            goals.append(mapping.update(master([tremor, 0, 0]), ARM_POSE, ARM_JAW).goal[0, 3])
        return np.ptp(goals[1000:])

    unfiltered = goal_wobble(NO_FILTER)
    assert unfiltered == pytest.approx(2 * NO_FILTER.scale * 0.0003, rel=0.01)
    assert goal_wobble(DEFAULTS) < unfiltered / 10 ** (15 / 20)


@pytest.mark.parametrize("field, value", [
    ("scale", 0.0), ("scale", float("nan")), ("rate_hz", -1.0), ("rate_hz", 5000.0),
    ("step_limit_m", 0.0), ("jaw_rate_rad_s", -2.0), ("jaw_engage_rate_rad_s", 0.0),
    ("jaw_engage_ramp_s", -0.1), ("gripper_to_jaw", 0.0), ("jaw_min", 2.0),
    ("jaw_max", float("inf")),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(DEFAULTS, **{field: value})


def test_rate_outside_the_filter_range_is_fine_without_the_filter():
    assert dataclasses.replace(NO_FILTER, rate_hz=5000.0).rate_hz == 5000.0


def test_stall_guard_defers_one_check_after_a_stall_of_its_own():
    from telesurg.master.teleop import StallGuard

    guard = StallGuard(period_s=0.02, now=0.0)
    assert guard.may_judge(0.02) and guard.may_judge(0.041)  # on time (and a little late)
    assert not guard.may_judge(0.25)  # 209 ms after the last check: this process was stalled
    assert guard.may_judge(0.251)  # the queued samples have been taken: judge now
    assert guard.deferred == 1


def test_stall_guard_never_defers_twice_in_a_row():
    from telesurg.master.teleop import StallGuard

    guard = StallGuard(period_s=0.02, now=0.0)
    assert not guard.may_judge(0.5)
    # Late again (a process stalled over and over): a silent device must still be caught.
    assert guard.may_judge(1.0)
    assert not guard.may_judge(1.5)
    assert guard.deferred == 2
