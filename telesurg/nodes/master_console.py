"""master_console: the surgeon's side of teleoperation.

Reads the master device (/mtm/measured_cp, /mtm/gripper/measured_js) and pedals
(/console/clutch, /console/operator_present), maps master motion onto the arm incrementally
(scale, clutch, tremor filter, step limit) and streams /psm/servo_cp and /psm/jaw/servo_jp.
Works unchanged with a real CRTK device driver publishing /mtm/measured_cp.

Follows only while the arm's /psm/operating_state (bridged from the patient site) is ENABLED:
any other state stops following, and engaging again needs the operator-present pedal released
and pressed once the arm is ENABLED (both poses are then captured afresh, so nothing jumps).

One mapping update per master sample (the device's own rate paces the commands); a slower
watchdog stops following when the device or the arm goes silent. /console/following is first
published once the console has both the master and the arm pose, i.e. is ready to engage.
"""

from __future__ import annotations

import math

from crtk_msgs.msg import OperatingState as OperatingStateMessage
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from telesurg.arm.kinematics import BASE_FRAME, JAW_JOINT_NAME
from telesurg.contract import topics
from telesurg.contract.states import OperatingState
from telesurg.master.teleop import IDLE, MasterInput, StallGuard, TeleopConfig, TeleopMapping
from telesurg.ros.loop import NodeLoop
from telesurg.ros.messages import fill_pose, is_valid_stamp, pose_to_matrix
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription

#: How often the console checks that the master device and the arm still report.
WATCHDOG_PERIOD_S = 0.02


class MasterConsoleNode(Node):
    def __init__(self):
        super().__init__("master_console")
        p = declare_parameters(self, "master_console")
        self.mapping = TeleopMapping(TeleopConfig.from_parameters(vars(p)))
        self._master_timeout = p.master_timeout_ms / 1000.0
        self._arm_timeout = p.arm_timeout_ms / 1000.0
        self._master = None       # (4x4 pose, arrival time)
        self._arm = None          # (4x4 pose, arrival time)
        self._gripper = 0.0
        self._arm_jaw = 0.0
        self._clutch = False
        self._present = False
        # /psm/operating_state, None until heard: nothing engages until ENABLED.
        self._arm_state: OperatingState | None = None
        subscription(self, topics.MTM_MEASURED_CP, self._on_master)
        subscription(self, topics.MTM_GRIPPER_MEASURED_JS, self._on_gripper)
        subscription(self, topics.CONSOLE_CLUTCH, self._on_clutch)
        subscription(self, topics.CONSOLE_OPERATOR_PRESENT, self._on_present)
        subscription(self, topics.PSM_MEASURED_CP, self._on_arm)
        subscription(self, topics.PSM_MEASURED_JS, self._on_arm_js)
        subscription(self, topics.PSM_OPERATING_STATE, self._on_operating_state)
        self._servo_pub = publisher(self, topics.PSM_SERVO_CP)
        self._jaw_pub = publisher(self, topics.PSM_JAW_SERVO_JP)
        self._following_pub = publisher(self, topics.CONSOLE_FOLLOWING)
        self._servo = PoseStamped()
        self._servo.header.frame_id = BASE_FRAME
        self._jaw = JointState(name=[JAW_JOINT_NAME])
        self._following = None
        self._stall_guard = StallGuard(WATCHDOG_PERIOD_S, self._now())
        self.loop = NodeLoop(self)
        self.loop.every(WATCHDOG_PERIOD_S, self._watch_inputs)
        self.get_logger().info(
            f"master_console for a {p.rate_hz:.0f} Hz master, scale {p.scale}, tremor filter "
            f"{'on' if p.tremor_filter else 'off'}; press operator-present to engage")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_master(self, msg: PoseStamped) -> None:
        if is_valid_stamp(msg.header.stamp):
            self._master = (pose_to_matrix(msg.pose), self._now())
            self._update()

    def _on_gripper(self, msg: JointState) -> None:
        if msg.position:
            self._gripper = msg.position[0]

    def _on_clutch(self, msg: Bool) -> None:
        self._clutch = msg.data

    def _on_present(self, msg: Bool) -> None:
        self._present = msg.data

    def _on_arm(self, msg: PoseStamped) -> None:
        if is_valid_stamp(msg.header.stamp):
            self._arm = (pose_to_matrix(msg.pose), self._now())

    def _on_operating_state(self, msg: OperatingStateMessage) -> None:
        state = OperatingState.parse(msg.state)
        if state != self._arm_state:
            self.get_logger().info(f"arm operating state: {msg.state}")
        self._arm_state = state

    def _on_arm_js(self, msg: JointState) -> None:
        if JAW_JOINT_NAME in msg.name:
            self._arm_jaw = msg.position[msg.name.index(JAW_JOINT_NAME)]

    def _watch_inputs(self) -> None:
        now = self._now()
        if not self._stall_guard.may_judge(now):
            self.get_logger().info(
                f"watchdog ran late: this console was stalled; judging the inputs after the "
                f"samples queued meanwhile (stalls so far: {self._stall_guard.deferred})",
                throttle_duration_sec=5.0)
            return
        silent = self._silent_input(now)
        if silent and self.mapping.following:
            self.mapping.disengage(silent)
            self.get_logger().warning(f"stopped following: {silent}")
        if silent and self._following is not None:
            self._publish_following(False)

    def _update(self) -> None:
        if self._silent_input(self._now()):
            return
        if self._arm_state is not OperatingState.ENABLED:
            # Whatever the pedals do meanwhile, nothing engages; once ENABLED, the mapping
            # (IDLE) engages on a fresh press of the operator-present pedal.
            if self.mapping.state != IDLE:
                self.mapping.disengage(f"arm {self._arm_state}")
                self.get_logger().warning(f"stopped following: arm {self._arm_state}")
            self._publish_following(False)
            return
        master_pose = self._master[0]
        command = self.mapping.update(
            MasterInput(position=master_pose[:3, 3], rotation=master_pose[:3, :3],
                        gripper=self._gripper, clutch=self._clutch,
                        operator_present=self._present),
            self._arm[0], self._arm_jaw)
        if command.event:
            self.get_logger().info(f"teleoperation: {command.event}")
        if command.goal is not None:
            stamp = self.get_clock().now().to_msg()
            self._servo.header.stamp = stamp
            fill_pose(self._servo.pose, command.goal)
            self._servo_pub.publish(self._servo)
            if command.jaw is not None and math.isfinite(command.jaw):
                self._jaw.header.stamp = stamp
                self._jaw.position = [command.jaw]
                self._jaw_pub.publish(self._jaw)
        self._publish_following(command.following)

    def _silent_input(self, now: float) -> str:
        if self._master is None or now - self._master[1] > self._master_timeout:
            return "master device silent"
        if self._arm is None or now - self._arm[1] > self._arm_timeout:
            return "arm pose not received"
        return ""

    def _publish_following(self, following: bool) -> None:
        if following != self._following:
            self._following = following
            self._following_pub.publish(Bool(data=following))


def main(args=None):
    run_node("master_console", MasterConsoleNode, args)


if __name__ == "__main__":
    main()
