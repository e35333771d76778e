"""What a master device and its pedals publish, as a CRTK master driver would: the pose and the
gripper at every sample, the clutch and operator-present pedals (states) when they change.
Shared by whatever stands in for the device: the virtual surgeon and the console page."""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from telesurg.arm.rotations import homogeneous
from telesurg.contract import topics
from telesurg.master.teleop import MASTER_FRAME
from telesurg.ros.messages import fill_pose
from telesurg.ros.qos import publisher


class MasterDeviceOutput:
    """The four master topics' publishers of node."""

    def __init__(self, node: Node):
        self._node = node
        self.publishers = [publisher(node, topic) for topic in (
            topics.MTM_MEASURED_CP, topics.MTM_GRIPPER_MEASURED_JS, topics.CONSOLE_CLUTCH,
            topics.CONSOLE_OPERATOR_PRESENT)]
        self._pose = PoseStamped()
        self._pose.header.frame_id = MASTER_FRAME
        self._gripper = JointState(name=["gripper"])
        self._pedals: tuple[bool, bool] | None = None

    def matched(self) -> bool:
        """Whether every topic has a subscriber (the console listens)."""
        return all(pub.get_subscription_count() > 0 for pub in self.publishers)

    def publish(self, stamp, position: np.ndarray, rotation: np.ndarray, gripper: float,
                clutch: bool, present: bool) -> bool:
        """One sample; whether the operator-present pedal changed with it (or was first
        published)."""
        pose_pub, gripper_pub, clutch_pub, present_pub = self.publishers
        self._pose.header.stamp = stamp
        fill_pose(self._pose.pose, homogeneous(rotation, position))
        pose_pub.publish(self._pose)
        self._gripper.header.stamp = stamp
        self._gripper.position = [float(gripper)]
        gripper_pub.publish(self._gripper)
        previous, self._pedals = self._pedals, (clutch, present)
        if previous is None or clutch != previous[0]:
            clutch_pub.publish(Bool(data=clutch))
        if previous is None or present != previous[1]:
            present_pub.publish(Bool(data=present))
            return True
        return False

    def destroy(self) -> None:
        for stale in self.publishers:
            self._node.destroy_publisher(stale)
