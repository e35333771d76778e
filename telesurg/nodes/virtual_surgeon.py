"""virtual_surgeon: stands in for a haptic master device and the console pedals.

Performs a task (suturing, figure8) with physiological tremor and clutch-and-reposition
events, seeded and repeatable, publishing what a CRTK master driver and pedals publish. The
task clock starts once the console listens on every topic and reports that it is ready to
engage (it publishes /console/following once it has the master and the arm pose), as a surgeon
looks at the console before pressing the operator-present pedal.
"""

from __future__ import annotations

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from telesurg.arm.rotations import homogeneous
from telesurg.contract import topics
from telesurg.master.surgeon import PresenceRetry, VirtualSurgeon
from telesurg.ros.loop import NodeLoop
from telesurg.ros.messages import fill_pose
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription

MASTER_FRAME = "mtm_base"


class VirtualSurgeonNode(Node):
    def __init__(self):
        super().__init__("virtual_surgeon")
        p = declare_parameters(self, "virtual_surgeon")
        self.surgeon = VirtualSurgeon(p.task, p.seed, tremor_amplitude_m=p.tremor_amplitude_m)
        self._pose_pub = publisher(self, topics.MTM_MEASURED_CP)
        self._gripper_pub = publisher(self, topics.MTM_GRIPPER_MEASURED_JS)
        self._clutch_pub = publisher(self, topics.CONSOLE_CLUTCH)
        self._present_pub = publisher(self, topics.CONSOLE_OPERATOR_PRESENT)
        self._console_ready = False
        self._following = False
        self._retry = PresenceRetry()
        subscription(self, topics.CONSOLE_FOLLOWING, self._on_console)
        self._start = None
        self._pose = PoseStamped()
        self._pose.header.frame_id = MASTER_FRAME
        self._gripper = JointState(name=["gripper"])
        self._pedals = (None, None)
        self.loop = NodeLoop(self)
        self.loop.every(1.0 / p.rate_hz, self._tick)
        self.get_logger().info(f"virtual surgeon: task {p.task}, seed {p.seed}; waiting for the "
                               "console to be ready")

    def _on_console(self, msg: Bool) -> None:
        self._console_ready = True
        self._following = msg.data

    def _ready(self) -> bool:
        publishers = (self._pose_pub, self._gripper_pub, self._clutch_pub, self._present_pub)
        return self._console_ready and all(pub.get_subscription_count() > 0
                                           for pub in publishers)

    def _tick(self) -> None:
        now = self.get_clock().now()
        if self._start is None and self._ready():
            self._start = now.nanoseconds * 1e-9
            self.get_logger().info("console ready: task started")
        elapsed = 0.0 if self._start is None else now.nanoseconds * 1e-9 - self._start
        master = self.surgeon.sample(elapsed)
        stamp = now.to_msg()
        self._pose.header.stamp = stamp
        fill_pose(self._pose.pose, homogeneous(master.rotation, master.position))
        self._pose_pub.publish(self._pose)
        self._gripper.header.stamp = stamp
        self._gripper.position = [float(master.gripper)]
        self._gripper_pub.publish(self._gripper)
        presses = self._retry.presses
        present = self._retry.operator_present(elapsed, master.operator_present, master.clutch,
                                               self._following)
        if self._retry.presses != presses:
            self.get_logger().warning("console was not following: pressed operator-present "
                                      "again")
        pedals = (master.clutch, present)
        if pedals[0] != self._pedals[0]:
            self._clutch_pub.publish(Bool(data=master.clutch))
        if pedals[1] != self._pedals[1]:
            self._present_pub.publish(Bool(data=present))
        self._pedals = pedals


def main(args=None):
    run_node("virtual_surgeon", VirtualSurgeonNode, args)


if __name__ == "__main__":
    main()
