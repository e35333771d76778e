"""What every telesurg node shares: QoS profiles, parameter declaration from the one table,
message conversions, and a main loop that exits cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import rclpy
from geometry_msgs.msg import Pose
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from telesurg.params import NODE_PARAMETERS, ConfigError, load_parameter_file
from telesurg.rotations import homogeneous, matrix_to_quaternion, quaternion_to_matrix

#: Streamed commands and device samples: the latest wins, a late one is worthless.
STREAM_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)
#: States (operating state, pedals, poses): reliable, and a late joiner gets the last value.
STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                       reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: State commands (enable, pause, ...): each one must arrive.
STATE_COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                               reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE)
#: Joint commands to ros2_control: its forward controllers subscribe reliable, so publish
#: reliable (a reliable writer also serves best-effort readers); keep only the newest.
CONTROLLER_COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                    reliability=ReliabilityPolicy.RELIABLE,
                                    durability=DurabilityPolicy.VOLATILE)


def declare_parameters(node: Node, table_name: str) -> SimpleNamespace:
    """Declare the node's parameters from telesurg.params with descriptions and ranges."""
    values = {}
    for param in NODE_PARAMETERS[table_name]:
        descriptor = ParameterDescriptor(description=param.description, read_only=True)
        if param.kind is float and param.low is not None:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=param.low, to_value=param.high, step=0.0)]
        elif param.kind is int and param.low is not None:
            descriptor.integer_range = [
                IntegerRange(from_value=int(param.low), to_value=int(param.high), step=1)]
        if param.choices:
            descriptor.additional_constraints = param.range_text()
        value = node.declare_parameter(param.name, param.default, descriptor).value
        # Catches what rclpy does not check itself (choices) for -p overrides too.
        values[param.name] = param.check(value, f"node '{node.get_name()}'")
    return SimpleNamespace(**values)


def parameter_files(args: list[str]) -> list[str]:
    """The --params-file paths among ROS arguments."""
    files = []
    in_ros_args = False
    for index, arg in enumerate(args):
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg == "--params-file" and index + 1 < len(args):
            files.append(args[index + 1])
    return files


def run_node(node_name: str, create: Callable[[], Node], args: list[str] | None = None) -> None:
    """Check parameter files, create the node, spin until Ctrl-C/SIGTERM, shut down cleanly.

    A configuration error exits with status 2 and a one-line message naming key and file.
    """
    args = sys.argv if args is None else args
    try:
        for path in parameter_files(args):
            load_parameter_file(path)
    except ConfigError as error:
        _exit_config_error(node_name, error)
    rclpy.init(args=args)
    node = None
    try:
        node = create()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as error:
        _exit_config_error(node_name, error)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


def _exit_config_error(node_name: str, error: ConfigError) -> None:
    print(f"{node_name}: configuration error: {error}", file=sys.stderr, flush=True)
    sys.exit(2)


def pose_to_matrix(pose: Pose) -> np.ndarray:
    o, p = pose.orientation, pose.position
    return homogeneous(quaternion_to_matrix(o.x, o.y, o.z, o.w), (p.x, p.y, p.z))


def fill_pose(pose: Pose, matrix: np.ndarray) -> Pose:
    x, y, z = matrix[:3, 3].tolist()
    pose.position.x, pose.position.y, pose.position.z = x, y, z
    o = pose.orientation
    o.x, o.y, o.z, o.w = matrix_to_quaternion(matrix[:3, :3])
    return pose


def stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def message_class(type_name: str):
    """The Python class of a ROS message type named like 'geometry_msgs/msg/PoseStamped'."""
    package, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)
