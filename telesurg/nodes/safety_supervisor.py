"""safety_supervisor: the arm's CRTK operating state at the patient site.

Watches the links (/bridge/link_state), the command stream (/psm/servo_cp: staleness, one-way
age from the console's stamp, tip steps), the console (/console/following and
/console/operator_present, bridged from the master site) and the arm (/psm/measured_js), and
takes operator commands on /psm/state_command. The rules are telesurg.patient.safety's; this
node only feeds them and publishes:

- /psm/operating_state (crtk_msgs/OperatingState: DISABLED, ENABLED, PAUSED, FAULT, is_homed,
  is_busy): on every change and in answer to every state command, accepted or refused, and
  repeated at heartbeat_rate_hz as the heartbeat the arm controller holds without. Its
  header.stamp increases strictly, as CRTK clients ignore a state not newer than the last;
- /safety/status: one JSON line with the state, the cause of the last transition, the causes
  that persist now, warnings, and the answer to the last state command (bridged back to the
  master site, where `telesurg state` and `telesurg status` read it);
- /diagnostics: the same as a DiagnosticStatus.
"""

from __future__ import annotations

import json
import time

from builtin_interfaces.msg import Time
from crtk_msgs.msg import OperatingState as OperatingStateMessage
from crtk_msgs.msg import StringStamped
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Header, String

from telesurg.arm.kinematics import ARM_JOINT_NAMES
from telesurg.contract import topics
from telesurg.contract.fields import stamp_ns, tip_position
from telesurg.contract.states import LINK_OVERALL_ID, SAFETY_SUPERVISOR_STATUS, OperatingState
from telesurg.patient.safety import SafetyConfig, SafetySupervisor
from telesurg.ros.loop import NodeLoop
from telesurg.ros.messages import is_valid_stamp
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription

STATUS_PERIOD_S = 0.5  # status and diagnostics repeat this often (and go out on any change)
LEVELS = {OperatingState.ENABLED: DiagnosticStatus.OK,
          OperatingState.DISABLED: DiagnosticStatus.OK,
          OperatingState.PAUSED: DiagnosticStatus.WARN,
          OperatingState.FAULT: DiagnosticStatus.ERROR}


class SafetySupervisorNode(Node):
    def __init__(self):
        super().__init__("safety_supervisor")
        p = declare_parameters(self, "safety_supervisor")
        self.core = SafetySupervisor.for_arm(SafetyConfig.from_parameters(vars(p)))
        self._last_command: dict | None = None
        self._commands_received = 0
        self._arm_index = None  # positions of ARM_JOINT_NAMES in /psm/measured_js
        self._next_status = 0.0
        self._last_stamp_ns = 0
        self._state_pub = publisher(self, topics.PSM_OPERATING_STATE)
        self._status_pub = publisher(self, topics.SAFETY_STATUS)
        self._diagnostics_pub = publisher(self, topics.DIAGNOSTICS)
        subscription(self, topics.BRIDGE_LINK_STATE, self._on_link_state)
        subscription(self, topics.PSM_SERVO_CP, self._on_servo_cp)
        subscription(self, topics.CONSOLE_FOLLOWING, self._on_following)
        subscription(self, topics.CONSOLE_OPERATOR_PRESENT, self._on_present)
        subscription(self, topics.PSM_MEASURED_JS, self._on_joints)
        subscription(self, topics.PSM_STATE_COMMAND, self._on_state_command)
        self.loop = NodeLoop(self)
        self.loop.every(1.0 / p.heartbeat_rate_hz, self._heartbeat)
        self.get_logger().info(
            f"safety_supervisor: {self.core.state}; pauses on link lost, commands stale "
            f"({p.command_timeout_ms:.0f} ms) or older than {p.max_command_age_ms:.0f} ms, "
            f"tip steps over {p.step_limit_mm} mm, joints within {p.joint_limit_margin:.0%} of "
            "a limit, operator presence lost; waiting for `enable`")

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    # Inputs --------------------------------------------------------------------------------

    def _feed(self, event, *args) -> None:
        transitions = event(self._now(), *args)
        if transitions:
            self._report(transitions)

    def _on_link_state(self, msg: DiagnosticArray) -> None:
        overall = next((s.message for s in msg.status if s.hardware_id == LINK_OVERALL_ID),
                       None)
        if overall is not None:
            self._feed(self.core.on_link_state, overall)

    def _on_servo_cp(self, msg: PoseStamped) -> None:
        if not is_valid_stamp(msg.header.stamp):
            return
        age_ms = (time.time_ns() - stamp_ns(msg)) * 1e-6  # needs the sites' clocks in step (PTP)
        self._feed(self.core.on_command, tip_position(msg), age_ms)

    def _on_following(self, msg: Bool) -> None:
        self._feed(self.core.on_following, msg.data)

    def _on_present(self, msg: Bool) -> None:
        self._feed(self.core.on_operator_present, msg.data)

    def _on_joints(self, msg: JointState) -> None:
        if self._arm_index is None or self._arm_index[0] != msg.name:
            try:
                self._arm_index = (list(msg.name),
                                   [msg.name.index(name) for name in ARM_JOINT_NAMES])
            except ValueError:
                self._arm_index = None
                self._feed(self.core.on_joint_states, [float("nan")])  # inconsistent: FAULT
                return
        self._feed(self.core.on_joint_states, [msg.position[i] for i in self._arm_index[1]])

    def _on_state_command(self, msg: StringStamped) -> None:
        command = msg.string.strip()
        result = self.core.command(self._now(), command)
        self._commands_received += 1
        self._last_command = {"command": command, "accepted": result.accepted,
                              "reason": result.reason, "number": self._commands_received}
        what = f"state command {command!r}: {result.reason}"
        if result.accepted:  # rclpy wants one severity per call site
            self.get_logger().info(what)
        else:
            self.get_logger().warning(what)
        # Answered with a fresh operating state either way: a CRTK client waits for one.
        self._report(result.transitions, answer=True)

    # Outputs -------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        transitions = self.core.update(self._now())
        self._report(transitions, heartbeat=True)

    def _report(self, transitions, heartbeat: bool = False, answer: bool = False) -> None:
        now = self._now()
        published = self._stamp()  # the state's time, on /psm/operating_state and /diagnostics
        state = str(self.core.state)
        if transitions or heartbeat or answer:
            self._publish(self._state_pub, OperatingStateMessage(
                header=Header(stamp=published), state=state, is_homed=self.core.is_homed,
                is_busy=False))
        # Logged once the arm controller has the state: a pause must not wait for its log line.
        for transition in transitions:
            self.get_logger().warning(
                f"{transition.previous} -> {transition.current}: {transition.cause}"
                f"{' (' + transition.detail + ')' if transition.detail else ''}")
        status_due = heartbeat and now >= self._next_status
        if status_due:
            self._next_status = now + STATUS_PERIOD_S
        if transitions or answer or status_due:
            # Built only when sent: the heartbeat repeats the state ten times as often.
            status = {"state": state, "is_homed": self.core.is_homed, "cause": self.core.cause,
                      "persisting": self.core.persisting_causes(now),
                      "faults": self.core.fault_conditions(now),
                      "warnings": self.core.warnings(now),
                      "last_command": self._last_command}
            self._publish(self._status_pub, String(data=json.dumps(status)))
            level = LEVELS[OperatingState(state)]
            self._publish(self._diagnostics_pub, DiagnosticArray(
                header=Header(stamp=published), status=[DiagnosticStatus(
                    level=level, name=SAFETY_SUPERVISOR_STATUS, hardware_id="psm",
                    message=state, values=[
                        KeyValue(key=key, value=value if isinstance(value, str)
                                 else json.dumps(value)) for key, value in status.items()])]))

    def _stamp(self):
        """The clock now, but always after the last stamp (two reports in one clock tick)."""
        stamp_ns = max(self.get_clock().now().nanoseconds, self._last_stamp_ns + 1)
        self._last_stamp_ns = stamp_ns
        return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)

    @staticmethod
    def _publish(publisher, message) -> None:
        publisher.publish(message)


def main(args=None):
    run_node("safety_supervisor", SafetySupervisorNode, args)


if __name__ == "__main__":
    main()
