"""Launch the patient site of a two-machine telesurg session (full ROS 2 install).

    ros2 launch telesurg patient_site.launch.py [sim:=mujoco|gazebo|none] key_file:=... \
        link_a_bind:=... [record:=true] [rviz:=true]

Its nodes come from telesurg.contract.graph (the list `telesurg demo` uses) plus the bridge, the
only path to the other site, and the arm: the MuJoCo simulator node (sim:=mujoco), Gazebo Sim
with ros2_control (sim:=gazebo, gazebo.launch.py) or a real arm's ros2_control (sim:=none).
Give each site its own ROS_DOMAIN_ID. `--show-args` lists the arguments.
"""

from telesurg.bringup.descriptions import site_launch_description


def generate_launch_description():
    return site_launch_description("patient")
