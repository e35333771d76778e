"""virtual_surgeon: stands in for a haptic master device and the console pedals.

Performs a task (suturing, figure8) with physiological tremor and clutch-and-reposition
events, seeded and repeatable, publishing what a CRTK master driver and pedals publish. The
task clock starts once the console listens on every topic and the arm reports its pose, as a
surgeon looks at the arm before pressing the operator-present pedal.
"""

from __future__ import annotations

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from telesurg.ros_support import STATE_QOS, STREAM_QOS, declare_parameters, fill_pose, run_node
from telesurg.rotations import homogeneous
from telesurg.surgeon import VirtualSurgeon

MASTER_FRAME = "mtm_base"


class VirtualSurgeonNode(Node):
    def __init__(self):
        super().__init__("virtual_surgeon")
        p = declare_parameters(self, "virtual_surgeon")
        self.surgeon = VirtualSurgeon(p.task, p.seed, tremor_amplitude_m=p.tremor_amplitude_m)
        self._pose_pub = self.create_publisher(PoseStamped, "/mtm/measured_cp", STREAM_QOS)
        self._gripper_pub = self.create_publisher(JointState, "/mtm/gripper/measured_js",
                                                  STREAM_QOS)
        self._clutch_pub = self.create_publisher(Bool, "/console/clutch", STATE_QOS)
        self._present_pub = self.create_publisher(Bool, "/console/operator_present", STATE_QOS)
        self._arm_seen = False
        self.create_subscription(PoseStamped, "/psm/measured_cp", self._on_arm, STREAM_QOS)
        self._start = None
        self._pose = PoseStamped()
        self._pose.header.frame_id = MASTER_FRAME
        self._gripper = JointState(name=["gripper"])
        self._pedals = (None, None)
        self.create_timer(1.0 / p.rate_hz, self._tick)
        self.get_logger().info(f"virtual surgeon: task {p.task}, seed {p.seed}; waiting for the "
                               "console and the arm")

    def _on_arm(self, msg: PoseStamped) -> None:
        self._arm_seen = True

    def _ready(self) -> bool:
        publishers = (self._pose_pub, self._gripper_pub, self._clutch_pub, self._present_pub)
        return self._arm_seen and all(pub.get_subscription_count() > 0 for pub in publishers)

    def _tick(self) -> None:
        now = self.get_clock().now()
        if self._start is None and self._ready():
            self._start = now.nanoseconds * 1e-9
            self.get_logger().info("console and arm ready: task started")
        elapsed = 0.0 if self._start is None else now.nanoseconds * 1e-9 - self._start
        master = self.surgeon.sample(elapsed)
        stamp = now.to_msg()
        self._pose.header.stamp = stamp
        fill_pose(self._pose.pose, homogeneous(master.rotation, master.position))
        self._pose_pub.publish(self._pose)
        self._gripper.header.stamp = stamp
        self._gripper.position = [float(master.gripper)]
        self._gripper_pub.publish(self._gripper)
        pedals = (master.clutch, master.operator_present)
        if pedals != self._pedals:
            if pedals[0] != self._pedals[0]:
                self._clutch_pub.publish(Bool(data=master.clutch))
            if pedals[1] != self._pedals[1]:
                self._present_pub.publish(Bool(data=master.operator_present))
            self._pedals = pedals


def main(args=None):
    run_node("virtual_surgeon", VirtualSurgeonNode, args)


if __name__ == "__main__":
    main()
