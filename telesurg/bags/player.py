"""`telesurg replay`: publish a recorded bag with its original timing and QoS.

As `ros2 bag play`, on a machine without rosbag2: each topic is published with the QoS its
recorded publishers offered, each message at its recorded offset from the start (divided by
--rate). Starting part-way (--start), every transient-local topic (a state: pedals, following,
operating state) is first given its last value before the start, as a subscriber joining the
live session then would have received it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rosbags.interfaces import QosDurability, QosHistory

from telesurg.bags.storage import BagError, BagReader, BagTopic


def latched_before(reader: BagReader, topics: list[str], start_ns: int) -> list[tuple[str, bytes]]:
    """The last message before start_ns of each transient-local topic, in time order."""
    states = [t for t in topics if _transient_local(reader.topics[t])]
    last: dict[str, tuple[int, bytes]] = {}
    if states and start_ns > reader.start_ns:
        for topic, stamp, data in reader.messages(states):
            if stamp >= start_ns:
                break
            last[topic] = (stamp, data)
    return [(topic, data) for topic, (_, data) in sorted(last.items(), key=lambda kv: kv[1][0])]


def _transient_local(topic: BagTopic) -> bool:
    return any(q.durability == QosDurability.TRANSIENT_LOCAL for q in topic.qos)


def schedule(messages: Iterator[tuple[str, int, bytes]], start_ns: int, rate: float,
             play_start: float) -> Iterator[tuple[float, str, bytes]]:
    """(monotonic time to publish, topic, data) for messages at or after start_ns."""
    for topic, stamp, data in messages:
        if stamp >= start_ns:
            yield play_start + (stamp - start_ns) * 1e-9 / rate, topic, data


def check_topics(reader: BagReader, wanted: list[str] | None) -> list[str]:
    """The topics to play: those asked for (each must be in the bag), else all of them."""
    if not wanted:
        return list(reader.topics)
    missing = [t for t in wanted if t not in reader.topics]
    if missing:
        raise BagError(f"{reader.path}: no topic {', '.join(missing)} in this bag (it has "
                       f"{', '.join(sorted(reader.topics))})")
    return wanted


def publisher_qos(topic: BagTopic):
    """The QoS the recorded publishers offered (the first of them). Discovery does not carry
    history and depth, so a recording (telesurg's or rosbag2's) says unknown and 0: those
    become keep-last 1, the latest wins, as every telesurg publisher keeps. A policy the
    recording does not know (or manual-by-node liveliness, which ROS 2 no longer offers) is
    left to the middleware's default."""
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        LivelinessPolicy,
        QoSProfile,
        ReliabilityPolicy,
    )

    if not topic.qos:
        return QoSProfile(depth=10)
    offered = topic.qos[0]

    def policy(kind, recorded, usable):
        return kind(recorded.value) if recorded.name in usable else kind.SYSTEM_DEFAULT

    return QoSProfile(
        history=policy(HistoryPolicy, offered.history, ("KEEP_LAST", "KEEP_ALL"))
        if offered.history != QosHistory.UNKNOWN else HistoryPolicy.KEEP_LAST,
        depth=max(1, offered.depth),
        reliability=policy(ReliabilityPolicy, offered.reliability, ("RELIABLE", "BEST_EFFORT")),
        durability=policy(DurabilityPolicy, offered.durability, ("TRANSIENT_LOCAL", "VOLATILE")),
        liveliness=policy(LivelinessPolicy, offered.liveliness, ("AUTOMATIC", "MANUAL_BY_TOPIC")))


class Player:
    """Publishes topics of an open bag on a node, from start_s into the bag, at rate."""

    HOLD_PERIOD_S = 0.004
    #: How long the publishers stay after the last message: it may still be on its way (in
    #: shared memory, it is lost when its publisher goes).
    LINGER_S = 0.5

    def __init__(self, node, reader: BagReader, topics: list[str], start_s: float = 0.0,
                 rate: float = 1.0,
                 intercept: dict[str, Callable[[bytes], None]] | None = None):
        """intercept: topics whose recorded messages go to a function instead of being
        published as they are (its owner publishes on self.publishers[topic] when it wants)."""
        from telesurg.ros.messages import message_class

        self.reader = reader
        self.topics = topics
        self.start_ns = reader.start_ns + int(start_s * 1e9)
        self.rate = rate
        self.intercept = intercept or {}
        self.position_ns = self.start_ns  # the bag time played up to
        self.played_at_ns: int | None = None  # the system time at which start_ns was played
        self.published = 0
        self._latched_published = False
        self.publishers = {t: node.create_publisher(message_class(reader.topics[t].type), t,
                                                    publisher_qos(reader.topics[t]))
                           for t in topics}

    def _publish(self, topic: str, data: bytes) -> None:
        if topic in self.intercept:
            self.intercept[topic](data)
            return
        self.publishers[topic].publish(data)
        self.published += 1

    #: After a publisher sees its subscriber, the subscriber may not yet see the publisher
    #: (discovery is two-way) and would drop what it sends meanwhile.
    MATCH_SETTLE_S = 0.5

    def wait_for_subscribers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self.publishers.values()):
                time.sleep(self.MATCH_SETTLE_S)
                return
            time.sleep(0.05)

    def hold(self, until) -> None:
        """Publish the states in force at the start and, every 4 ms, the first message of each
        other topic, until until() is true: a device switched on and held still while its
        listeners come up (DDS discovery on a busy machine takes seconds)."""
        self._publish_latched()
        first: dict[str, bytes] = {}
        streams = [t for t in self.topics if not _transient_local(self.reader.topics[t])]
        for topic, _, data in self.reader.messages(streams, self.start_ns):
            first.setdefault(topic, data)
            if len(first) == len(streams):
                break
        while not until():
            for topic, data in first.items():
                self._publish(topic, data)
            time.sleep(self.HOLD_PERIOD_S)

    def linger(self, timeout_s: float = 2.0) -> None:
        """Let the last messages reach the subscribers before the publishers are destroyed:
        reliable ones until acknowledged (within timeout_s), every one for LINGER_S."""
        from rclpy.duration import Duration

        for publisher in self.publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=timeout_s))
        time.sleep(self.LINGER_S)

    def _publish_latched(self) -> None:
        if not self._latched_published:
            self._latched_published = True
            for topic, data in latched_before(self.reader, self.topics, self.start_ns):
                self._publish(topic, data)

    def play(self, stop: threading.Event) -> None:
        """Publish from the start to the end of the bag with the recorded timing (or until
        stop is set)."""
        self._publish_latched()
        play_start = time.monotonic()
        if self.played_at_ns is None:
            self.played_at_ns = time.time_ns()
        for due, topic, data in schedule(self.reader.messages(self.topics, self.start_ns),
                                         self.start_ns, self.rate, play_start):
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            self.position_ns = self.start_ns + int((due - play_start) * self.rate * 1e9)
            self._publish(topic, data)
        self._latched_published = False  # a loop starts again with the states at the start


def run_replay(bag_path: Path, rate: float, start_s: float, topics: list[str] | None,
               loop: bool, domain: int | None, wait_subscribers_s: float = 0.0,
               accept_damage: bool = False) -> int:
    """`telesurg replay`."""
    import rclpy
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    try:
        reader = BagReader(bag_path, accept_damage)
    except BagError as error:
        print(f"telesurg replay: {error}", file=sys.stderr)
        return 2
    if reader.damage_note:
        print(f"telesurg replay: {reader.damage_note}", file=sys.stderr)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    node = Node("telesurg_replay", context=context)
    player = None
    try:
        with reader:
            player = Player(node, reader, check_topics(reader, topics), start_s, rate)
            player.wait_for_subscribers(wait_subscribers_s)
            span_s = max(0.0, (reader.end_ns - player.start_ns) * 1e-9)
            print(f"replaying {len(player.topics)} topics of {bag_path} from {start_s:g} s, "
                  f"{span_s:.1f} s at rate {rate:g}{', looping' if loop else ''}", flush=True)
            while True:
                player.play(threading.Event())
                if not loop:
                    break
            player.linger()
    except (BagError, LookupError) as error:
        print(f"telesurg replay: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("telesurg replay: interrupted", file=sys.stderr)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    print(f"published {player.published if player else 0} messages")
    return 0
