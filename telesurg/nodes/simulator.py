"""simulator: MuJoCo physics of the arm URDF with position servos on every joint.

Subscribes /forward_position_controller/commands and publishes /joint_states: the interface
Gazebo with ros2_control offers (forward_position_controller + joint_state_broadcaster), so
the arm controller cannot tell which one it drives. Physics runs in real time.
"""

from __future__ import annotations

import time

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from telesurg.arm.kinematics import HOME_POSITIONS, JOINT_NAMES
from telesurg.arm.simulation import ArmSimulation
from telesurg.contract import topics
from telesurg.contract.fields import set_stamp_ns
from telesurg.contract.resources import arm_urdf
from telesurg.ros.loop import NodeLoop
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription

#: Most physics steps taken in one loop tick: a stalled process catches up (the real arm would
#: have moved meanwhile) but beyond a quarter second it drops time rather than race.
MAX_CATCH_UP_STEPS = 250


class SimulatorNode(Node):
    def __init__(self):
        super().__init__("simulator")
        p = declare_parameters(self, "simulator")
        urdf = p.urdf_path or str(arm_urdf())
        self.sim = ArmSimulation(urdf, 1.0 / p.physics_rate_hz, HOME_POSITIONS)
        self._timestep = 1.0 / p.physics_rate_hz
        self._start = time.monotonic()
        self._start_ns = self.get_clock().now().nanoseconds
        self._steps_done = 0
        self._dropped_steps = 0
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
        self.sim.command(msg.data)

    def _step(self) -> None:
        due = int((time.monotonic() - self._start) / self._timestep) - self._steps_done
        if due <= 0:
            return
        if due > MAX_CATCH_UP_STEPS:
            self._dropped_steps += due - MAX_CATCH_UP_STEPS
            self.get_logger().warning(
                f"simulation fell behind real time; dropped {self._dropped_steps} steps so far",
                throttle_duration_sec=5.0)
            self._steps_done += due - MAX_CATCH_UP_STEPS
            due = MAX_CATCH_UP_STEPS
        self.sim.step(due)
        positions, velocities = self.sim.positions(), self.sim.velocities()
        efforts = self.sim.efforts()
        self._steps_done += due
        msg = self._joint_state
        # Stamp with the instant the physics state stands for, not when this thread got to
        # publish it: under CPU load the two can differ by milliseconds.
        stamp_ns = self._start_ns + round(self._steps_done * self._timestep * 1e9)
        set_stamp_ns(msg, stamp_ns)
        msg.position = positions.tolist()
        msg.velocity = velocities.tolist()
        msg.effort = efforts.tolist()
        self._publisher.publish(msg)


def main(args=None):
    run_node("simulator", SimulatorNode, args)


if __name__ == "__main__":
    main()
