"""The contract's QoS kinds (telesurg.contract.topics.Qos) as rclpy profiles, and publishers and
subscriptions made from a contract topic: its name, type and QoS come from the table."""

from __future__ import annotations

from collections.abc import Callable

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from telesurg.contract.topics import Qos, Topic
from telesurg.ros.messages import message_class

_POLICIES = {
    Qos.COMMAND: (1, ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE),
    Qos.STATE: (1, ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL),
    Qos.EVENT: (10, ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE),
    Qos.JOINT_COMMAND: (1, ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE),
    Qos.VIDEO: (1, ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE),
}


def qos_profile(qos: Qos, depth: int | None = None) -> QoSProfile:
    """The profile of a QoS kind; depth, if given, replaces its keep-last depth (a reader that
    must not lose a burst, such as a recorder)."""
    kind_depth, reliability, durability = _POLICIES[Qos(qos)]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth or kind_depth,
                      reliability=reliability, durability=durability)


def publisher(node: Node, topic: Topic, qos: Qos | None = None):
    """A publisher of a contract topic, with its QoS (or qos)."""
    return node.create_publisher(message_class(topic.type_name), topic.name,
                                 qos_profile(qos or topic.qos))


def subscription(node: Node, topic: Topic, callback: Callable, qos: Qos | None = None,
                 depth: int | None = None, raw: bool = False):
    """A subscription to a contract topic, with the QoS its readers use (or qos)."""
    return node.create_subscription(message_class(topic.type_name), topic.name, callback,
                                    qos_profile(qos or topic.read_qos, depth), raw=raw)
