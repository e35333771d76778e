"""Launch a whole telesurg session on one machine (full ROS 2 install).

    ros2 launch telesurg telesurg.launch.py [sim:=mujoco|gazebo|none] [config:=params.yaml] \
        [record:=true] [rviz:=true]

Both sites' nodes from telesurg.contract.graph, the list `telesurg demo` starts, on one DDS
domain (no bridge). `--show-args` lists the arguments.
"""

from telesurg.bringup.descriptions import session_launch_description


def generate_launch_description():
    return session_launch_description()
