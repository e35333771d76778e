"""The LaunchDescription of one site, shared by launch/master_site.launch.py and
launch/patient_site.launch.py (imports launch and launch_ros: full ROS 2 installs only)."""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, TextSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from telesurg.bridge_config import LINK_OVERRIDES
from telesurg.graph import BRIDGE, nodes_of_site

#: The links of the installed config/bridge.yaml, whose addresses launch arguments can set.
LINKS = ("a", "b")
HELP = {"bind": "this site's HOST:PORT on link {link}",
        "peer": "the other site's HOST:PORT on link {link}",
        "interface": "network interface link {link} leaves by (e.g. enp3s0 or wwan0)"}


def site_launch_description(site: str) -> LaunchDescription:
    share = get_package_share_directory("telesurg")
    config = LaunchConfiguration("config")
    # Each override parameter is 'a=VALUE b=VALUE'; an empty VALUE keeps the file's. Typed as
    # strings, so that an empty or numeric-looking value is not read as YAML.
    overrides = {parameter: ParameterValue([part for i, link in enumerate(LINKS) for part in (
        TextSubstitution(text=f"{' ' if i else ''}{link}="),
        LaunchConfiguration(f"link_{link}_{field}"))], value_type=str)
        for parameter, field in LINK_OVERRIDES.items()}
    nodes = [Node(package="telesurg", executable=spec.executable, name=spec.name,
                  parameters=[config], output="screen") for spec in nodes_of_site(site)]
    nodes.append(Node(package="telesurg", executable=BRIDGE.executable, name=BRIDGE.name,
                      parameters=[{"role": site,
                                   "config_file": LaunchConfiguration("bridge_config"),
                                   "key_file": ParameterValue(LaunchConfiguration("key_file"),
                                                              value_type=str),
                                   **overrides}],
                      output="screen"))
    link_arguments = [
        DeclareLaunchArgument(f"link_{link}_{part}", default_value="",
                              description=HELP[part].format(link=link)
                              + "; empty keeps bridge_config's")
        for link in LINKS for part in LINK_OVERRIDES.values()]
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", default_value=os.path.join(share, "config", "telesurg.yaml"),
            description="ROS 2 parameter file for this site's telesurg nodes"),
        DeclareLaunchArgument(
            "bridge_config", default_value=os.path.join(share, "config", "bridge.yaml"),
            description="Bridge configuration: link addresses (both sites), key file, topics"),
        DeclareLaunchArgument(
            "key_file", default_value="",
            description="Pre-shared key file (telesurg keygen), the same at both sites; empty "
                        "keeps bridge_config's key_file"),
        *link_arguments,
        *nodes,
    ])
