"""A running patient bridge under hostile datagrams: 10,000 of each kind a keyless attacker on
the links can send (random bytes, forged headers, genuine datagrams truncated, bit-flipped,
replayed, relabelled to the other link, retimed, and datagrams under another key), while a
genuine master streams commands. Nothing hostile is published, the genuine commands are
delivered, each hostile datagram is counted under its reason, and the flood is reported."""

from __future__ import annotations

import functools
import multiprocessing
import random
import socket
import struct
import threading
import time

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import serialize_message

from telesurg.bridge import config as bridge_config
from telesurg.bridge.core import BridgeCore
from telesurg.bridge.wire import (
    DEFAULT_REPLAY_WINDOW,
    MAX_DATAGRAM_BYTES,
    PROTOCOL_VERSION,
    MessageKind,
    WireCodec,
    write_key,
)
from telesurg.contract import topics
from telesurg.contract.graph import BRIDGE
from telesurg.ros.messages import message_info
from telesurg.ros.qos import subscription
from telesurg.session.demo import session_environment
from telesurg.session.processes import CLEAN_STOP_CODES, NodeGroup

pytestmark = pytest.mark.multiprocess  # a patient bridge process, and DDS

EACH = 10_000
HEADER = struct.Struct("!BBBQQQH")  # the wire format's header (bridge.wire)
MINIMUM_BYTES = HEADER.size + 16  # header and tag
AHEAD = 1 << 30  # a sequence far ahead of the master's: never seen, so not a replay
HOUR_NS = 3600 * 10**9


class TappedSocket:
    """A link socket that keeps what it sends, as an eavesdropper on the link would."""

    def __init__(self, sock):
        self._sock = sock
        self.sent: list[bytes] = []

    def sendto(self, datagram, address):
        sent = self._sock.sendto(datagram, address)
        self.sent.append(bytes(datagram))  # only what really left
        return sent

    def __getattr__(self, name):
        return getattr(self._sock, name)


def with_header(datagram: bytes, **fields) -> bytes:
    """The datagram with header fields replaced (what a keyless attacker can do)."""
    names = ("version", "kind", "link_id", "sender_id", "sequence", "timestamp_ns", "topic")
    values = dict(zip(names, HEADER.unpack_from(datagram), strict=True)) | fields
    return HEADER.pack(*values.values()) + datagram[HEADER.size:]


def hostile_kinds(rng: random.Random, genuine_a: list[bytes], peer_id: int,
                  other_key: bytes) -> dict[str, tuple[list[bytes], dict[str, int], str]]:
    """{kind: (datagrams, expected rejections by reason, link they are sent on)}."""
    def pick():
        return rng.choice(genuine_a)

    random_bytes = []
    for _ in range(EACH):
        length = rng.randint(0, MAX_DATAGRAM_BYTES + 100)
        data = bytes(rng.getrandbits(8) for _ in range(length))
        if data and data[0] == PROTOCOL_VERSION:
            data = bytes([PROTOCOL_VERSION + 1]) + data[1:]
        random_bytes.append(data)
    random_reasons = {"truncated": sum(len(d) < MINIMUM_BYTES for d in random_bytes),
                      "oversized": sum(len(d) > MAX_DATAGRAM_BYTES for d in random_bytes)}
    random_reasons["bad version"] = EACH - sum(random_reasons.values())
    forged = [HEADER.pack(PROTOCOL_VERSION, MessageKind.DATA, 0, rng.getrandbits(64), i,
                          time.time_ns(), 0) + rng.randbytes(rng.randint(16, 300))
              for i in range(EACH)]
    flipped = []
    for i in range(EACH):
        data = bytearray(with_header(pick(), sequence=AHEAD + i))
        bit = rng.randrange(HEADER.size * 8, len(data) * 8)
        data[bit // 8] ^= 1 << bit % 8
        flipped.append(bytes(data))
    wrong_key = WireCodec(other_key, sender_id=peer_id)
    return {
        "random bytes": (random_bytes, random_reasons, "a"),
        "valid header, random body": (forged, {"unknown sender": EACH}, "a"),
        "truncated genuine": ([pick()[:rng.randrange(MINIMUM_BYTES)] for _ in range(EACH)],
                              {"truncated": EACH}, "a"),
        "bit-flipped genuine": (flipped, {"authentication failed": EACH}, "a"),
        "replayed genuine": ([pick() for _ in range(EACH)], {"replayed": EACH}, "a"),
        "wrong key": ([wrong_key.encode(MessageKind.DATA, 0, 2 * AHEAD + i, time.time_ns(), 0,
                                        b"x" * 100) for i in range(EACH)],
                      {"authentication failed": EACH}, "a"),
        "wrong link id": ([pick() for _ in range(EACH)], {"wrong link": EACH}, "b"),
        "future timestamp": ([with_header(pick(), sequence=3 * AHEAD + i,
                                          timestamp_ns=time.monotonic_ns() + HOUR_NS)
                              for i in range(EACH)], {"authentication failed": EACH}, "a"),
        "past timestamp": ([with_header(pick(), sequence=4 * AHEAD + i,
                                        timestamp_ns=max(0, time.monotonic_ns() - HOUR_NS))
                            for i in range(EACH)], {"authentication failed": EACH}, "a"),
    }


def attack(batches: list[tuple[list[bytes], int]]) -> None:
    """The attacker, a process of its own: each batch of datagrams to its port on loopback,
    about 50,000 a second."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagrams, port in batches:
            for start in range(0, len(datagrams), 200):
                for datagram in datagrams[start:start + 200]:
                    sock.sendto(datagram, ("127.0.0.1", port))
                time.sleep(0.004)


class PatientProbe:
    """This test's node in the patient site's domain: the commands the bridge publishes, and
    its link state."""

    def __init__(self, domain_id: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("hostile_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.commands: list[str] = []
        self.overall: dict[str, str] = {}
        self.subscription = subscription(self.node, topics.PSM_SERVO_CP,
                                         lambda m: self.commands.append(m.header.frame_id),
                                         depth=10_000)
        self.node.create_subscription(DiagnosticArray, topics.BRIDGE_LINK_STATE.name,
                                      self._on_link_state, 100)

    def _on_link_state(self, message) -> None:
        for status in message.status:
            if status.hardware_id == "overall":
                self.overall = {value.key: value.value for value in status.values}
                self.overall["state"] = status.message

    def spin_until(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout_s} s: {self.overall}")
            self.executor.spin_once(timeout_sec=0.01)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def test_hostile_datagrams_are_never_published_and_each_is_counted(tmp_path, ros_env,
                                                                    direct_bridge_config):
    config_path, ports = direct_bridge_config
    key = write_key(tmp_path / "bridge.key")
    patient_ports = {"a": ports[1], "b": ports[3]}
    domain = int(ros_env["ROS_DOMAIN_ID"])
    group = NodeGroup(session_environment(domain), tmp_path / "logs")
    group.start(BRIDGE, ["-p", "role:=patient", "-p", f"config_file:={config_path}"])
    load = functools.partial(bridge_config.load_bridge_config, message_types=message_info)
    master = BridgeCore(load(config_path, "master"), key, lambda *_: None, lambda _: None)
    taps = [TappedSocket(link.sock) for link in master.links]
    for link, tap in zip(master.links, taps, strict=True):
        link.sock = tap
    servo_cp = next(t.index for t in master.config.outgoing if t.name == topics.PSM_SERVO_CP.name)
    stop = threading.Event()
    sent = []

    def genuine_master():
        command = PoseStamped()
        command.header.frame_id = "genuine"
        tick = 0
        while not stop.wait(0.001):  # commands at up to 1 kHz, heartbeats a tenth of that
            command.header.stamp.sec, command.header.stamp.nanosec = divmod(time.time_ns(),
                                                                              10**9)
            master.send(servo_cp, serialize_message(command))
            sent.append(time.monotonic())
            if tick % 10 == 0:
                master.send_heartbeat()
            tick += 1

    master.start()
    running = threading.Thread(target=genuine_master, daemon=True)
    running.start()
    probe = PatientProbe(domain)
    try:
        probe.spin_until(lambda: probe.overall.get("state") == "REDUNDANT"
                         and probe.subscription.get_publisher_count() > 0, 30.0,
                         "trusted master on both links")
        probe.spin_until(lambda: len(probe.commands) > 20, 10.0, "genuine commands")
        # Genuine datagrams to replay, old enough to have left the patient's window: a replay
        # of one the link never delivered would be a late copy, not a replay.
        captured = list(taps[0].sent[-200:])
        newest = max(HEADER.unpack_from(datagram)[4] for datagram in captured)
        probe.spin_until(lambda: HEADER.unpack_from(taps[0].sent[-1])[4]
                         > newest + DEFAULT_REPLAY_WINDOW + 100, 20.0,
                         "the captured datagrams to age out of the window")
        rng = random.Random(14)
        kinds = hostile_kinds(rng, captured, master.codec.sender_id, bytes(range(32)))
        before = {key: int(value) for key, value in probe.overall.items()
                  if key.startswith("rejected_") and key != "rejected_per_s"}
        delivered_before, sent_before = len(probe.commands), len(sent)
        untrusted_before = int(probe.overall["untrusted_discarded"])
        flood_seen = 0.0
        attacker = multiprocessing.Process(target=attack, args=(
            [(datagrams, patient_ports[link]) for datagrams, _, link in kinds.values()],),
            daemon=True)
        attacker.start()
        while attacker.is_alive():
            probe.executor.spin_once(timeout_sec=0.01)
            flood_seen = max(flood_seen, float(probe.overall.get("rejected_per_s", 0)))
        assert attacker.exitcode == 0
        expected: dict[str, int] = {}
        for _, reasons, _ in kinds.values():
            for reason, count in reasons.items():
                expected[reason] = expected.get(reason, 0) + count

        def counted() -> dict[str, int]:
            return {reason: int(probe.overall.get(f"rejected_{reason}", 0))
                    - before.get(f"rejected_{reason}", 0) for reason in expected}
        probe.spin_until(lambda: counted() == expected, 15.0, f"rejections {expected}")
        stop.set()
        running.join()
        genuine_during = len(sent) - sent_before
        probe.spin_until(lambda: len(probe.commands) - delivered_before >= genuine_during,
                         5.0, "every genuine command sent during the attack")
    finally:
        stop.set()
        probe.close()
        master.close()
        codes = group.stop()
    assert set(probe.commands) == {"genuine"}  # nothing hostile published
    assert int(probe.overall["untrusted_discarded"]) == untrusted_before  # none authenticated
    assert flood_seen >= 1000.0  # reported as a flood while it lasted
    assert set(codes.values()) <= CLEAN_STOP_CODES
    print(f"{sum(expected.values())} hostile datagrams rejected by reason: {expected}; "
          f"{genuine_during} genuine commands sent meanwhile, all delivered; flood reported at "
          f"up to {flood_seen:.0f}/s")
