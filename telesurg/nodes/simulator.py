"""simulator: MuJoCo physics of the arm URDF with position servos on every joint.

Subscribes /forward_position_controller/commands and publishes /joint_states: the interface
Gazebo with ros2_control offers (forward_position_controller + joint_state_broadcaster), so the
arm controller (hardware ros2_control) cannot tell which one it drives. Physics runs in real
time. The arm controller can also run this simulation itself (hardware mujoco, the default),
without the two topic hops per control tick.
"""

from __future__ import annotations

import time

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from telesurg.arm.kinematics import HOME_POSITIONS, JOINT_NAMES
from telesurg.arm.simulation import ArmSimulation, RealTimeArm
from telesurg.contract import topics
from telesurg.contract.fields import set_stamp_ns
from telesurg.contract.resources import arm_urdf
from telesurg.ros.loop import NodeLoop
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription


class SimulatorNode(Node):
    def __init__(self):
        super().__init__("simulator")
        p = declare_parameters(self, "simulator")
        urdf = p.urdf_path or str(arm_urdf())
        timestep = 1.0 / p.physics_rate_hz
        self.arm = RealTimeArm(ArmSimulation(urdf, timestep, HOME_POSITIONS), timestep,
                               time.monotonic())
        self._start_ns = time.time_ns()
        subscription(self, topics.FORWARD_POSITION_COMMANDS, self._on_command)
        self._publisher = publisher(self, topics.JOINT_STATES)
        self._joint_state = JointState(name=list(JOINT_NAMES))
        # One loop tick per /joint_states message, stepping the physics that is due by then.
        self.loop = NodeLoop(self)
        self.loop.every(1.0 / p.publish_rate_hz, self._step)
        self.get_logger().info(f"MuJoCo simulation of {urdf} at {p.physics_rate_hz:.0f} Hz")

    def _on_command(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != len(JOINT_NAMES):
            self.get_logger().error(
                f"command has {len(msg.data)} values, expected {len(JOINT_NAMES)} "
                f"({', '.join(JOINT_NAMES)}); ignored", throttle_duration_sec=5.0)
            return
        self.arm.sim.command(msg.data)

    def _step(self) -> None:
        if not advance(self, self.arm):
            return
        fill_joint_states(self._joint_state, self.arm, self._start_ns)
        self._publisher.publish(self._joint_state)


def advance(node: Node, arm: RealTimeArm) -> int:
    """Run the arm's physics due by now (how many steps ran); warn (throttled) when this
    advance had to drop steps, the simulation having fallen behind real time."""
    dropped = arm.dropped_steps
    ran = arm.advance(time.monotonic())
    if arm.dropped_steps != dropped:
        node.get_logger().warning(
            f"simulation fell behind real time; dropped {arm.dropped_steps} steps so far",
            throttle_duration_sec=5.0)
    return ran


def fill_joint_states(message: JointState, arm: RealTimeArm, start_ns: int) -> None:
    """/joint_states of the simulated arm, stamped with the instant the physics state stands
    for, not when this thread got to publish it (under CPU load the two differ by ms)."""
    set_stamp_ns(message, start_ns + round(arm.elapsed_s * 1e9))
    message.position = arm.sim.positions().tolist()
    message.velocity = arm.sim.velocities().tolist()
    message.effort = arm.sim.efforts().tolist()


def main(args=None):
    run_node("simulator", SimulatorNode, args)


if __name__ == "__main__":
    main()
