"""The pure parts of the launch files: what telesurg/bringup/descriptions.py builds its
LaunchDescriptions from, written without `launch`, `launch_ros` or rclpy so that the tests check
them on any Python machine.

Files are named here once (ShareFile), with the package whose share directory holds them; the
launch files name no path of their own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from telesurg.contract.graph import NodeSpec
from telesurg.contract.topics import (
    ENDOSCOPE_LEFT_CAMERA_INFO,
    ENDOSCOPE_LEFT_IMAGE,
    ENDOSCOPE_RIGHT_CAMERA_INFO,
    ENDOSCOPE_RIGHT_IMAGE,
    SITE_TOPICS,
    Topic,
    site_topics,
)


@dataclass(frozen=True)
class ShareFile:
    """A file installed under share/<package>/<folder>/<name>."""

    package: str
    folder: str
    name: str

    def path(self, share: str | os.PathLike) -> str:
        """Its path under the package's share directory `share`."""
        return os.path.join(os.fspath(share), self.folder, self.name)


PACKAGE = "telesurg"
#: ROS 2 parameters of every telesurg node.
PARAMS = ShareFile(PACKAGE, "config", "telesurg.yaml")
#: The bridge's links, key file and topics (the same file at both sites).
BRIDGE_CONFIG = ShareFile(PACKAGE, "config", "bridge.yaml")
#: The Fast DDS profile every telesurg process runs with (unless one is set already).
FASTDDS_PROFILE = ShareFile(PACKAGE, "config", "fastdds_profile.xml")
#: The arm.
URDF = ShareFile(PACKAGE, "description", "psm.urdf")
#: The Gazebo world the arm is spawned into.
WORLD = ShareFile(PACKAGE, "worlds", "operating_room.sdf")
#: RViz: the arm's model and frames.
RVIZ_CONFIG = ShareFile(PACKAGE, "config", "telesurg.rviz")
#: Gazebo, robot_state_publisher, spawn, controllers and the patient site once they are active.
GAZEBO_LAUNCH = ShareFile(PACKAGE, "launch", "gazebo.launch.py")
#: Gazebo Sim itself (package ros_gz_sim).
GZ_SIM_LAUNCH = ShareFile("ros_gz_sim", "launch", "gz_sim.launch.py")
#: Every file the launch files name.
SHARE_FILES = (PARAMS, BRIDGE_CONFIG, FASTDDS_PROFILE, URDF, WORLD, RVIZ_CONFIG, GAZEBO_LAUNCH,
               GZ_SIM_LAUNCH)

# Simulation ---------------------------------------------------------------------------------

#: The patient site's `sim` launch argument: the embedded MuJoCo arm (in the arm controller),
#: Gazebo Sim with ros2_control, or nothing (a real arm whose ros2_control publishes
#: /joint_states and takes /forward_position_controller/commands).
SIMULATORS = ("mujoco", "gazebo", "none")
DEFAULT_SIMULATOR = "mujoco"
#: The arm controller's hardware parameter for each value of sim.
ARM_HARDWARE_OF_SIM = {"mujoco": "mujoco", "gazebo": "ros2_control", "none": "ros2_control"}
#: The graph node whose hardware depends on sim.
ARM_CONTROLLER_NODE = "arm_controller"

#: Stands, in the URDF's gz_ros2_control <parameters>, for the installed share directory of
#: telesurg: TELESURG_SHARE/config/controllers.yaml.
SHARE_TOKEN = "TELESURG_SHARE"
_SHARE_REFERENCE = re.compile(re.escape(SHARE_TOKEN) + r"/([^\s<>\"']+)")

#: Where the arm is spawned: its model frame psm_base (the remote centre of motion) at the
#: frame psm_spawn of worlds/operating_room.sdf, on the patient phantom above the table.
SPAWN_POSE = {"x": 0.0, "y": 0.0, "z": 1.18}
MODEL_NAME = "psm"
#: The ros2_control controllers, spawned in this order; the patient site starts once the last
#: is active. The arm controller reads /joint_states and writes
#: /forward_position_controller/commands, as with the MuJoCo simulator.
CONTROLLERS = ("joint_state_broadcaster", "forward_position_controller")
CONTROLLER_MANAGER = "/controller_manager"
#: Gazebo's clock on /clock, for use_sim_time.
CLOCK_BRIDGE = "/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock"
#: The Gazebo message type of each ROS type carried from Gazebo.
GZ_MESSAGE_TYPES = {"sensor_msgs/msg/Image": "gz.msgs.Image",
                    "sensor_msgs/msg/CameraInfo": "gz.msgs.CameraInfo"}


def bridge_from_gazebo(topic: Topic) -> str:
    """ros_gz_bridge's parameter_bridge argument that publishes the Gazebo topic of the same
    name on the contract's topic, as its ROS type ('[': from Gazebo to ROS only)."""
    return f"{topic.name}@{topic.type_name}[{GZ_MESSAGE_TYPES[topic.type_name]}"


#: The endoscope's images and calibrations, from the world's cameras (which publish them under
#: the contract's names) to ROS.
ENDOSCOPE_BRIDGES = tuple(bridge_from_gazebo(topic) for topic in (
    ENDOSCOPE_LEFT_IMAGE, ENDOSCOPE_RIGHT_IMAGE,
    ENDOSCOPE_LEFT_CAMERA_INFO, ENDOSCOPE_RIGHT_CAMERA_INFO))
#: Everything the launch's parameter_bridge carries between Gazebo and ROS.
GAZEBO_BRIDGES = (CLOCK_BRIDGE, *ENDOSCOPE_BRIDGES)


def split_arm_controller(specs: Iterable[NodeSpec]) -> tuple[NodeSpec, tuple[NodeSpec, ...]]:
    """(the arm controller, the other nodes) of a site's node list."""
    specs = tuple(specs)
    controllers = [spec for spec in specs if spec.name == ARM_CONTROLLER_NODE]
    if len(controllers) != 1:
        raise ValueError(f"expected one {ARM_CONTROLLER_NODE!r} node among "
                         f"{[spec.name for spec in specs]}")
    return controllers[0], tuple(spec for spec in specs if spec.name != ARM_CONTROLLER_NODE)


def resolve_share_token(urdf: str, share: str | os.PathLike) -> str:
    """The URDF with SHARE_TOKEN replaced by the absolute share directory `share` (where
    gz_ros2_control, started inside Gazebo, finds config/controllers.yaml)."""
    share = os.fspath(share)
    if not os.path.isabs(share):
        raise ValueError(f"share directory {share!r} is not an absolute path")
    return urdf.replace(SHARE_TOKEN, share.rstrip(os.sep) or os.sep)


def share_references(urdf: str) -> list[str]:
    """The share-relative paths the URDF names through SHARE_TOKEN (e.g.
    config/controllers.yaml)."""
    return _SHARE_REFERENCE.findall(urdf)


def robot_description(share: str | os.PathLike) -> str:
    """The installed URDF, its SHARE_TOKEN resolved: robot_state_publisher's
    robot_description."""
    return resolve_share_token(Path(URDF.path(share)).read_text(), share)


def spawn_arguments(pose: dict[str, float] = SPAWN_POSE) -> list[str]:
    """Arguments of `ros_gz_sim create`: the model from the robot_description topic."""
    arguments = ["-topic", "robot_description", "-name", MODEL_NAME]
    for axis in ("x", "y", "z"):
        arguments += [f"-{axis}", repr(float(pose[axis]))]
    return arguments


def spawner_arguments(controller: str) -> list[str]:
    """Arguments of `controller_manager spawner` for one controller."""
    if controller not in CONTROLLERS:
        raise ValueError(f"unknown controller {controller!r}: one of {', '.join(CONTROLLERS)}")
    return [controller, "--controller-manager", CONTROLLER_MANAGER]


# Recording ----------------------------------------------------------------------------------

def contract_topics(sites: Iterable[str], video: bool = False) -> list[str]:
    """The contract topics that the sites record (telesurg.contract.topics.site_topics), with
    the video topics or without, sorted."""
    topics: set[str] = set()
    for site in sites:
        if site not in SITE_TOPICS:
            raise ValueError(f"unknown site {site!r}: one of {', '.join(SITE_TOPICS)}")
        topics |= set(site_topics(site, video))
    return sorted(topics)


def installed(package: str) -> bool:
    """Whether an ament package is installed where ament_index looks (AMENT_PREFIX_PATH)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory(package)
    except PackageNotFoundError:
        return False
    return True


#: The package that gives `ros2 bag` its verbs (rosbag2's command line).
ROS2_BAG_PACKAGE = "ros2bag"


def record_command(topics: Sequence[str], output) -> list:
    """`ros2 bag record` of exactly these topics into the directory `output` (a string or a
    launch substitution), as MCAP. --topics comes last: it takes every argument after it."""
    if not topics:
        raise ValueError("nothing to record")
    return ["ros2", "bag", "record", "-s", "mcap", "-o", output, "--topics", *topics]


def default_record_dir(label: str, now: datetime) -> str:
    """A new directory name per launch (ros2 bag refuses an existing one), in the working
    directory: telesurg_<label>_<YYYYmmdd-HHMMSS>."""
    return f"telesurg_{label}_{now:%Y%m%d-%H%M%S}"
