"""A site's probe for session_harness.py: a process on one site's DDS domain (inside the site's
network namespace when it has one) that records topics and publishes for the test.

    python site_probe.py '{"name": "patient", "topics": [[TOPIC, TYPE, QOS], ...]}'

Its own process, not a thread of the test: Fast DDS works out once per process which host it
runs on (from the network interfaces it sees first), and takes a participant that says it is
on another host to be unreachable over loopback, which is all a session's DDS uses. So a probe
inside a network namespace must be a process that started there.

stdout, one line each:
    READY                               subscriptions made
    R INDEX ARRIVAL_NS BASE64_CDR       a message on topic INDEX and its middleware receive time
    A {"id": N, "result": ...}          the answer to request N (or "error")
stdin, one JSON request a line (end of input stops the probe):
    {"id": N, "op": "publisher", "topic": T, "type": TYPE, "qos": QOS}
    {"id": N, "op": "publish", "topic": T, "data": BASE64_CDR}    result: time.time_ns() before
    {"id": N, "op": "count", "topic": T}                          matched subscriptions
    {"id": N, "op": "drop", "topic": T}                           destroy the publisher
QOS: one of the names in QOS below.
"""

import base64
import json
import os
import queue
import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from telesurg.contract.topics import Qos
from telesurg.ros.messages import message_class
from telesurg.ros.qos import qos_profile

QOS = {
    # Recording: deep, so that a burst while the probe waits for a core is not lost.
    "record_state": QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL),
    "record_reliable": QoSProfile(depth=2000, reliability=ReliabilityPolicy.RELIABLE),
    "record_best_effort": QoSProfile(depth=2000, reliability=ReliabilityPolicy.BEST_EFFORT),
    # Publishing, as the nodes do.
    "state": qos_profile(Qos.STATE),
    "stream": qos_profile(Qos.COMMAND),
    "event": QoSProfile(depth=10),  # reliable, volatile: /psm/state_command
}
_print_lock = threading.Lock()


def emit(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Probe:
    def __init__(self, config: dict):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"site_probe_{config['name']}_{os.getpid()}",
                                      context=self.context)
        for index, (topic, type_name, qos) in enumerate(config["topics"]):
            self.node.create_subscription(message_class(type_name), topic, self._keeper(index),
                                          QOS[qos], raw=True)
        self.publishers = {}
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.done = threading.Event()
        self.wake = self.node.create_guard_condition(self._serve)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    @staticmethod
    def _keeper(index: int):
        def keep(data: bytes, info) -> None:
            # The middleware's receive time, not this callback's: the executor may take a
            # backlog late, and a message must not seem to arrive after what followed it.
            arrival = info["received_timestamp"] or time.time_ns()
            emit(f"R {index} {arrival} {base64.b64encode(data).decode()}")
        return keep

    def _serve(self) -> None:
        """Requests run here, in the executor's thread."""
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return
            try:
                answer = {"id": request["id"], "result": self._do(request)}
            except Exception as error:  # noqa: BLE001 - reported to the test
                answer = {"id": request["id"], "error": repr(error)}
            emit("A " + json.dumps(answer))

    def _do(self, request: dict):
        op, topic = request["op"], request["topic"]
        if op == "publisher":
            if topic not in self.publishers:
                self.publishers[topic] = self.node.create_publisher(
                    message_class(request["type"]), topic, QOS[request["qos"]])
            return None
        if op == "publish":
            data = base64.b64decode(request["data"])
            before = time.time_ns()
            self.publishers[topic].publish(data)
            return before
        if op == "count":
            return self.publishers[topic].get_subscription_count()
        if op == "drop":
            self.node.destroy_publisher(self.publishers.pop(topic))
            return None
        raise ValueError(f"unknown op {op!r}")

    def read_requests(self) -> None:
        try:
            for line in sys.stdin:
                self.requests.put(json.loads(line))
                self.wake.trigger()
        finally:
            self.done.set()
            self.wake.trigger()

    def run(self) -> None:
        threading.Thread(target=self.read_requests, daemon=True).start()
        emit("READY")
        while not self.done.is_set():
            self.executor.spin_once(timeout_sec=0.1)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def main() -> None:
    probe = Probe(json.loads(sys.argv[1]))
    try:
        probe.run()
    except (KeyboardInterrupt, ExternalShutdownException, BrokenPipeError):
        pass
    finally:
        probe.close()


if __name__ == "__main__":
    main()
