"""Kinematics of the patient-side arm (description/psm.urdf) about its remote center of motion.

Pure Python + numpy (no rclpy); `inverse` runs in the 1 kHz control loop.

Frames, as in the URDF: psm_base has its origin at the RCM, z up. At zero joints the shaft points
down (-z). The tool_tip frame has z along the jaws (out of the instrument), y on the wrist yaw
axis (the jaw hinge) and x = y cross z; the jaw joint does not move it.

Chain: tip = Ry(yaw) Rx(pitch) Rx(pi) Tz(insertion) Rz(roll) Rx(wrist_pitch) Tz(0.0091)
Ry(wrist_yaw) Tz(0.0102).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ARM_JOINT_NAMES: tuple[str, ...] = (
    "outer_yaw",
    "outer_pitch",
    "outer_insertion",
    "outer_roll",
    "outer_wrist_pitch",
    "outer_wrist_yaw",
)
JAW_JOINT_NAME = "jaw"
#: Frame of every arm pose: the URDF root link, origin at the remote center of motion.
BASE_FRAME = "psm_base"
#: Order of /forward_position_controller/commands and of the 7-value joint vectors.
JOINT_NAMES: tuple[str, ...] = ARM_JOINT_NAMES + (JAW_JOINT_NAME,)


@dataclass(frozen=True)
class JointLimit:
    """Position range (rad, or m for the insertion), speed (per s) and effort (N m, or N)."""

    lower: float
    upper: float
    velocity: float
    effort: float


#: The same numbers as the <limit> elements of description/psm.urdf.
JOINT_LIMITS: dict[str, JointLimit] = {
    "outer_yaw": JointLimit(-1.5, 1.5, 1.5, 17.0),
    "outer_pitch": JointLimit(-0.9, 0.9, 1.5, 17.0),
    "outer_insertion": JointLimit(0.0, 0.24, 0.3, 50.0),
    "outer_roll": JointLimit(-4.5, 4.5, 3.0, 0.4),
    "outer_wrist_pitch": JointLimit(-1.5, 1.5, 3.0, 0.4),
    "outer_wrist_yaw": JointLimit(-1.5, 1.5, 3.0, 0.4),
    "jaw": JointLimit(0.0, 1.4, 3.0, 0.4),
}

#: Start configuration (JOINT_NAMES order): instrument 12 cm in, straight down, jaw closed.
HOME_POSITIONS = np.array([0.0, 0.0, 0.12, 0.0, 0.0, 0.0, 0.0])

#: Wrist pitch axis to wrist yaw axis, and wrist yaw axis to tool tip (large needle driver).
PITCH_TO_YAW_M = 0.0091
YAW_TO_TIP_M = 0.0102

_ARM_JOINTS = len(ARM_JOINT_NAMES)
_ROLL = ARM_JOINT_NAMES.index("outer_roll")
# Every roll angle atan2 can return must be inside the roll range (branch choice relies on it).
assert JOINT_LIMITS["outer_roll"].lower <= -math.pi <= math.pi <= JOINT_LIMITS["outer_roll"].upper

# Round-off in an exactly reachable pose can put a joint a hair past its limit: not a violation.
_LIMIT_TOLERANCE = 1e-9
# A rotation this close to orthonormal (max |R^T R - I|) is used as given, else its nearest
# rotation is...
_ROTATION_ROUNDOFF = 1e-12
# ...and beyond this the pose's rotation is no rotation at all: the pose is unreachable.
_ROTATION_TOLERANCE = 1e-6
# Lengths below this make a direction undefined.
_DEGENERATE_M = 1e-12

_Vector = tuple[float, float, float]


@dataclass(frozen=True)
class IkResult:
    q: np.ndarray
    """The 6 arm joint values, always within JOINT_LIMITS."""
    reachable: bool
    """False when the asked pose was outside the workspace or joint limits."""
    position_error_m: float
    """Distance between the asked tip position and forward(q)."""
    orientation_error_rad: float
    """Rotation angle between the asked tip orientation and forward(q)."""
    reason: str
    """Empty when reachable, otherwise why not."""


def forward(q) -> np.ndarray:
    """4x4 pose of tool_tip in psm_base (the RCM frame) for the 6 arm joint values."""
    x, y, z, position = _tip_frame(*_arm_values(q, "q").tolist())
    return np.array([[x[0], y[0], z[0], position[0]],
                     [x[1], y[1], z[1], position[1]],
                     [x[2], y[2], z[2], position[2]],
                     [0.0, 0.0, 0.0, 1.0]])


def inverse(pose, seed=None) -> IkResult:
    """Exact closed-form arm joints that put tool_tip at `pose` (4x4 in psm_base).

    Within the joint limits the solution is unique up to roll +- 2 pi (|wrist pitch| and
    |wrist yaw| < pi/2 and a non-negative insertion leave no other branch; flipping the wrist
    pitch with roll + pi turns the tip by pi about its jaw axis, so it is not a solution). The
    roll closest to the seed's (6 or 7 joint values, default HOME_POSITIONS) is chosen.
    Unreachable poses get the joints clamped to their limits, reachable=False and a reason.
    Raises ValueError for a pose that is not a finite 4x4 matrix.
    """
    target = np.asarray(pose, dtype=float)
    if target.shape != (4, 4) or not np.isfinite(target).all():
        raise ValueError(f"pose must be a finite 4x4 matrix, got {pose!r}")
    seed_q = HOME_POSITIONS[:_ARM_JOINTS].tolist() if seed is None else _seed_values(seed)
    rows = target.tolist()
    position = (rows[0][3], rows[1][3], rows[2][3])
    axes, rotation_problem = _nearest_rotation(target[:3, :3])
    problems = [rotation_problem] if rotation_problem else []
    _, yaw_axis, jaw_direction = axes

    # The RCM, the wrist pitch point and the wrist yaw point all lie in the plane through the
    # RCM that contains the wrist yaw axis; in it the clevis is perpendicular to the yaw axis.
    wrist_yaw_point = _mix(1.0, position, -YAW_TO_TIP_M, jaw_direction)
    radial = _mix(1.0, wrist_yaw_point, -_dot(wrist_yaw_point, yaw_axis), yaw_axis)
    radial_length = math.sqrt(_dot(radial, radial))
    if radial_length > _DEGENERATE_M:
        clevis = _scale(1.0 / radial_length, radial)
    else:
        clevis = jaw_direction  # any direction fits: take wrist yaw 0
        problems.append("the wrist yaw axis passes through the RCM")
    pitch_axis = _cross(yaw_axis, clevis)
    wrist_pitch_point = _mix(1.0, wrist_yaw_point, -PITCH_TO_YAW_M, clevis)
    insertion = math.sqrt(_dot(wrist_pitch_point, wrist_pitch_point))
    if insertion > _DEGENERATE_M:
        shaft = _scale(1.0 / insertion, wrist_pitch_point)
    else:
        shaft = _shaft_at_rcm(seed_q, pitch_axis, clevis)

    yaw = math.atan2(-shaft[0], -shaft[2])
    pitch = math.asin(min(1.0, max(-1.0, shaft[1])))
    stage_x = (math.cos(yaw), 0.0, -math.sin(yaw))  # the insertion stage's x axis
    stage_y = _cross(shaft, stage_x)
    roll = _closest_roll(
        math.atan2(_dot(pitch_axis, stage_y), _dot(pitch_axis, stage_x)), seed_q[_ROLL])
    roll_y = _cross(shaft, pitch_axis)
    wrist_pitch = math.atan2(-_dot(clevis, roll_y), _dot(clevis, shaft))
    wrist_yaw = math.atan2(_dot(jaw_direction, pitch_axis), _dot(jaw_direction, clevis))

    q = []
    for name, value in zip(ARM_JOINT_NAMES,
                           (yaw, pitch, insertion, roll, wrist_pitch, wrist_yaw), strict=True):
        limit = JOINT_LIMITS[name]
        q.append(min(limit.upper, max(limit.lower, value)))
        if abs(value - q[-1]) > _LIMIT_TOLERANCE:
            problems.append(f"{name} would be {value:.4g}, outside [{limit.lower}, {limit.upper}]")
    *reached_axes, reached_position = _tip_frame(*q)
    return IkResult(
        q=np.array(q),
        reachable=not problems,
        position_error_m=math.dist(reached_position, position),
        orientation_error_rad=_rotation_angle(reached_axes, axes),
        reason="; ".join(problems),
    )


def _tip_frame(yaw, pitch, insertion, roll, wrist_pitch, wrist_yaw):
    """Tip x, y, z axes and position: the URDF chain, one joint at a time."""
    cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
    cos_pitch, sin_pitch = math.cos(pitch), math.sin(pitch)
    # Insertion stage, Ry(yaw) Rx(pitch) Rx(pi): its z runs down the shaft.
    stage_x = (cos_yaw, 0.0, -sin_yaw)
    stage_y = (-sin_yaw * sin_pitch, -cos_pitch, -cos_yaw * sin_pitch)
    shaft = (-sin_yaw * cos_pitch, sin_pitch, -cos_yaw * cos_pitch)
    roll_x, roll_y = _turn(stage_x, stage_y, roll)  # about the shaft (z)
    tip_y, clevis = _turn(roll_y, shaft, wrist_pitch)  # about roll x
    tip_z, tip_x = _turn(clevis, roll_x, wrist_yaw)  # about clevis y
    position = _mix(insertion, shaft, PITCH_TO_YAW_M, clevis)
    return tip_x, tip_y, tip_z, _mix(1.0, position, YAW_TO_TIP_M, tip_z)


def _turn(a: _Vector, b: _Vector, angle: float) -> tuple[_Vector, _Vector]:
    """Axes a and b of a right-handed frame after a turn of `angle` about a cross b."""
    c, s = math.cos(angle), math.sin(angle)
    return _mix(c, a, s, b), _mix(-s, a, c, b)


def _mix(s: float, a: _Vector, t: float, b: _Vector) -> _Vector:
    """s a + t b."""
    return (s * a[0] + t * b[0], s * a[1] + t * b[1], s * a[2] + t * b[2])


def _scale(s: float, a: _Vector) -> _Vector:
    return (s * a[0], s * a[1], s * a[2])


def _dot(a: _Vector, b: _Vector) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: _Vector, b: _Vector) -> _Vector:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _rotation_angle(a: tuple[_Vector, ...], b: tuple[_Vector, ...]) -> float:
    """Angle between two rotations given by their axes, accurate near zero (the Frobenius
    distance of the matrices is 2 sqrt(2) sin(angle / 2))."""
    squared = sum((u - v) ** 2 for axis_a, axis_b in zip(a, b, strict=True)
                  for u, v in zip(axis_a, axis_b, strict=True))
    return 2.0 * math.asin(min(1.0, math.sqrt(squared) / (2.0 * math.sqrt(2.0))))


def _arm_values(q, what: str) -> np.ndarray:
    values = np.asarray(q, dtype=float)
    if values.shape != (_ARM_JOINTS,) or not np.isfinite(values).all():
        raise ValueError(f"{what} must be {_ARM_JOINTS} finite arm joint values, got {q!r}")
    return values


def _seed_values(seed) -> list[float]:
    values = np.asarray(seed, dtype=float)
    if values.shape == (len(JOINT_NAMES),):
        values = values[:_ARM_JOINTS]  # a full joint vector: the jaw plays no part
    return _arm_values(values, "seed").tolist()


def _nearest_rotation(matrix: np.ndarray) -> tuple[tuple[_Vector, _Vector, _Vector], str]:
    """Axes (columns) of the proper rotation nearest to `matrix`, and a problem if it was far
    from one."""
    x, y, z = (tuple(column) for column in matrix.T.tolist())
    deviation = max(abs(_dot(x, x) - 1.0), abs(_dot(y, y) - 1.0), abs(_dot(z, z) - 1.0),
                    abs(_dot(x, y)), abs(_dot(y, z)), abs(_dot(z, x)))
    proper = _dot(x, _cross(y, z)) > 0.0
    if deviation <= _ROTATION_ROUNDOFF and proper:
        return (x, y, z), ""
    u, _, vt = np.linalg.svd(matrix)
    nearest = u @ np.diag([1.0, 1.0, math.copysign(1.0, np.linalg.det(u @ vt))]) @ vt
    axes = tuple(tuple(column) for column in nearest.T.tolist())
    if deviation <= _ROTATION_TOLERANCE and proper:
        return axes, ""
    return axes, "the pose's rotation part is not a rotation matrix (used the nearest one)"


def _shaft_at_rcm(seed_q: list[float], pitch_axis: _Vector, clevis: _Vector) -> _Vector:
    """Shaft direction when the wrist pitch axis is at the RCM (insertion 0), where the position
    leaves it free: the seed's shaft, turned to be perpendicular to the wrist pitch axis."""
    yaw, pitch = seed_q[0], seed_q[1]
    seed_shaft = (-math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                  -math.cos(yaw) * math.cos(pitch))
    in_plane = _mix(1.0, seed_shaft, -_dot(seed_shaft, pitch_axis), pitch_axis)
    length = math.sqrt(_dot(in_plane, in_plane))
    return _scale(1.0 / length, in_plane) if length > _DEGENERATE_M else clevis


def _closest_roll(roll: float, seed_roll: float) -> float:
    """The roll + k 2 pi within limits closest to the seed's roll."""
    limit = JOINT_LIMITS["outer_roll"]
    candidates = (roll - 2.0 * math.pi, roll, roll + 2.0 * math.pi)
    return min((c for c in candidates if limit.lower <= c <= limit.upper),
               key=lambda c: abs(c - seed_roll))
