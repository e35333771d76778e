"""arm_controller: /psm/servo_cp and /psm/jaw/servo_jp in, joint commands to the arm out.

Follows commands only while /psm/operating_state (the safety supervisor's, repeated as its
heartbeat) says ENABLED; otherwise, or when it stops, holds where the arm is.

The arm (parameter hardware):
- ros2_control: one control tick per /joint_states message, as a ros2_control update loop reads,
  updates and writes; the command goes out on /forward_position_controller/commands (Gazebo, the
  simulator node, a real arm).
- mujoco (the default): the MuJoCo simulation of the URDF runs in this node, read-update-write in
  one tick at rate_hz, like ros2_control's controller manager with its hardware in process: no
  topic hop between controller and arm. The commands are still published every tick, and the
  arm's /joint_states at state_rate_hz, so recordings and observers see the same topics either
  way.

Publishes /forward_position_controller/commands (ros2_control convention, JOINT_NAMES order),
and the arm's /psm/measured_cp and /psm/measured_js (stamped when the arm measured its joints,
the /joint_states stamp) and /psm/setpoint_cp (stamped when commanded). Whenever it starts or
stops holding, or holds for another cause, it says so on /diagnostics, stamped with the tick
that decided it, with the cause as key-values (telesurg.contract.states: holding, hold_cause,
operating_state), which the session figures read.
"""

from __future__ import annotations

import time

import numpy as np
from crtk_msgs.msg import OperatingState
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, Header

from telesurg.arm.kinematics import BASE_FRAME, HOME_POSITIONS, JOINT_NAMES, forward
from telesurg.arm.simulation import ArmSimulation, RealTimeArm
from telesurg.contract import topics
from telesurg.contract.fields import set_stamp_ns, stamp_ns
from telesurg.contract.resources import arm_urdf
from telesurg.contract.states import (
    ARM_CONTROLLER_STATUS,
    HOLD_CAUSE_KEY,
    HOLDING_KEY,
    OPERATING_STATE_KEY,
)
from telesurg.nodes.simulator import advance, fill_joint_states
from telesurg.patient.arm_control import ARM_JOINTS, ArmController, ArmControllerConfig
from telesurg.ros.loop import NodeLoop
from telesurg.ros.messages import fill_pose, is_valid_stamp, pose_to_matrix
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription

#: How often the controller checks that the arm still reports its joint states.
WATCHDOG_PERIOD_S = 0.05


class ArmControllerNode(Node):
    def __init__(self):
        super().__init__("arm_controller")
        p = declare_parameters(self, "arm_controller")
        self.core = ArmController(ArmControllerConfig.from_parameters(vars(p)))
        self._joint_order: tuple[list[str], np.ndarray] | None = None
        self._velocities = np.zeros(len(JOINT_NAMES))
        self._last_refusal = ""
        self._measured_ns = 0  # when the arm measured its joints (CRTK: measured_ stamps)
        self._last_hold_reason = None
        subscription(self, topics.PSM_SERVO_CP, self._on_servo_cp)
        subscription(self, topics.PSM_JAW_SERVO_JP, self._on_jaw)
        subscription(self, topics.PSM_OPERATING_STATE, self._on_operating_state)
        self._command_pub = publisher(self, topics.FORWARD_POSITION_COMMANDS)
        self._measured_cp_pub = publisher(self, topics.PSM_MEASURED_CP)
        self._setpoint_cp_pub = publisher(self, topics.PSM_SETPOINT_CP)
        self._measured_js_pub = publisher(self, topics.PSM_MEASURED_JS)
        self._diagnostics_pub = publisher(self, topics.DIAGNOSTICS)
        self._command = Float64MultiArray()
        self._measured_cp = PoseStamped()
        self._measured_cp.header.frame_id = BASE_FRAME
        self._setpoint_cp = PoseStamped()
        self._setpoint_cp.header.frame_id = BASE_FRAME
        self._measured_js = JointState(name=list(JOINT_NAMES))
        # States go out at their own, lower rate: they feed displays and the console's engage
        # capture, and every message costs the receivers CPU.
        self._state_period_ns = int(1e9 / p.state_rate_hz)
        self._next_state_ns = 0
        self._arm_silent = True  # until the first /joint_states
        self.loop = NodeLoop(self)
        self.loop.every(WATCHDOG_PERIOD_S, self._watch_arm)
        self.arm: RealTimeArm | None = None
        if p.hardware == "mujoco":
            urdf = p.urdf_path or str(arm_urdf())
            timestep = 1.0 / p.physics_rate_hz
            self.arm = RealTimeArm(ArmSimulation(urdf, timestep, HOME_POSITIONS), timestep,
                                   time.monotonic())
            self._arm_start_ns = time.time_ns()
            self._joint_states_pub = publisher(self, topics.JOINT_STATES)
            self._joint_state = JointState(name=list(JOINT_NAMES))
            self.loop.every(1.0 / p.rate_hz, self._mujoco_tick)
            ticks = f"MuJoCo arm ({urdf}) in this node, {p.rate_hz:.0f} ticks/s"
        else:
            subscription(self, topics.JOINT_STATES, self._on_joint_states)
            ticks = f"one tick per /joint_states (about {p.rate_hz:.0f} Hz)"
        self.get_logger().info(
            f"arm_controller: {ticks}, holding "
            f"until the safety supervisor says ENABLED and fresh servo commands arrive "
            f"(timeouts: commands {p.command_timeout_ms:.0f} ms, supervisor "
            f"{p.supervisor_timeout_ms:.0f} ms)")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_servo_cp(self, msg: PoseStamped) -> None:
        if not is_valid_stamp(msg.header.stamp):
            return
        refusal = self.core.on_servo_cp(pose_to_matrix(msg.pose), self._now())
        if refusal and refusal != self._last_refusal:
            self.get_logger().warning(f"servo_cp refused: {refusal}")
        self._last_refusal = refusal

    def _on_operating_state(self, msg: OperatingState) -> None:
        self.core.on_operating_state(msg.state, self._now())

    def _on_jaw(self, msg: JointState) -> None:
        if msg.position:
            self.core.on_jaw(msg.position[0], self._now())

    def _on_joint_states(self, msg: JointState) -> None:
        # msg.name is already a list: compare it as is, no copy per message.
        if self._joint_order is None or self._joint_order[0] != msg.name:
            missing = [name for name in JOINT_NAMES if name not in msg.name]
            if missing:
                self.get_logger().error(f"/joint_states lacks joints {missing}; ignored",
                                        throttle_duration_sec=5.0)
                return
            index = np.array([msg.name.index(name) for name in JOINT_NAMES])
            self._joint_order = (list(msg.name), index)
        index = self._joint_order[1]
        if len(msg.velocity) == len(msg.name):
            self._velocities = np.asarray(msg.velocity)[index]
        now = self.get_clock().now()
        self._measured_ns = (stamp_ns(msg) if is_valid_stamp(msg.header.stamp)
                             else now.nanoseconds)
        self.core.on_joint_states(np.asarray(msg.position)[index], now.nanoseconds * 1e-9)
        self._tick(now)

    def _mujoco_tick(self) -> None:
        """Read the simulated arm (the physics due by now), update, write: the same tick as
        for a /joint_states message, read from the simulation itself (its /joint_states
        message is made only when it is published)."""
        if not advance(self, self.arm):
            return
        now = self.get_clock().now()
        self._measured_ns = self._arm_start_ns + round(self.arm.elapsed_s * 1e9)
        self.core.on_joint_states(self.arm.sim.positions(), now.nanoseconds * 1e-9)
        self._tick(now)

    def _watch_arm(self) -> None:
        silent = self.core.arm_silent(self._now())
        if silent != self._arm_silent:
            self._arm_silent = silent
            if silent:
                self.get_logger().error("arm silent: no /joint_states, not commanding")
            else:
                self.get_logger().info("arm reporting /joint_states")

    def _tick(self, now) -> None:
        setpoint = self.core.tick(now.nanoseconds * 1e-9)
        if setpoint is not None:
            self._command.data = setpoint.tolist()
            self._command_pub.publish(self._command)
            if self.arm is not None:
                self.arm.sim.command(setpoint)
        # Reported after the arm has its command: a hold must not wait for its log line.
        if self.core.hold_reason != self._last_hold_reason:
            self._last_hold_reason = self.core.hold_reason
            self._report_hold(now)
        if setpoint is not None and now.nanoseconds >= self._next_state_ns:
            self._next_state_ns = now.nanoseconds + self._state_period_ns
            self._publish_states(now.to_msg())

    def _report_hold(self, now) -> None:
        """Log and publish that the arm started or stopped holding, or why it holds now."""
        core = self.core
        what = f"holding: {core.hold_reason}" if core.holding else "following servo commands"
        self.get_logger().info(what)
        values = {HOLDING_KEY: str(core.holding).lower(), HOLD_CAUSE_KEY: core.hold_cause or "",
                  OPERATING_STATE_KEY: core.operating_state or ""}
        # Stamped with this tick: when the arm was first commanded to hold (or follow).
        self._diagnostics_pub.publish(DiagnosticArray(
            header=Header(stamp=now.to_msg()),
            status=[DiagnosticStatus(
                level=DiagnosticStatus.OK, name=ARM_CONTROLLER_STATUS, hardware_id="psm",
                message=what, values=[KeyValue(key=k, value=v) for k, v in values.items()])]))

    def _publish_states(self, stamp) -> None:
        measured = self.core.measured
        set_stamp_ns(self._measured_cp, self._measured_ns)
        fill_pose(self._measured_cp.pose, forward(measured[:ARM_JOINTS]))
        self._measured_cp_pub.publish(self._measured_cp)
        self._setpoint_cp.header.stamp = stamp
        fill_pose(self._setpoint_cp.pose, self.core.setpoint_tip())
        self._setpoint_cp_pub.publish(self._setpoint_cp)
        set_stamp_ns(self._measured_js, self._measured_ns)
        self._measured_js.position = measured.tolist()
        if self.arm is not None:  # the MuJoCo arm's /joint_states, as joint_state_broadcaster
            fill_joint_states(self._joint_state, self.arm, self._arm_start_ns)
            self._joint_states_pub.publish(self._joint_state)
            self._velocities = np.asarray(self._joint_state.velocity)
        self._measured_js.velocity = self._velocities.tolist()
        self._measured_js_pub.publish(self._measured_js)


def main(args=None):
    run_node("arm_controller", ArmControllerNode, args)


if __name__ == "__main__":
    main()
