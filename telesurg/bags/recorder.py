"""Recording a site's contract topics into a rosbag2 bag (`telesurg record`, and the demo).

One bag per site, because the sites' DDS domains are separate. Every message is written as its
CDR bytes with the time it was received (as `ros2 bag record` does); a topic is added to the
bag when its first message arrives, with the QoS its publishers offer, so that a replay can
offer the same.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys
import threading
import time
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile

from telesurg.bags.storage import BagError, BagWriter, make_qos
from telesurg.contract.topics import Qos, site_topics, topic_named
from telesurg.ros.messages import message_class
from telesurg.ros.node import freeze_start_up_objects
from telesurg.ros.qos import qos_profile
from telesurg.session.processes import teardown_limit

#: Deep queues, so that a busy moment loses nothing.
_DEPTH = 1000
#: Pause after each round of takes: about 100 wake-ups a second at most, whatever the rate.
BATCH_WAIT_S = 0.01
RECORDER_NODE_NAME = "telesurg_recorder"


def subscription_qos(topic: str) -> QoSProfile:
    """What the recorder asks for: the QoS the topic's publishers offer in the contract
    (streams best effort, which a reliable reader would not match; states transient local, so
    the recording starts with the current state), deep; another topic reliable, volatile."""
    contract = topic_named(topic)
    return qos_profile(contract.qos if contract else Qos.EVENT, depth=_DEPTH)


def offered_qos(node: Node, topic: str) -> list:
    """The QoS profiles the topic's publishers offer, in rosbags' form (for metadata.yaml)."""
    return [make_qos(q.history.value, q.depth, q.reliability.value, q.durability.value,
                     q.liveliness.value)
            for q in (info.qos_profile for info in node.get_publishers_info_by_topic(topic))]


class SiteRecorder:
    """A node that writes a site's topics into a new bag as their messages arrive.

    It takes messages straight from the middleware in a loop of its own (run), not through an
    rclpy executor: that costs a quarter of the CPU per message, which matters at the sites'
    thousands of messages a second on a small machine, and gives each message's reception
    time as the middleware stamped it (what rosbag2 records too), exact even when the loop
    runs late.
    """

    def __init__(self, context, path: Path, topics: dict[str, str], storage: str = "mcap"):
        self.node = Node(RECORDER_NODE_NAME, context=context)
        self.bag = BagWriter(path, storage)
        self.topics = topics
        self._subscriptions = {
            topic: self.node.create_subscription(message_class(type_name), topic,
                                                 _taken_by_run, subscription_qos(topic),
                                                 raw=True)
            for topic, type_name in topics.items()}
        self._states = {topic for topic in topics
                        if subscription_qos(topic).durability == DurabilityPolicy.TRANSIENT_LOCAL}

    def run(self, stop: threading.Event | None = None, poll_s: float = 0.1) -> None:
        """Write messages as they arrive until stop is set (checked every poll_s; then what has
        arrived is written too) or Ctrl-C (KeyboardInterrupt), then close the bag."""
        stop = stop or threading.Event()
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        subscriptions = list(self._subscriptions.items())
        try:
            with contextlib.ExitStack() as handles:
                for _, subscription in subscriptions:
                    handles.enter_context(subscription.handle)
                handles.enter_context(self.node.context.handle)
                wait_set = _rclpy.WaitSet(len(subscriptions), 0, 0, 0, 0, 0,
                                          self.node.context.handle)
                while True:
                    stopping = stop.is_set()
                    wait_set.clear_entities()
                    for _, subscription in subscriptions:
                        wait_set.add_subscription(subscription.handle)
                    wait_set.wait(0 if stopping else int(poll_s * 1e9))
                    ready = set(wait_set.get_ready_entities("subscription"))
                    for topic, subscription in subscriptions:
                        if subscription.handle.pointer in ready:
                            self._take_all(topic, subscription)
                    if stopping:
                        break
                    self.bag.checkpoint_if_due()
                    # Let messages gather: a wake-up costs more than taking a message, and
                    # each message keeps the time the middleware received it.
                    stop.wait(BATCH_WAIT_S)
        finally:
            self.bag.close()

    def _take_all(self, topic: str, subscription) -> None:
        while (taken := subscription.handle.take_message(subscription.msg_type, True)):
            data, info = taken
            if not self.bag.has_topic(topic):
                self.bag.add_topic(topic, self.topics[topic], offered_qos(self.node, topic))
            stamp = info["received_timestamp"] or time.time_ns()
            # A state is recorded when it was set: the one a late-joining recorder is handed
            # on matching its publisher would otherwise seem to change only then (a replay
            # then found no pedal state in force at its start).
            if topic in self._states and 0 < info["source_timestamp"] < stamp:
                stamp = info["source_timestamp"]
            self.bag.write(topic, stamp, data)


def _taken_by_run(_message) -> None:
    """The subscriptions' callback, never called: SiteRecorder.run takes their messages."""


def run_record(site: str, out: Path, storage: str, domain: int | None,
               video: bool = False) -> int:
    """`telesurg record`: record the site's contract topics (with video, the endoscope's too)
    until Ctrl-C or SIGTERM."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    faulthandler.enable()  # a native crash leaves the threads' Python stacks on stderr
    # Ctrl-C and SIGTERM ask the loop to stop between messages: an exception raised in the middle
    # of writing one (Python's default) left a chunk whose messages disagreed with its index.
    stop = threading.Event()

    def ask_to_stop(*_) -> None:
        if stop.is_set():  # asked before and still running: say where it is stuck
            faulthandler.dump_traceback(all_threads=True)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, ask_to_stop)
    recorded = site_topics(site, video)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    try:
        recorder = SiteRecorder(context, out, recorded, storage)
    except BagError as error:
        print(f"telesurg record: {error}", file=sys.stderr)
        rclpy.shutdown(context=context)
        return 2
    print(f"recording the {site} site's {len(recorded)} contract topics into {out} "
          f"({storage}); Ctrl-C to stop", flush=True)
    freeze_start_up_objects()
    try:
        recorder.run(stop)
        counts = recorder.bag.counts
        heard = ", ".join(f"{topic} {n}" for topic, n in sorted(counts.items())) or "nothing"
        print(f"closed {out}: {sum(counts.values())} messages ({heard})", flush=True)
    finally:
        # The bag is closed: a node destroy that hangs (README, Known defects) loses nothing.
        with teardown_limit():
            recorder.node.destroy_node()
            rclpy.try_shutdown(context=context)
    return 0
