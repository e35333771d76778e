"""The patient site in Gazebo Sim (full ROS 2 install with Gazebo Harmonic, ros_gz and
gz_ros2_control).

    ros2 launch telesurg gazebo.launch.py [world:=...] [bridge:=false] key_file:=... ...

Gazebo with worlds/operating_room.sdf, robot_state_publisher with description/psm.urdf, the arm
spawned from robot_description, the bridge of /clock and of the endoscope's cameras
(/endoscope/{left,right}/image_raw and camera_info), the joint_state_broadcaster and
forward_position_controller spawners one after the other, and, once the controllers are active,
the patient site's nodes on sim time. patient_site.launch.py and telesurg.launch.py include it
for sim:=gazebo.
"""

from telesurg.bringup.descriptions import gazebo_launch_description


def generate_launch_description():
    return gazebo_launch_description()
