"""The LaunchDescription of one site, shared by launch/master_site.launch.py and
launch/patient_site.launch.py (imports launch and launch_ros: full ROS 2 installs only)."""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from telesurg.graph import BRIDGE, nodes_of_site


def site_launch_description(site: str) -> LaunchDescription:
    share = get_package_share_directory("telesurg")
    config = LaunchConfiguration("config")
    bridge_config = LaunchConfiguration("bridge_config")
    nodes = [Node(package="telesurg", executable=spec.executable, name=spec.name,
                  parameters=[config], output="screen") for spec in nodes_of_site(site)]
    nodes.append(Node(package="telesurg", executable=BRIDGE.executable, name=BRIDGE.name,
                      parameters=[{"role": site, "config_file": bridge_config}],
                      output="screen"))
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", default_value=os.path.join(share, "config", "telesurg.yaml"),
            description="ROS 2 parameter file for this site's telesurg nodes"),
        DeclareLaunchArgument(
            "bridge_config", default_value=os.path.join(share, "config", "bridge.yaml"),
            description="Bridge configuration: link addresses (both sites), key file, topics"),
        *nodes,
    ])
