"""bridge: the only path between the master site and the patient site.

Subscribes the configured outgoing topics (raw CDR, no decoding), sends every message over every
link, publishes what arrives from the other site, and reports its own view of the links on
/bridge/link_state and /diagnostics (10 Hz and at once on any change).
"""

from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.serialization import serialize_message

from telesurg.bridge.config import (
    LINK_OVERRIDES,
    default_bridge_config_path,
    load_bridge_config,
)
from telesurg.bridge.core import BridgeCore
from telesurg.bridge.link_health import HealthSnapshot
from telesurg.bridge.wire import DropCounters, KeyFileError, load_key
from telesurg.contract import topics
from telesurg.contract.params import ConfigError
from telesurg.contract.states import LINK_OVERALL_ID, LinkState, OverallState
from telesurg.contract.topics import Qos
from telesurg.ros.loop import NodeLoop
from telesurg.ros.messages import message_class, message_info
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, qos_profile

#: An all-zero key: what both bridges use when run insecure, so they still understand each
#: other. Anyone can read and forge such traffic.
INSECURE_KEY = bytes(32)
#: How often the latest value of each outgoing state topic is sent again, unless its publisher
#: sent one within the period (and at once when a link comes back after all were lost).
STATE_REFRESH_HZ = 2.0
STATE_REFRESH_NS = round(1e9 / STATE_REFRESH_HZ)
LEVELS = {LinkState.UP: DiagnosticStatus.OK, LinkState.DEGRADED: DiagnosticStatus.WARN,
          LinkState.DOWN: DiagnosticStatus.ERROR, OverallState.REDUNDANT: DiagnosticStatus.OK,
          OverallState.SINGLE: DiagnosticStatus.WARN, OverallState.LOST: DiagnosticStatus.ERROR}


class BridgeNode(Node):
    def __init__(self):
        super().__init__("bridge")
        self.core = None  # until the links are open
        p = declare_parameters(self, "bridge")
        path = p.config_file or str(default_bridge_config_path())
        config = load_bridge_config(
            path, p.role, p.key_file,
            {parameter: getattr(p, parameter) for parameter in LINK_OVERRIDES},
            message_types=message_info, video=p.video)
        key = self._key(config.key_file, p.insecure)
        self._incoming_publishers = {
            topic.index: self.create_publisher(message_class(topic.type_name), topic.name,
                                               qos_profile(topic.qos))
            for topic in config.incoming}
        try:
            self.core = BridgeCore(config, key, self._deliver, self._on_health_change,
                                   p.max_clock_skew_ms)
        except OSError as error:
            raise ConfigError(f"{path}: {error}") from None
        for topic in config.outgoing:
            send = (self._video_sender(topic.index) if topic.qos == Qos.VIDEO
                    else self._sender(topic.index))
            self.create_subscription(message_class(topic.type_name), topic.name, send,
                                     qos_profile(topic.qos), raw=True)
        self._link_state_pub = publisher(self, topics.BRIDGE_LINK_STATE)
        self._diagnostics_pub = publisher(self, topics.DIAGNOSTICS)
        self._name = f"bridge ({p.role})"
        self._logged_peer = 0
        self._rejected_per_s = 0.0  # over the last second, as of the last periodic report
        self.core.start()
        self.loop = NodeLoop(self)
        self.loop.every(1.0 / config.heartbeat_rate_hz, self.core.send_heartbeat)
        self.loop.every(1.0 / p.link_state_rate_hz, self._report_link_state)
        self.loop.every(1.0 / STATE_REFRESH_HZ,
                        lambda: self.core.refresh_states(unsent_for_ns=STATE_REFRESH_NS))
        links = ", ".join(f"{link.name} {link.bind[0]}:{link.bind[1]} -> "
                          f"{link.peer[0]}:{link.peer[1]}" for link in config.links)
        self.get_logger().info(
            f"{self._name}: links {links}; sending {[t.name for t in config.outgoing]}, "
            f"receiving {[t.name for t in config.incoming]}")

    def destroy_node(self):
        if self.core is not None:
            self.core.close()
        super().destroy_node()

    def _key(self, key_file, insecure: bool) -> bytes:
        if insecure:
            self.get_logger().warning(
                "INSECURE: no key, traffic is neither authenticated nor secret; never use this "
                "beyond a local experiment")
            return INSECURE_KEY
        if not key_file.exists():
            raise ConfigError(
                f"no key file at {key_file}: the bridge authenticates and encrypts every "
                f"datagram with a pre-shared key. Create one with `telesurg keygen {key_file}` "
                "and copy it to the other site, or set insecure:=true for a local experiment")
        try:
            return load_key(key_file)
        except KeyFileError as error:
            raise ConfigError(str(error)) from None

    def _sender(self, topic_index: int):
        def send(payload: bytes) -> None:
            if not self.core.send(topic_index, payload):
                self.get_logger().error(
                    "a message too large for one datagram was not sent",
                    throttle_duration_sec=5.0)
        return send

    def _video_sender(self, topic_index: int):
        def send(payload: bytes) -> None:
            try:
                self.core.send_video(topic_index, payload)
            except ValueError as error:  # a frame too large even for fragments
                self.get_logger().error(f"a video frame was not sent: {error}",
                                        throttle_duration_sec=5.0)
        return send

    def _deliver(self, topic_index: int, payload: bytes) -> None:
        publisher = self._incoming_publishers.get(topic_index)
        if publisher is not None:  # an index this site does not receive: misconfigured peer
            self._publish(publisher, payload)

    def _on_health_change(self, changes) -> None:
        if not self.context.ok():
            return  # shutting down: the peer going quiet is not news
        # Reported before it is logged: the safety supervisor acts on the report.
        self._send_link_state()
        for change in changes:
            what = "overall" if change.link is None else f"link {change.link}"
            self.get_logger().info(f"{what}: {change.previous} -> {change.current}")
            if change.link is None and change.previous == OverallState.LOST:
                self.core.refresh_states()  # what changed while every link was down

    def _report_link_state(self) -> None:
        """The periodic report (the loop's thread): the rate of rejections, then the state."""
        if self.core.peer_id != self._logged_peer:
            replaced = f" (replaces {self._logged_peer:016x})" if self._logged_peer else ""
            self.get_logger().info(f"trusting peer sender {self.core.peer_id:016x}{replaced}: "
                                   "its heartbeats answer ours")
            self._logged_peer = self.core.peer_id
        self._rejected_per_s = self.core.drops.per_second(time.monotonic())
        if self._rejected_per_s >= DropCounters.FLOOD_PER_S:
            self.get_logger().warning(
                f"flood: {self._rejected_per_s:.0f} datagrams/s rejected "
                f"({self.core.drops.snapshot()} so far)", throttle_duration_sec=5.0)
        self._send_link_state()

    def _send_link_state(self) -> None:
        """/bridge/link_state and /diagnostics now (also from the receive thread, at once on a
        change of state)."""
        message = link_state_message(self._name, self.core.snapshot(), self.core,
                                     self._rejected_per_s)
        message.header.stamp = self.get_clock().now().to_msg()
        # Serialized once for both topics: converting its ~45 key-values is most of the cost.
        serialized = serialize_message(message)
        self._publish(self._link_state_pub, serialized)
        self._publish(self._diagnostics_pub, serialized)

    def _publish(self, publisher, message) -> None:
        """Publish from the bridge's own threads, which may outlive the ROS context by a few
        milliseconds at shutdown (Ctrl-C/SIGTERM shut the context down first)."""
        try:
            publisher.publish(message)
        except Exception:
            if self.context.ok():
                raise


def _value(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def link_state_message(name: str, snapshot: HealthSnapshot, core: BridgeCore,
                       rejected_per_s: float = 0.0) -> DiagnosticArray:
    """One status per link and one overall, with the figures as key/values."""
    statuses = []
    for link_name, figures in snapshot.links.items():
        values = [KeyValue(key=key, value=_value(getattr(figures, key)))
                  for key in ("last_heard_age_ms", "rtt_ms", "rtt_p50_ms", "rtt_p99_ms",
                              "one_way_delay_ms", "relative_delay_ms", "loss_percent",
                              "jitter_ms", "received", "duplicates", "reordered",
                              "reorder_percent", "down_events")]
        statuses.append(DiagnosticStatus(
            level=LEVELS[figures.state], name=f"{name}: link {link_name}",
            hardware_id=link_name, message=str(figures.state), values=values))
    counters = {"sent": core.sent, "delivered": core.delivered,
                "commands_sent": core.commands_sent,
                "commands_delivered": core.commands_delivered,
                "duplicates_discarded": core.duplicates_discarded,
                "recovered": core.recovered,
                "rejected_datagrams": core.drops.total, "oversized": core.oversized,
                "untrusted_discarded": core.untrusted_discarded,
                "command_age_ms_p50": _value(core.command_age.percentile(50)),
                "command_age_ms_p99": _value(core.command_age.percentile(99)),
                "command_ages_out_of_range": core.command_age.out_of_range,
                "video_frames_sent": core.video.frames_sent,
                "video_frames_superseded": core.video.frames_superseded,
                "video_bytes_sent": core.video.bytes_sent,
                "video_fragments_unexpected": core.video.fragments_unexpected}
    # Frames delivered, and why others were not, summed over the incoming video topics.
    assemblies = core.video_assembly().values()
    for field in ("frames_delivered", "expired", "incomplete_dropped", "late_dropped",
                  "frames_recovered"):
        counters[f"video_{field}"] = sum(getattr(assembly, field) for assembly in assemblies)
    counters.update({f"rejected_{reason}": count
                     for reason, count in core.drops.snapshot().items()})
    # A flood of rejected datagrams is no change of state, but worth a warning.
    level = LEVELS[snapshot.state]
    if rejected_per_s >= DropCounters.FLOOD_PER_S:
        level = max(level, DiagnosticStatus.WARN, key=ord)
    counters["rejected_per_s"] = round(rejected_per_s, 1)
    statuses.append(DiagnosticStatus(
        level=level, name=f"{name}: overall", hardware_id=LINK_OVERALL_ID,
        message=str(snapshot.state),
        values=[KeyValue(key=key, value=str(value)) for key, value in counters.items()]))
    return DiagnosticArray(status=statuses)


def main(args=None):
    run_node("bridge", BridgeNode, args)


if __name__ == "__main__":
    main()
