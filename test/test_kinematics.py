"""Forward and closed-form inverse kinematics of the patient-side arm about its RCM."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.transform import Rotation

from telesurg.arm.kinematics import (
    ARM_JOINT_NAMES,
    HOME_POSITIONS,
    JAW_JOINT_NAME,
    JOINT_LIMITS,
    JOINT_NAMES,
    PITCH_TO_YAW_M,
    YAW_TO_TIP_M,
    forward,
    inverse,
)

LOWER = np.array([JOINT_LIMITS[name].lower for name in ARM_JOINT_NAMES])
UPPER = np.array([JOINT_LIMITS[name].upper for name in ARM_JOINT_NAMES])
ROLL = ARM_JOINT_NAMES.index("outer_roll")
TOLERANCE = 1e-6


def random_configurations(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(LOWER, UPPER, size=(count, len(ARM_JOINT_NAMES)))


def rotation_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles of the rotations a^T b, for stacks of 3x3 matrices."""
    return Rotation.from_matrix(np.swapaxes(a, -1, -2) @ b).magnitude()


def assert_within_limits(q: np.ndarray) -> None:
    assert np.all(q >= LOWER) and np.all(q <= UPPER), q


def moved(pose: np.ndarray, offset) -> np.ndarray:
    shifted = pose.copy()
    shifted[:3, 3] += offset
    return shifted


def test_joint_tables_agree():
    assert JOINT_NAMES == ARM_JOINT_NAMES + (JAW_JOINT_NAME,)
    assert set(JOINT_LIMITS) == set(JOINT_NAMES)
    assert HOME_POSITIONS.shape == (len(JOINT_NAMES),)
    assert all(JOINT_LIMITS[name].lower <= value <= JOINT_LIMITS[name].upper
               for name, value in zip(JOINT_NAMES, HOME_POSITIONS, strict=True))


def test_home_points_the_instrument_straight_down():
    pose = forward(HOME_POSITIONS[:len(ARM_JOINT_NAMES)])
    insertion = HOME_POSITIONS[ARM_JOINT_NAMES.index("outer_insertion")]
    np.testing.assert_allclose(pose[:3, 3], [0.0, 0.0, -(insertion + PITCH_TO_YAW_M
                                                          + YAW_TO_TIP_M)], atol=1e-15)
    # Tip z along the jaws (down), y the wrist yaw axis.
    np.testing.assert_allclose(pose[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-15)
    np.testing.assert_array_equal(pose[3], [0.0, 0.0, 0.0, 1.0])


def test_wrist_yaw_turns_the_jaws_about_tip_y():
    q = random_configurations(1, seed=1)[0]
    q[5] = 0.0
    straight = forward(q)
    q[5] = 0.7
    turned = forward(q)
    expected = straight[:3, :3] @ Rotation.from_rotvec([0.0, 0.7, 0.0]).as_matrix()
    np.testing.assert_allclose(turned[:3, :3], expected, atol=1e-12)
    yaw_axis_point = straight[:3, 3] - YAW_TO_TIP_M * straight[:3, 2]
    np.testing.assert_allclose(turned[:3, 3], yaw_axis_point + YAW_TO_TIP_M * turned[:3, 2],
                               atol=1e-12)


def test_insertion_is_the_distance_from_rcm_to_wrist_pitch_axis():
    for q in random_configurations(100, seed=2):
        q[4] = q[5] = 0.0  # a straight wrist puts the tip on the shaft line
        distance = np.linalg.norm(forward(q)[:3, 3])
        assert distance == pytest.approx(q[2] + PITCH_TO_YAW_M + YAW_TO_TIP_M, abs=1e-12)


def test_inverse_reproduces_every_pose_inside_the_limits():
    configurations = random_configurations(10_000, seed=3)
    asked = np.array([forward(q) for q in configurations])
    results = [inverse(pose) for pose in asked]
    assert all(result.reachable and result.reason == "" for result in results)
    solutions = np.array([result.q for result in results])
    assert np.all(solutions >= LOWER) and np.all(solutions <= UPPER)
    reached = np.array([forward(q) for q in solutions])
    position_errors = np.linalg.norm(reached[:, :3, 3] - asked[:, :3, 3], axis=1)
    orientation_errors = rotation_angles(reached[:, :3, :3], asked[:, :3, :3])
    assert position_errors.max() < TOLERANCE
    assert orientation_errors.max() < TOLERANCE
    reported_position = np.array([result.position_error_m for result in results])
    reported_orientation = np.array([result.orientation_error_rad for result in results])
    assert reported_position.max() < TOLERANCE and reported_orientation.max() < TOLERANCE


def test_seeding_with_the_configuration_returns_it():
    for q in random_configurations(2_000, seed=4):
        np.testing.assert_allclose(inverse(forward(q), seed=q).q, q, atol=TOLERANCE)


def test_seed_picks_the_roll_branch():
    q = np.array([0.3, -0.2, 0.1, 2.0, 0.4, -0.5])
    other_branch = q.copy()
    other_branch[ROLL] -= 2.0 * math.pi  # also within the roll limits
    pose = forward(q)
    np.testing.assert_allclose(forward(other_branch), pose, atol=1e-12)
    np.testing.assert_allclose(inverse(pose, seed=q).q, q, atol=1e-12)
    np.testing.assert_allclose(inverse(pose, seed=other_branch).q, other_branch, atol=1e-12)
    # Without a seed the roll nearest home (0) wins; a 7-value seed (with jaw) is accepted.
    assert inverse(pose).q[ROLL] == pytest.approx(2.0, abs=1e-12)
    seven = np.append(other_branch, 0.5)
    assert inverse(pose, seed=seven).q[ROLL] == pytest.approx(other_branch[ROLL], abs=1e-12)


def assert_unreachable(asked: np.ndarray, mentions: str):
    result = inverse(asked)
    assert not result.reachable
    assert mentions in result.reason
    assert_within_limits(result.q)
    reached = forward(result.q)
    distance = np.linalg.norm(reached[:3, 3] - asked[:3, 3])
    assert result.position_error_m == pytest.approx(distance, abs=1e-12)
    return result


def test_a_pose_a_metre_away_is_unreachable():
    home = forward(HOME_POSITIONS[:len(ARM_JOINT_NAMES)])
    result = assert_unreachable(moved(home, [0.0, 0.0, -1.0]), "outer_insertion")
    assert result.q[2] == JOINT_LIMITS["outer_insertion"].upper
    assert result.position_error_m > 0.8
    assert_unreachable(moved(home, [1.0, 0.0, 0.0]), "outer_insertion")


def test_a_pose_above_the_rcm_is_unreachable():
    home = forward(HOME_POSITIONS[:len(ARM_JOINT_NAMES)])
    tip_above = home.copy()
    tip_above[:3, 3] = [0.0, 0.0, 0.05]
    assert_unreachable(tip_above, "outer_yaw")


def test_beyond_full_insertion_the_nearest_pose_is_on_the_same_line():
    q = np.array([0.4, 0.3, JOINT_LIMITS["outer_insertion"].upper, 1.0, 0.0, 0.0])
    full = forward(q)
    too_deep = moved(full, 0.03 * full[:3, 2])  # 3 cm further down the shaft
    result = assert_unreachable(too_deep, "outer_insertion")
    np.testing.assert_allclose(result.q, q, atol=1e-12)
    assert result.position_error_m == pytest.approx(0.03, abs=1e-12)
    assert result.orientation_error_rad == pytest.approx(0.0, abs=1e-12)


def test_a_wrist_angle_beyond_its_limit_is_unreachable():
    q = np.array([0.1, 0.2, 0.1, 0.3, 0.2, 1.5])
    q_beyond = q.copy()
    q_beyond[5] = 1.56
    result = assert_unreachable(forward(q_beyond), "outer_wrist_yaw")
    np.testing.assert_allclose(result.q, q, atol=1e-12)
    assert result.orientation_error_rad == pytest.approx(0.06, abs=1e-9)


def test_a_matrix_that_is_not_a_rotation_is_unreachable():
    stretched = forward(HOME_POSITIONS[:len(ARM_JOINT_NAMES)])
    stretched[:3, :3] *= 2.0
    assert_unreachable(stretched, "rotation")


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, (4, 4), elements=st.floats(-1.0, 1.0)))
def test_any_finite_pose_gives_joints_within_limits(pose):
    result = inverse(pose)
    assert_within_limits(result.q)
    reached = forward(result.q)
    assert result.position_error_m == pytest.approx(np.linalg.norm(reached[:3, 3] - pose[:3, 3]))
    assert 0.0 <= result.orientation_error_rad <= math.pi
    assert result.reachable == (result.reason == "")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_raises(bad):
    pose = forward(HOME_POSITIONS[:len(ARM_JOINT_NAMES)])
    pose[1, 3] = bad
    with pytest.raises(ValueError):
        inverse(pose)
    q = HOME_POSITIONS[:len(ARM_JOINT_NAMES)].copy()
    q[0] = bad
    with pytest.raises(ValueError):
        forward(q)
    with pytest.raises(ValueError):
        inverse(forward(HOME_POSITIONS[:len(ARM_JOINT_NAMES)]), seed=q)


def test_wrong_shapes_raise():
    with pytest.raises(ValueError):
        inverse(np.eye(3))
    with pytest.raises(ValueError):
        forward(HOME_POSITIONS)  # 7 values: forward takes the 6 arm joints
