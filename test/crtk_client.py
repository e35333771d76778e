"""A CRTK client as crtk_python_client is one, for the tests that drive launched sites."""

from __future__ import annotations

import time

TIMEOUT_S = 30.0


class CrtkClient:
    """What crtk_python_client (crtk/ral_ros2.py, crtk/utils.py) does with an arm's state, in
    this process: /psm/operating_state subscribed reliable and volatile (so a latched sample
    alone is never seen), /psm/state_command published transient local with depth 10, and
    after each command the states that follow waited on until one says what was expected."""

    def __init__(self, domain: int):
        import rclpy
        from crtk_msgs.msg import OperatingState, StringStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("crtk_client", context=self.context)
        self.states: list[tuple[int, str, bool, bool]] = []  # (stamp ns, state, homed, busy)
        self.node.create_subscription(OperatingState, "/psm/operating_state", self._on_state,
                                      QoSProfile(depth=10))
        self.commands = self.node.create_publisher(
            StringStamped, "/psm/state_command",
            QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._message = StringStamped
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _on_state(self, message) -> None:
        stamp = message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec
        self.states.append((stamp, message.state, message.is_homed, message.is_busy))

    def spin_until(self, condition, what: str, timeout_s: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"CRTK client: no {what} within {timeout_s} s; states "
                                     f"{self.states[-5:]}")
            self.executor.spin_once(timeout_sec=0.05)

    def command(self, text: str, expected) -> int:
        """Send a state command and wait for a later state that is `expected` (a predicate of
        (stamp, state, homed, busy)); returns the index of the states heard before it."""
        self.spin_until(lambda: self.commands.get_subscription_count() > 0 and self.states,
                        "match and first state")
        heard = len(self.states)
        message = self._message(string=text)
        message.header.stamp = self.node.get_clock().now().to_msg()
        self.commands.publish(message)
        self.spin_until(lambda: any(map(expected, self.states[heard:])),
                        f"expected state after {text!r}", 5.0)
        return heard

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
