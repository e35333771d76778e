"""The contract messages' fields, read and written one way everywhere: header stamps in
nanoseconds, a pose's tip position, a /bridge/link_state report's values.

Plain attribute access, no rclpy: the same functions serve the nodes' rclpy messages and the
messages decoded from a recording (telesurg.bags.storage.decode), whose fields have the same
names.
"""

from __future__ import annotations

import numpy as np

NS_PER_S = 1_000_000_000


def stamp_ns(message) -> int:
    """A stamped message's header stamp in nanoseconds."""
    stamp = message.header.stamp
    return stamp.sec * NS_PER_S + stamp.nanosec


def set_stamp_ns(message, time_ns: int) -> None:
    """Stamp a message's header with time_ns (nanoseconds)."""
    stamp = message.header.stamp
    stamp.sec, stamp.nanosec = divmod(time_ns, NS_PER_S)


def tip_position(message) -> np.ndarray:
    """The position (m) of a PoseStamped: the tool tip's, on the arm's poses."""
    position = message.pose.position
    return np.array([position.x, position.y, position.z])


def link_state_values(message) -> dict[str, tuple[str, dict[str, str]]]:
    """A /bridge/link_state report as {hardware id ('overall' or a link): (state, values)}."""
    return {status.hardware_id: (status.message, {v.key: v.value for v in status.values})
            for status in message.status}
