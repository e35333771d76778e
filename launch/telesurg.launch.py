"""Launch a whole telesurg session on one machine (full ROS 2 install).

    ros2 launch telesurg telesurg.launch.py [config:=/path/to/params.yaml]

The node list comes from telesurg.graph, the same list `telesurg demo` starts.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from telesurg.graph import SESSION_NODES


def generate_launch_description():
    default_config = os.path.join(
        get_package_share_directory("telesurg"), "config", "telesurg.yaml")
    config = LaunchConfiguration("config")
    nodes = [
        Node(package="telesurg", executable=spec.executable, name=spec.name,
             parameters=[config], output="screen")
        for spec in SESSION_NODES
    ]
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", default_value=default_config,
            description="ROS 2 parameter file for every telesurg node"),
        *nodes,
    ])
