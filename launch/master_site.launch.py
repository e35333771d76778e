"""Launch the master site of a two-machine telesurg session (full ROS 2 install).

    ros2 launch telesurg master_site.launch.py key_file:=... link_a_bind:=... [record:=true]

Its nodes come from telesurg.contract.graph (the list `telesurg demo` uses) plus the bridge, the
only path to the other site. Give each site its own ROS_DOMAIN_ID. `ros2 launch telesurg
master_site.launch.py --show-args` lists the arguments.
"""

from telesurg.bringup.descriptions import site_launch_description


def generate_launch_description():
    return site_launch_description("master")
