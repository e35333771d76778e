"""The arm's URDF (description/psm.urdf) agrees with telesurg.arm.kinematics, as URDF (read here
and by yourdfpy, an independent URDF library) and in MuJoCo.

Gazebo's view of the same file (SDFormat's conversion, ros2_control) is test_gazebo_files.py's.
"""

import xml.etree.ElementTree as ET
from pathlib import Path

import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from telesurg.arm.kinematics import (
    ARM_JOINT_NAMES,
    BASE_FRAME,
    HOME_POSITIONS,
    JOINT_LIMITS,
    JOINT_NAMES,
    forward,
)
from telesurg.arm.simulation import ArmSimulation

URDF_PATH = Path(__file__).resolve().parents[1] / "description" / "psm.urdf"
ROOT_LINK = BASE_FRAME
TIP_LINK = "tool_tip"
#: The link whose z axis is the instrument shaft (kinematics: after Rz(roll)).
SHAFT_LINK = "roll_link"

#: Joint type and axis (in the joint frame), as kinematics.py assumes them.
EXPECTED_JOINTS = {
    "outer_yaw": ("revolute", (0.0, 1.0, 0.0)),
    "outer_pitch": ("revolute", (1.0, 0.0, 0.0)),
    "outer_insertion": ("prismatic", (0.0, 0.0, 1.0)),
    "outer_roll": ("revolute", (0.0, 0.0, 1.0)),
    "outer_wrist_pitch": ("revolute", (1.0, 0.0, 0.0)),
    "outer_wrist_yaw": ("revolute", (0.0, 1.0, 0.0)),
    "jaw": ("revolute", (0.0, 1.0, 0.0)),
}
MUJOCO_JOINT_TYPES = {"revolute": mujoco.mjtJoint.mjJNT_HINGE,
                      "prismatic": mujoco.mjtJoint.mjJNT_SLIDE}


@pytest.fixture(scope="module")
def robot() -> ET.Element:
    return ET.parse(URDF_PATH).getroot()


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(str(URDF_PATH))


def vector(element: ET.Element | None, attribute: str, default=(0.0, 0.0, 0.0)) -> np.ndarray:
    if element is None or element.get(attribute) is None:
        return np.array(default)
    return np.array([float(value) for value in element.get(attribute).split()])


def moving_joints(robot: ET.Element) -> list[ET.Element]:
    # Only the robot's own <joint> children: a <ros2_control> block names joints too.
    return [joint for joint in robot.findall("joint") if joint.get("type") != "fixed"]


def random_positions(count: int, seed: int) -> np.ndarray:
    """Random values of all JOINT_NAMES (jaw included) within their limits."""
    lower = [JOINT_LIMITS[name].lower for name in JOINT_NAMES]
    upper = [JOINT_LIMITS[name].upper for name in JOINT_NAMES]
    return np.random.default_rng(seed).uniform(lower, upper, size=(count, len(JOINT_NAMES)))


def joint_transform(joint: ET.Element, value: float) -> np.ndarray:
    """Parent link to child link: the joint origin (rpy = fixed-axis roll, pitch, yaw), then
    the motion along or about the joint axis."""
    origin = joint.find("origin")
    transform = np.eye(4)
    transform[:3, :3] = Rotation.from_euler("xyz", vector(origin, "rpy")).as_matrix()
    transform[:3, 3] = vector(origin, "xyz")
    axis = vector(joint.find("axis"), "xyz", default=(1.0, 0.0, 0.0))
    motion = np.eye(4)
    if joint.get("type") == "revolute":
        motion[:3, :3] = Rotation.from_rotvec(value * axis).as_matrix()
    elif joint.get("type") == "prismatic":
        motion[:3, 3] = value * axis
    return transform @ motion


def urdf_link_pose(robot: ET.Element, link: str, positions: dict[str, float] | None = None
                   ) -> np.ndarray:
    """Pose of `link` in the root link, walking the URDF's joints from the link to the root
    (joint values by name; None: every joint at zero)."""
    parent_joints = {joint.find("child").get("link"): joint for joint in robot.findall("joint")}
    pose = np.eye(4)
    while link in parent_joints:
        joint = parent_joints[link]
        value = 0.0 if positions is None or joint.get("type") == "fixed" else positions[
            joint.get("name")]
        pose = joint_transform(joint, value) @ pose
        link = joint.find("parent").get("link")
    assert link == ROOT_LINK
    return pose


def test_joints_match_the_kinematics(robot):
    joints = moving_joints(robot)
    assert tuple(joint.get("name") for joint in joints) == JOINT_NAMES
    for joint in joints:
        name = joint.get("name")
        joint_type, axis = EXPECTED_JOINTS[name]
        assert joint.get("type") == joint_type, name
        np.testing.assert_array_equal(vector(joint.find("axis"), "xyz"), axis, err_msg=name)
        limit = joint.find("limit")
        urdf_limit = tuple(float(limit.get(key)) for key in ("lower", "upper", "velocity",
                                                              "effort"))
        expected = JOINT_LIMITS[name]
        assert urdf_limit == (expected.lower, expected.upper, expected.velocity,
                              expected.effort), name


def test_tool_tip_hangs_off_the_wrist_not_the_jaw(robot):
    (tip_joint,) = [joint for joint in robot.findall("joint")
                    if joint.find("child").get("link") == TIP_LINK]
    assert tip_joint.get("type") == "fixed"
    jaw_joint = next(joint for joint in robot.findall("joint") if joint.get("name") == "jaw")
    assert tip_joint.find("parent").get("link") == jaw_joint.find("parent").get("link")


def test_moving_links_have_mass_and_valid_inertia_and_nothing_collides(robot):
    assert robot.find(".//collision") is None
    links = {link.get("name"): link for link in robot.findall("link")}
    for joint in moving_joints(robot):
        name = joint.find("child").get("link")
        inertial = links[name].find("inertial")
        assert inertial is not None, name
        assert float(inertial.find("mass").get("value")) > 0.0, name
        inertia = {key: float(value) for key, value in inertial.find("inertia").attrib.items()}
        matrix = np.array([[inertia["ixx"], inertia["ixy"], inertia["ixz"]],
                           [inertia["ixy"], inertia["iyy"], inertia["iyz"]],
                           [inertia["ixz"], inertia["iyz"], inertia["izz"]]])
        principal = np.linalg.eigvalsh(matrix)
        assert principal.min() > 0.0, name
        assert principal[0] + principal[1] >= principal[2] * (1.0 - 1e-3), name


def test_urdf_chain_matches_forward_kinematics(robot):
    for positions in random_positions(200, seed=10):
        urdf_tip = urdf_link_pose(robot, TIP_LINK, dict(zip(JOINT_NAMES, positions, strict=True)))
        np.testing.assert_allclose(urdf_tip, forward(positions[:len(ARM_JOINT_NAMES)]),
                                   atol=1e-6)


def test_mujoco_keeps_every_joint_and_range(robot, model):
    for joint in moving_joints(robot):
        name = joint.get("name")
        mujoco_joint = model.joint(name)
        assert mujoco_joint.type[0] == MUJOCO_JOINT_TYPES[joint.get("type")], name
        assert mujoco_joint.limited[0], name
        limit = JOINT_LIMITS[name]
        np.testing.assert_allclose(mujoco_joint.range, [limit.lower, limit.upper], atol=1e-12,
                                   err_msg=name)
    moving_bodies = model.body_jntnum > 0
    assert np.all(model.body_mass[moving_bodies] > 0.0)


def test_mujoco_tool_tip_matches_forward_kinematics_without_contacts(model):
    data = mujoco.MjData(model)
    addresses = [model.joint(name).qposadr[0] for name in JOINT_NAMES]
    tip = model.body(TIP_LINK)
    for positions in random_positions(200, seed=11):
        data.qpos[addresses] = positions
        mujoco.mj_forward(model, data)
        expected = forward(positions[:len(ARM_JOINT_NAMES)])
        np.testing.assert_allclose(data.xpos[tip.id], expected[:3, 3], atol=1e-6)
        np.testing.assert_allclose(data.xmat[tip.id].reshape(3, 3), expected[:3, :3], atol=1e-6)
        assert data.ncon == 0


def test_root_is_the_base_frame_without_inertia(robot):
    """The kinematics' base frame is the URDF root; KDL (robot_state_publisher) refuses an
    inertia on the root link."""
    children = {joint.find("child").get("link") for joint in robot.findall("joint")}
    (root,) = [link for link in robot.findall("link") if link.get("name") not in children]
    assert root.get("name") == ROOT_LINK
    assert root.find("inertial") is None


def test_mujoco_simulation_loads_the_urdf_and_holds_home():
    """The simulator's own model (servos, gravity compensation) still compiles from the file
    with its Gazebo and ros2_control elements, and holds the start pose."""
    simulation = ArmSimulation(URDF_PATH, 0.001, HOME_POSITIONS)
    simulation.command(HOME_POSITIONS)
    simulation.step(300)
    np.testing.assert_allclose(simulation.positions(), HOME_POSITIONS, atol=1e-6)
    assert simulation.model.nu == len(JOINT_NAMES)


@pytest.fixture(scope="module")
def yourdf():
    yourdfpy = pytest.importorskip(
        "yourdfpy", reason="yourdfpy is not installed: .venv/bin/pip install -r requirements.txt")
    return yourdfpy.URDF.load(str(URDF_PATH), build_scene_graph=True, load_meshes=False,
                              build_collision_scene_graph=False, load_collision_meshes=False)


def test_yourdfpy_reads_the_joints_the_kinematics_has(yourdf):
    assert yourdf.validate()
    assert yourdf.base_link == ROOT_LINK
    assert tuple(yourdf.actuated_joint_names) == JOINT_NAMES
    joints = {joint.name: joint for joint in yourdf.robot.joints}
    for name in JOINT_NAMES:
        joint = joints[name]
        assert joint.type == EXPECTED_JOINTS[name][0], name
        np.testing.assert_array_equal(joint.axis, EXPECTED_JOINTS[name][1], err_msg=name)
        expected = JOINT_LIMITS[name]
        assert (joint.limit.lower, joint.limit.upper, joint.limit.velocity,
                joint.limit.effort) == (expected.lower, expected.upper, expected.velocity,
                                        expected.effort), name


def test_yourdfpy_forward_kinematics_matches_the_module(yourdf):
    for positions in random_positions(200, seed=12):
        yourdf.update_cfg(dict(zip(JOINT_NAMES, positions, strict=True)))
        tip = yourdf.get_transform(frame_to=TIP_LINK, frame_from=ROOT_LINK)
        np.testing.assert_allclose(tip, forward(positions[:len(ARM_JOINT_NAMES)]), atol=1e-6)


def test_yourdfpy_shaft_pivots_about_the_rcm(yourdf):
    """Whatever the joints, the instrument shaft's axis passes through the base origin (the
    RCM), and the wrist pitch axis is `insertion` down the shaft from it."""
    insertion = JOINT_NAMES.index("outer_insertion")
    for positions in random_positions(200, seed=13):
        yourdf.update_cfg(dict(zip(JOINT_NAMES, positions, strict=True)))
        shaft = yourdf.get_transform(frame_to=SHAFT_LINK, frame_from=ROOT_LINK)
        wrist, direction = shaft[:3, 3], shaft[:3, 2]
        assert np.linalg.norm(np.cross(direction, -wrist)) < 1e-9  # RCM on the shaft axis
        assert np.dot(direction, wrist) == pytest.approx(positions[insertion], abs=1e-9)
