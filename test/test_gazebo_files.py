"""Gazebo's files: the arm URDF and the operating room world as SDFormat (the parser Gazebo
uses) loads them, the ros2_control wiring (the URDF's <ros2_control> block, config/controllers.yaml
and what the arm controller commands), the stereo endoscope's cameras in the world and their bridge
to ROS, and the RViz configuration.

SDFormat is reached through test/sdformat_check.cpp, compiled here once against Debian's
libsdformat-dev (SDFormat 12); without a compiler or the headers those tests skip, saying what
to install.
"""

import ast
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation
from test_description import random_positions, urdf_link_pose

from telesurg.arm.kinematics import (
    ARM_JOINT_NAMES,
    BASE_FRAME,
    HOME_POSITIONS,
    JOINT_LIMITS,
    JOINT_NAMES,
    forward,
)
from telesurg.arm.simulation import ArmSimulation
from telesurg.bringup.plan import ENDOSCOPE_BRIDGES, GAZEBO_BRIDGES, SPAWN_POSE
from telesurg.contract.params import defaults
from telesurg.contract.topics import (
    ENDOSCOPE_LEFT_CAMERA_INFO,
    ENDOSCOPE_LEFT_IMAGE,
    ENDOSCOPE_RIGHT_CAMERA_INFO,
    ENDOSCOPE_RIGHT_IMAGE,
    SITE_TOPICS,
)
from telesurg.patient.arm_control import ArmController, ArmControllerConfig
from telesurg.video.camera import DEFAULT_FOVY_DEG, DEFAULT_VIEW_OFFSET_M, home_jaws_centre

ROOT = Path(__file__).resolve().parents[1]
URDF_PATH = ROOT / "description" / "psm.urdf"
WORLD_PATH = ROOT / "worlds" / "operating_room.sdf"
CONTROLLERS_PATH = ROOT / "config" / "controllers.yaml"
RVIZ_PATH = ROOT / "config" / "telesurg.rviz"
CHECKER_SOURCE = Path(__file__).with_name("sdformat_check.cpp")

APT_PACKAGES = "g++ pkg-config libsdformat-dev"
SDFORMAT_PKG_CONFIG = "sdformat12"
#: What the Gazebo launch file replaces with telesurg's installed share directory in
#: robot_description (gz_ros2_control passes the path to the ROS parameter loader as it is).
SHARE_TOKEN = "TELESURG_SHARE"
GZ_ROS2_CONTROL_PLUGIN = ("gz_ros2_control-system", "gz_ros2_control::GazeboSimROS2ControlPlugin")
GZ_HARDWARE_PLUGIN = "gz_ros2_control/GazeboSimSystem"
#: The gz sim systems a world needs for physics, spawning (the create service) and the GUI.
WORLD_SYSTEMS = {"gz-sim-physics-system", "gz-sim-user-commands-system",
                 "gz-sim-scene-broadcaster-system"}
SPAWN_FRAME = "psm_spawn"
TABLE_MODEL = "operating_table"
ENDOSCOPE_MODEL = "endoscope"
#: The endoscope's cameras by sensor name: the contract's image and calibration topics of each.
ENDOSCOPE_EYES = {"left": (ENDOSCOPE_LEFT_IMAGE, ENDOSCOPE_LEFT_CAMERA_INFO),
                  "right": (ENDOSCOPE_RIGHT_IMAGE, ENDOSCOPE_RIGHT_CAMERA_INFO)}
#: The gz sim system that renders camera sensors, and the render engine Gazebo Harmonic has.
SENSORS_SYSTEM = ("gz-sim-sensors-system", "gz::sim::systems::Sensors")
RENDER_ENGINE = "ogre2"
DESCRIPTIONS_PATH = ROOT / "telesurg" / "bringup" / "descriptions.py"


# ---------------------------------------------------------------- the SDFormat checker

@pytest.fixture(scope="module")
def checker() -> Path:
    """The compiled checker, cached by the hash of its source and build flags."""
    compiler, pkg_config = shutil.which("g++"), shutil.which("pkg-config")
    if compiler is None or pkg_config is None:
        pytest.skip(f"needs g++ and pkg-config to build the SDFormat checker: "
                    f"apt-get install {APT_PACKAGES} (or `make setup` as root)")
    flags = subprocess.run([pkg_config, "--cflags", "--libs", SDFORMAT_PKG_CONFIG],
                           capture_output=True, text=True)
    if flags.returncode != 0:
        pytest.skip(f"SDFormat 12 development files not found (pkg-config "
                    f"{SDFORMAT_PKG_CONFIG}): apt-get install {APT_PACKAGES} "
                    "(or `make setup` as root)")
    source = CHECKER_SOURCE.read_bytes()
    digest = hashlib.sha256(source + flags.stdout.encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"telesurg-sdformat-check-{os.getuid()}"
    binary = cache / f"sdformat_check-{digest}"
    if not binary.is_file():
        cache.mkdir(exist_ok=True)
        partial = cache / f"{binary.name}.{os.getpid()}.tmp"
        build = subprocess.run([compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror",
                                "-o", str(partial), str(CHECKER_SOURCE),
                                *flags.stdout.split()], capture_output=True, text=True)
        assert build.returncode == 0, f"building {CHECKER_SOURCE.name} failed:\n{build.stderr}"
        os.replace(partial, binary)
    return binary


def check(checker: Path, path: Path, **env) -> tuple[int, dict, str]:
    """Exit status, report and stderr of the checker on one file."""
    result = subprocess.run([str(checker), str(path)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, **env})
    return result.returncode, json.loads(result.stdout), result.stderr


def assert_clean(status: int, report: dict, stderr: str) -> None:
    """Not a single error or warning: SDFormat's, nor urdfdom's (which writes to stderr)."""
    problems = report["errors"] + report["warnings"] + ([stderr] if stderr.strip() else [])
    assert status == 0 and not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def urdf_result(checker):
    return check(checker, URDF_PATH)


@pytest.fixture(scope="module")
def arm(urdf_result) -> dict:
    """The arm model as Gazebo makes it from the URDF."""
    return urdf_result[1]["model"]


@pytest.fixture(scope="module")
def world_result(checker):
    return check(checker, WORLD_PATH)


@pytest.fixture(scope="module")
def world(world_result) -> dict:
    (only,) = world_result[1]["worlds"]
    return only


@pytest.fixture(scope="module")
def world_sdf(world_result) -> ET.Element:
    """The world as SDFormat parsed it: its sensors, which the report does not describe."""
    return ET.fromstring(world_result[1]["sdf"])


@pytest.fixture(scope="module")
def robot() -> ET.Element:
    return ET.parse(URDF_PATH).getroot()


def pose_matrix(pose) -> np.ndarray:
    """x y z roll pitch yaw (SDF: fixed axes x, y, z) as a 4x4 matrix."""
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", pose[3:]).as_matrix()
    matrix[:3, 3] = pose[:3]
    return matrix


def moving_joints(robot: ET.Element) -> dict[str, ET.Element]:
    return {joint.get("name"): joint for joint in robot.findall("joint")
            if joint.get("type") != "fixed"}


def lumped_links(robot: ET.Element) -> set[str]:
    """Links Gazebo's URDF conversion merges into their parents: children of fixed joints."""
    return {joint.find("child").get("link") for joint in robot.findall("joint")
            if joint.get("type") == "fixed"}


def test_the_checker_fails_on_a_warning_or_an_error(checker, tmp_path):
    status, report, _ = check(checker, WORLD_PATH, SDFORMAT_CHECK_EMIT_WARNING="test warning")
    assert status == 1 and any("test warning" in text for text in report["warnings"])
    broken = tmp_path / "broken.sdf"
    broken.write_text(WORLD_PATH.read_text().replace("<grid>false</grid>", "<gird/>"))
    status, report, _ = check(checker, broken)
    assert status == 1 and any("gird" in text for text in report["errors"])


def test_a_massless_base_would_lose_the_whole_arm_in_gazebo(checker, tmp_path):
    """Why the URDF has yaw_drive: without a mass on (or lumped into) the base, Gazebo's URDF
    conversion drops the base and every link and joint below it."""
    massless = tmp_path / "massless.urdf"
    robot = ET.parse(URDF_PATH).getroot()
    for link in robot.findall("link"):
        if link.get("name") in lumped_links(robot) and link.find("inertial") is not None:
            link.remove(link.find("inertial"))
    ET.ElementTree(robot).write(massless)
    status, report, _ = check(checker, massless)
    assert status == 1
    assert not [joint for joint in report["model"]["joints"] if joint["type"] != "fixed"]


# ---------------------------------------------------------------- the arm in Gazebo

def test_urdf_loads_in_sdformat_without_errors_or_warnings(urdf_result):
    assert_clean(*urdf_result)


def test_converted_model_keeps_every_link_joint_axis_and_limit(robot, arm):
    """Every moving joint survives the conversion with its type, limits and (at zero joints)
    the same axis and frame; every link but the fixed-joint children Gazebo lumps."""
    urdf_links = {link.get("name") for link in robot.findall("link")}
    links = {link["name"]: link for link in arm["links"]}
    assert set(links) == urdf_links - lumped_links(robot)
    for name, link in links.items():
        np.testing.assert_allclose(pose_matrix(link["pose"]), urdf_link_pose(robot, name),
                                   atol=1e-9, err_msg=name)
    joints = {joint["name"]: joint for joint in arm["joints"] if joint["type"] != "fixed"}
    assert set(joints) == set(moving_joints(robot))
    for name, urdf_joint in moving_joints(robot).items():
        joint = joints[name]
        assert joint["type"] == urdf_joint.get("type"), name
        assert (joint["parent"], joint["child"]) == (
            urdf_joint.find("parent").get("link"), urdf_joint.find("child").get("link")), name
        limit = urdf_joint.find("limit")
        for key in ("lower", "upper", "effort", "velocity"):
            assert joint[key] == pytest.approx(float(limit.get(key)), rel=1e-12), (name, key)
        frame = urdf_link_pose(robot, urdf_joint.find("child").get("link"))
        np.testing.assert_allclose(pose_matrix(joint["pose"]), frame, atol=1e-9, err_msg=name)
        axis = np.array([float(v) for v in urdf_joint.find("axis").get("xyz").split()])
        np.testing.assert_allclose(joint["axis"], frame[:3, :3] @ axis, atol=1e-9,
                                   err_msg=name)


def test_converted_model_drops_only_massless_fixed_frames(robot, urdf_result):
    """The converter says (in its debug log) what it leaves out: only massless links on fixed
    joints, i.e. pure frames like tool_tip, which robot_state_publisher still publishes."""
    massless_frames = {link.get("name") for link in robot.findall("link")
                       if link.find("inertial") is None} & lumped_links(robot)
    assert massless_frames  # tool_tip
    for line in urdf_result[1]["debug"]:
        if "has no inertia" in line:
            assert any(f"link[{name}]" in line for name in massless_frames), line


def test_converted_model_is_fixed_to_the_world_and_not_static(arm):
    assert not arm["static"]
    mounts = [joint for joint in arm["joints"] if joint["parent"] == "world"]
    assert [(joint["type"], joint["child"]) for joint in mounts] == [("fixed", BASE_FRAME)]


def test_converted_model_carries_the_gz_ros2_control_plugin(arm):
    plugins = [(plugin["filename"], plugin["name"]) for plugin in arm["plugins"]]
    assert plugins == [GZ_ROS2_CONTROL_PLUGIN]
    plugin = ET.fromstring(arm["plugins"][0]["xml"])
    (parameters,) = plugin.findall("parameters")
    # The launch file swaps the token for the share directory; the source tree is laid out
    # like it (setup.py installs config/ there).
    assert parameters.text.startswith(SHARE_TOKEN + "/")
    assert Path(parameters.text.replace(SHARE_TOKEN, str(ROOT), 1)) == CONTROLLERS_PATH
    assert CONTROLLERS_PATH.is_file()
    assert 0.0 < float(plugin.findtext("position_proportional_gain")) <= 1.0  # no overshoot


def test_no_link_feels_gravity_as_in_the_mujoco_simulation(arm):
    """MuJoCo compensates gravity on every body (the PSM is counterbalanced); in Gazebo the
    links have gravity off. Both must hold, or the arm sags in one simulator only."""
    simulation = ArmSimulation(URDF_PATH, 0.001, HOME_POSITIONS)
    massive = simulation.model.body_mass > 0.0
    assert np.all(simulation.model.body_gravcomp[massive] == 1.0)
    for link in arm["links"]:
        assert link["mass"] > 0.0, link["name"]
        assert link["gravity"] is False, link["name"]


# ---------------------------------------------------------------- ros2_control wiring

@pytest.fixture(scope="module")
def controllers() -> dict:
    return yaml.safe_load(CONTROLLERS_PATH.read_text())


def commanded_controller() -> str:
    """The forward controller whose commands topic the arm controller publishes."""
    (topic,) = [topic for topic, kind in SITE_TOPICS["patient"].items()
                if topic.endswith("/commands") and kind == "std_msgs/msg/Float64MultiArray"]
    return topic.strip("/").split("/")[0]


def test_ros2_control_block_names_the_commanded_joints_and_interfaces(robot):
    (block,) = robot.findall("ros2_control")
    assert block.get("type") == "system"
    assert block.findtext("hardware/plugin") == GZ_HARDWARE_PLUGIN
    joints = block.findall("joint")
    assert tuple(joint.get("name") for joint in joints) == JOINT_NAMES
    for joint, home in zip(joints, HOME_POSITIONS, strict=True):
        name = joint.get("name")
        assert [i.get("name") for i in joint.findall("command_interface")] == ["position"]
        states = joint.findall("state_interface")
        assert [i.get("name") for i in states] == ["position", "velocity"], name
        (initial,) = states[0].findall("param[@name='initial_value']")
        # Gazebo starts the arm where the MuJoCo simulator does.
        assert float(initial.text) == home, name
        assert JOINT_LIMITS[name].lower <= home <= JOINT_LIMITS[name].upper


def test_every_ros2_control_joint_is_a_moving_joint_in_gazebo(robot, arm):
    """gz_ros2_control skips (with a warning) a joint the Gazebo model lacks."""
    moving = {joint["name"] for joint in arm["joints"] if joint["type"] != "fixed"}
    assert {joint.get("name") for joint in robot.find("ros2_control").findall("joint")} <= moving


def test_forward_controller_covers_what_the_arm_controller_commands(robot, controllers):
    core = ArmController(ArmControllerConfig.defaults())
    core.on_joint_states(HOME_POSITIONS, 0.0)
    command = core.tick(0.001)  # one /forward_position_controller/commands message
    name = commanded_controller()
    forward_controller = controllers[name]["ros__parameters"]
    assert len(forward_controller["joints"]) == len(command)
    assert tuple(forward_controller["joints"]) == JOINT_NAMES
    assert forward_controller["joints"] == [
        joint.get("name") for joint in robot.find("ros2_control").findall("joint")]
    assert forward_controller["interface_name"] == "position"


def test_controller_manager_runs_the_controllers_at_the_simulators_rate(controllers):
    manager = controllers["controller_manager"]["ros__parameters"]
    assert manager["update_rate"] == defaults("simulator")["publish_rate_hz"]
    assert manager["update_rate"] == defaults("arm_controller")["rate_hz"]
    assert manager[commanded_controller()]["type"] == (
        "position_controllers/JointGroupPositionController")
    assert manager["joint_state_broadcaster"]["type"] == (
        "joint_state_broadcaster/JointStateBroadcaster")
    assert "/joint_states" in SITE_TOPICS["patient"]  # what the broadcaster publishes
    controller_sections = set(controllers) - {"controller_manager"}
    assert controller_sections <= {name for name, value in manager.items()
                                   if isinstance(value, dict) and "type" in value}


# ---------------------------------------------------------------- the operating room

def test_world_loads_in_sdformat_without_errors_or_warnings(world_result):
    assert_clean(*world_result)


def test_world_steps_physics_like_the_mujoco_simulator(world):
    assert world["max_step_size"] == pytest.approx(1.0 / defaults("simulator")["physics_rate_hz"])
    assert world["real_time_factor"] == 1.0
    assert WORLD_SYSTEMS <= {plugin["filename"] for plugin in world["plugins"]}
    assert world["lights"]


def table_top(world: dict) -> float:
    """Height of the operating table's highest collision surface (world frame)."""
    (table,) = [model for model in world["models"] if model["name"] == TABLE_MODEL]
    assert table["static"]
    tops = []
    for link in table["links"]:
        for collision in link["collisions"]:
            assert collision["geometry"]["type"] == "box"
            pose = pose_matrix(table["pose"]) @ pose_matrix(collision["pose"])
            corners = np.array([[x, y, z, 1.0] for x in (-0.5, 0.5) for y in (-0.5, 0.5)
                                for z in (-0.5, 0.5)]) * [*collision["geometry"]["size"], 1.0]
            tops.append((pose @ corners.T)[2].max())
    return max(tops)


def test_the_arm_is_mounted_over_the_table_and_never_reaches_it(world, robot):
    """Spawned at psm_spawn, the RCM is over the table, and no joint configuration takes the
    tool tip down to the table top (the arm has no collision geometry to stop it)."""
    top = table_top(world)
    assert 0.7 <= top <= 1.1  # an operating table's height
    (spawn,) = [frame for frame in world["frames"] if frame["name"] == SPAWN_FRAME]
    rcm = pose_matrix(spawn["pose"])
    assert rcm[2, 3] > top
    lower = np.array([JOINT_LIMITS[name].lower for name in ARM_JOINT_NAMES])
    upper = np.array([JOINT_LIMITS[name].upper for name in ARM_JOINT_NAMES])
    deepest = np.where(np.array(ARM_JOINT_NAMES) == "outer_insertion", upper, 0.0)
    samples = [deepest, *random_positions(500, seed=20)[:, :len(ARM_JOINT_NAMES)]]
    for q in samples:
        tip = rcm @ forward(np.clip(q, lower, upper))
        assert tip[2, 3] > top, q
    # The world leaves the arm's name free for the spawned model.
    assert robot.get("name") not in {model["name"] for model in world["models"]}


# ---------------------------------------------------------------- the endoscope

def endoscope_cameras(sdf: ET.Element) -> dict[str, ET.Element]:
    """The endoscope model's sensors, by name."""
    (model,) = [model for model in sdf.iter("model") if model.get("name") == ENDOSCOPE_MODEL]
    return {sensor.get("name"): sensor for sensor in model.iter("sensor")}


def gz_topic(name: str) -> str:
    """A Gazebo topic name as gz-transport resolves it without a namespace: under /."""
    return "/" + name.lstrip("/")


def camera_info_topic(image_topic: str) -> str:
    """Where gz-sensors publishes a camera's calibration (SDFormat 1.9 has no
    <camera_info_topic>): camera_info beside the image topic."""
    return image_topic.rsplit("/", 1)[0] + "/camera_info"


def test_endoscope_cameras_publish_on_the_contracts_topics():
    cameras = endoscope_cameras(ET.parse(WORLD_PATH).getroot())
    assert set(cameras) == set(ENDOSCOPE_EYES)
    for name, (image, info) in ENDOSCOPE_EYES.items():
        assert cameras[name].get("type") == "camera", name
        topic = gz_topic(cameras[name].findtext("topic"))
        assert (topic, camera_info_topic(topic)) == (image.name, info.name)


def test_endoscope_cameras_image_like_the_mujoco_endoscope():
    """The same image size and rate as the endoscope node's defaults, and the same vertical
    field of view: Gazebo takes the horizontal one and keeps the pixels square."""
    endoscope = defaults("endoscope")
    for name, sensor in endoscope_cameras(ET.parse(WORLD_PATH).getroot()).items():
        camera = sensor.find("camera")
        assert sensor.findtext("always_on") == "true", name
        assert float(sensor.findtext("update_rate")) == endoscope["video_fps"], name
        width, height = (int(camera.findtext(f"image/{side}")) for side in ("width", "height"))
        assert (width, height) == (endoscope["width"], endoscope["height"]), name
        assert camera.findtext("image/format") == "R8G8B8", name  # rgb8, as the raw images
        horizontal = float(camera.findtext("horizontal_fov"))
        vertical = 2 * math.atan(math.tan(horizontal / 2) * height / width)
        assert vertical == pytest.approx(math.radians(DEFAULT_FOVY_DEG), abs=1e-8), name


def test_endoscope_cameras_sit_a_baseline_apart_looking_at_the_jaws(world, world_sdf):
    """Posed as telesurg/video/camera.py poses the MuJoCo eyes (its world is psm_base, which
    Gazebo puts at SPAWN_POSE unrotated): the midpoint at DEFAULT_VIEW_OFFSET_M from the jaws at
    home, parallel axes through points half the baseline to either side of the jaws, image
    rows level. A Gazebo camera looks along its x axis, y to the left of the image, z up."""
    (model,) = [model for model in world["models"] if model["name"] == ENDOSCOPE_MODEL]
    assert model["static"]
    (link,) = model["links"]
    in_world = pose_matrix(model["pose"]) @ pose_matrix(link["pose"])
    eyes = {}
    for name, sensor in endoscope_cameras(world_sdf).items():
        pose = sensor.find("pose")
        assert pose.get("relative_to") is None, name  # in its link
        eyes[name] = in_world @ pose_matrix([float(value) for value in pose.text.split()])
    jaws = np.array([SPAWN_POSE[axis] for axis in "xyz"]) + home_jaws_centre()
    left, right = eyes["left"], eyes["right"]
    np.testing.assert_allclose(left[:3, :3], right[:3, :3], atol=1e-12)
    baseline = left[:3, 3] - right[:3, 3]
    assert np.linalg.norm(baseline) == pytest.approx(defaults("endoscope")["baseline_m"],
                                                     abs=1e-12)
    forward, leftward, up = left[:3, :3].T
    np.testing.assert_allclose(baseline / np.linalg.norm(baseline), leftward, atol=1e-12)
    midpoint = (left[:3, 3] + right[:3, 3]) / 2
    np.testing.assert_allclose(midpoint, jaws + DEFAULT_VIEW_OFFSET_M, atol=1e-9)
    distance = np.linalg.norm(DEFAULT_VIEW_OFFSET_M)
    assert leftward[2] == pytest.approx(0.0, abs=1e-12) and up[2] > 0
    for name, sign in (("left", -1), ("right", 1)):
        seen = np.linalg.inv(eyes[name]) @ [*jaws, 1.0]
        np.testing.assert_allclose(seen[:3], [distance, sign * np.linalg.norm(baseline) / 2, 0],
                                   atol=1e-8, err_msg=name)
        clip = endoscope_cameras(world_sdf)[name].find("camera/clip")
        assert float(clip.findtext("near")) < distance < float(clip.findtext("far")), name


def test_world_renders_the_cameras(world):
    (sensors,) = [plugin for plugin in world["plugins"]
                  if (plugin["filename"], plugin["name"]) == SENSORS_SYSTEM]
    assert ET.fromstring(sensors["xml"]).findtext("render_engine") == RENDER_ENGINE


def test_bridge_carries_the_cameras_to_the_contracts_topics_as_their_ros_types():
    """Each camera topic, from Gazebo to ROS only ('['), under the same name, which is the
    contract's: images as sensor_msgs/Image, calibrations as sensor_msgs/CameraInfo."""
    carried = {}
    for argument in ENDOSCOPE_BRIDGES:
        name, _, types = argument.partition("@")
        ros_type, _, gz_type = types.partition("[")
        carried[name] = (ros_type, gz_type)
    expected = {}
    for image, info in ENDOSCOPE_EYES.values():
        expected[image.name] = ("sensor_msgs/msg/Image", "gz.msgs.Image")
        expected[info.name] = ("sensor_msgs/msg/CameraInfo", "gz.msgs.CameraInfo")
    assert carried == expected
    published = set()
    for sensor in endoscope_cameras(ET.parse(WORLD_PATH).getroot()).values():
        topic = gz_topic(sensor.findtext("topic"))
        published |= {topic, camera_info_topic(topic)}
    assert set(carried) == published
    assert set(ENDOSCOPE_BRIDGES) <= set(GAZEBO_BRIDGES)


def test_gazebo_launch_bridges_everything_the_plan_names():
    """Statically: the launch's one parameter_bridge takes GAZEBO_BRIDGES as its arguments."""
    (function,) = [node for node in ast.walk(ast.parse(DESCRIPTIONS_PATH.read_text()))
                   if isinstance(node, ast.FunctionDef)
                   and node.name == "gazebo_launch_description"]
    (bridge,) = [node for node in ast.walk(function) if isinstance(node, ast.Call)
                 and any(keyword.arg == "executable" and isinstance(keyword.value, ast.Constant)
                         and keyword.value.value == "parameter_bridge"
                         for keyword in node.keywords)]
    (arguments,) = [keyword.value for keyword in bridge.keywords if keyword.arg == "arguments"]
    assert ast.unparse(arguments) == "list(support.GAZEBO_BRIDGES)"


# ---------------------------------------------------------------- RViz

@pytest.fixture(scope="module")
def rviz() -> dict:
    return yaml.safe_load(RVIZ_PATH.read_text())["Visualization Manager"]


def displays(rviz: dict, kind: str) -> list[dict]:
    return [display for display in rviz["Displays"]
            if display["Class"] == f"rviz_default_plugins/{kind}"]


def test_rviz_shows_the_arm_in_its_base_frame(rviz, robot):
    links = {link.get("name") for link in robot.findall("link")}
    assert rviz["Global Options"]["Fixed Frame"] == BASE_FRAME
    assert BASE_FRAME in links
    (model,) = displays(rviz, "RobotModel")
    assert model["Enabled"] and model["Description Source"] == "Topic"
    # robot_state_publisher latches robot_description: the display must ask for it so.
    assert model["Description Topic"]["Value"] == "/robot_description"
    assert model["Description Topic"]["Durability Policy"] == "Transient Local"
    (tf,) = displays(rviz, "TF")
    shown = {name for name, value in tf["Frames"].items()
             if isinstance(value, dict) and value.get("Value")}
    assert shown and shown <= links
    assert displays(rviz, "Grid")


def test_rviz_shows_setpoint_and_measured_tool_tip_poses_as_published(rviz):
    from telesurg.contract.topics import Qos
    from telesurg.ros.qos import qos_profile

    poses = displays(rviz, "Pose")
    topics = [display["Topic"]["Value"] for display in poses]
    assert sorted(topics) == ["/psm/measured_cp", "/psm/setpoint_cp"]
    for display in poses:
        topic = display["Topic"]
        assert SITE_TOPICS["patient"][topic["Value"]] == "geometry_msgs/msg/PoseStamped"
        assert display["Enabled"]
        # The arm controller's QoS (reliable, transient local): a matching subscriber.
        state = qos_profile(Qos.STATE)
        assert topic["Durability Policy"].replace(" ", "_").upper() == state.durability.name
        assert topic["Reliability Policy"].replace(" ", "_").upper() == state.reliability.name
    assert len({display["Color"] for display in poses}) == len(poses)
