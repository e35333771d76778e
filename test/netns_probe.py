"""A site's probe for test_netns.py, run inside that site's network namespace, where DDS sees
only the namespace's loopback and so only that site's bridge.

    python netns_probe.py master|patient

Both roles print every /bridge/link_state message as a JSON line on stdout, with its arrival
time (time.monotonic(): CLOCK_MONOTONIC, the same clock in every network namespace) and the
bridge's overall state, link states, counters and link figures. The master probe publishes
/psm/servo_cp when told to on stdin; the patient probe records what arrives on /psm/servo_cp.
Commands, one JSON object a line on stdin:
    {"cmd": "stream", "count": N, "rate_hz": R}  master: publish N poses at R Hz
    {"cmd": "report"}                            patient: print the indices received so far
End of stdin stops the probe. Events printed: ready (the servo stream is matched), link_state,
stream_started, stream_done, received.
"""

import json
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from telesurg.contract.topics import Qos
from telesurg.ros.qos import qos_profile

SERVO_TOPIC = "/psm/servo_cp"
_print_lock = threading.Lock()


def emit(event: str, **fields) -> None:
    with _print_lock:
        print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def pose(i: int) -> PoseStamped:
    """The i-th command: a current stamp (the bridge may age commands), i in position.x."""
    message = PoseStamped()
    now_ns = time.time_ns()
    message.header.stamp.sec, message.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
    message.pose.position.x = i * 1e-6
    message.pose.orientation.w = 1.0
    return message


class Probe:
    def __init__(self, role: str):
        self.role = role
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"netns_probe_{role}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.node.create_subscription(DiagnosticArray, "/bridge/link_state",
                                      self._on_link_state, qos_profile(Qos.STATE))
        self.received: list[int] = []
        self._received_lock = threading.Lock()
        if role == "master":
            self.publisher = self.node.create_publisher(PoseStamped, SERVO_TOPIC,
                                                        qos_profile(Qos.COMMAND))
        else:  # best effort, as the bridge publishes commands; deep, to keep up with 500 Hz
            self.subscription = self.node.create_subscription(
                PoseStamped, SERVO_TOPIC, self._on_pose,
                QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.done = threading.Event()

    def matched(self) -> bool:
        if self.role == "master":
            return self.publisher.get_subscription_count() > 0
        return self.subscription.get_publisher_count() > 0

    def _on_link_state(self, message: DiagnosticArray) -> None:
        links, figures, overall, counters = {}, {}, None, {}
        for status in message.status:
            if status.hardware_id == "overall":
                overall = status.message
                counters = {v.key: int(v.value) for v in status.values if v.value.isdigit()}
            else:
                links[status.hardware_id] = status.message
                figures[status.hardware_id] = {v.key: v.value for v in status.values}
        emit("link_state", overall=overall, links=links, counters=counters, figures=figures)

    def _on_pose(self, message: PoseStamped) -> None:
        with self._received_lock:
            self.received.append(round(message.pose.position.x * 1e6))

    def stream(self, count: int, rate_hz: float) -> None:
        period = 1.0 / rate_hz
        start = time.monotonic()
        emit("stream_started", count=count)
        for i in range(count):
            self.publisher.publish(pose(i))
            delay = start + (i + 1) * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        emit("stream_done", count=count, duration_s=time.monotonic() - start)

    def read_commands(self) -> None:
        try:
            for line in sys.stdin:
                command = json.loads(line)
                if command["cmd"] == "stream":
                    self.stream(command["count"], command["rate_hz"])
                elif command["cmd"] == "report":
                    with self._received_lock:
                        received = list(self.received)
                    emit("received", indices=received)
                else:
                    emit("error", problem=f"unknown command {command!r}")
        finally:
            self.done.set()

    def run(self) -> None:
        threading.Thread(target=self.read_commands, daemon=True).start()
        was_matched = False
        while not self.done.is_set():
            self.executor.spin_once(timeout_sec=0.01)
            if not was_matched and self.matched():
                was_matched = True
                emit("ready")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def main() -> None:
    role = sys.argv[1]
    if role not in ("master", "patient"):
        sys.exit(f"usage: {sys.argv[0]} master|patient")
    probe = Probe(role)
    try:
        probe.run()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        probe.close()


if __name__ == "__main__":
    main()
