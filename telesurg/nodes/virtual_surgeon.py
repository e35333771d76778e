"""virtual_surgeon: stands in for a haptic master device and the console pedals.

Performs a task (suturing, figure8) with physiological tremor and clutch-and-reposition
events, seeded and repeatable, publishing what a CRTK master driver and pedals publish. The
task clock starts once the console listens on every topic and reports that it is ready to
engage (it publishes /console/following once it has the master and the arm pose), as a surgeon
looks at the console before pressing the operator-present pedal.
"""

from __future__ import annotations

from rclpy.node import Node
from std_msgs.msg import Bool

from telesurg.contract import topics
from telesurg.master.surgeon import PresenceRetry, VirtualSurgeon
from telesurg.ros.loop import NodeLoop
from telesurg.ros.master_device import MasterDeviceOutput
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import subscription


class VirtualSurgeonNode(Node):
    def __init__(self):
        super().__init__("virtual_surgeon")
        p = declare_parameters(self, "virtual_surgeon")
        self.surgeon = VirtualSurgeon(p.task, p.seed, tremor_amplitude_m=p.tremor_amplitude_m)
        self.device = MasterDeviceOutput(self)
        self._console_ready = False
        self._following = False
        self._retry = PresenceRetry()
        subscription(self, topics.CONSOLE_FOLLOWING, self._on_console)
        self._start = None
        self.loop = NodeLoop(self)
        self.loop.every(1.0 / p.rate_hz, self._tick)
        self.get_logger().info(f"virtual surgeon: task {p.task}, seed {p.seed}; waiting for the "
                               "console to be ready")

    def _on_console(self, msg: Bool) -> None:
        self._console_ready = True
        self._following = msg.data

    def _ready(self) -> bool:
        return self._console_ready and self.device.matched()

    def _tick(self) -> None:
        now = self.get_clock().now()
        if self._start is None and self._ready():
            self._start = now.nanoseconds * 1e-9
            self.get_logger().info("console ready: task started")
        elapsed = 0.0 if self._start is None else now.nanoseconds * 1e-9 - self._start
        master = self.surgeon.sample(elapsed)
        presses = self._retry.presses
        present = self._retry.operator_present(elapsed, master.operator_present, master.clutch,
                                               self._following)
        if self._retry.presses != presses:
            self.get_logger().warning("console was not following: pressed operator-present "
                                      "again")
        self.device.publish(now.to_msg(), master.position, master.rotation, master.gripper,
                            master.clutch, present)


def main(args=None):
    run_node("virtual_surgeon", VirtualSurgeonNode, args)


if __name__ == "__main__":
    main()
