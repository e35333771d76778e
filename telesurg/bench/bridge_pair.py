"""The benchmarks' two sites: a sender process (the master site) and a receiver process (the
patient site) joined by one transport, with one paced sender loop and one receiver for all.

Transports, each a picklable spec that a site's process opens:

- RawUdp: a plain socket at each end, straight to the other: the path without a bridge.
- Bridge: a BridgeCore at each end (roles master and patient) on one or two links, straight on
  loopback or each through a relay emulating a link profile (LinkEmulator, its own process).
- RosTopic: a publisher of /psm/servo_cp in the master site's DDS domain and a subscriber in the
  patient site's: the whole topic-to-topic path, through two bridge node processes.

Every command is a real geometry_msgs/PoseStamped in CDR of about stream.PAYLOAD_BYTES: its
header stamp is the wall clock, as a node's would be, and its frame_id carries the sequence
number and the send time (CLOCK_MONOTONIC, one clock for every process of this machine). The
sender stamps a command right before handing it to the transport (for a bridge: where the master
bridge node gets it from DDS), the receiver where the transport hands it over (for a bridge:
where the patient bridge node publishes it to DDS).

Each site is a process of its own, started once and reused for every trial: the two sites
compete for the machine as two bridge processes would, and start-up stays out of the trials.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import resource
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from telesurg.analysis.metrics import percentiles
from telesurg.bench import Result
from telesurg.bench.stream import StreamStats, paced
from telesurg.bridge.config import default_bridge_config_path, free_udp_ports, load_bridge_config
from telesurg.bridge.core import BridgeCore
from telesurg.bridge.wire import load_key, write_key
from telesurg.contract import topics
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.states import LINK_OVERALL_ID, LinkState, OverallState
from telesurg.contract.topics import MASTER, PATIENT
from telesurg.linkem.emulator import LinkEmulator

SERVO_TOPIC = topics.PSM_SERVO_CP
LOCALHOST = "127.0.0.1"
#: A fresh process's DDS discovery on a busy machine, with the bridges' trust handshake.
READY_TIMEOUT_S = 30.0
#: After the last command: time for those in flight to arrive, beyond any emulated delay.
DRAIN_S = 0.3
#: The smallest frame_id length whose PoseStamped CDR reaches stream.PAYLOAD_BYTES (204 bytes).
_FRAME_ID_CHARS = 124
_STAMP = struct.Struct("<iI")  # header.stamp after the 4-byte (little-endian) encapsulation
_FRAME_ID = slice(16, 48)  # after the encapsulation, the stamp and the string's length
_POLL_S = 0.05  # how often an idle receive thread looks whether it should stop


# The command ------------------------------------------------------------------------------

@functools.cache
def _template() -> bytes:
    from geometry_msgs.msg import PoseStamped
    from rclpy.serialization import serialize_message

    message = PoseStamped()
    message.header.frame_id = "0" * _FRAME_ID_CHARS
    message.pose.orientation.w = 1.0
    return serialize_message(message)


def command_cdr(sequence: int, sent_ns: int, wall_ns: int) -> bytes:
    """A PoseStamped in CDR: header stamp wall_ns, frame_id the sequence and sent_ns (hex)."""
    cdr = bytearray(_template())
    _STAMP.pack_into(cdr, 4, *divmod(wall_ns, 1_000_000_000))
    cdr[_FRAME_ID] = b"%016x%016x" % (sequence, sent_ns)
    return bytes(cdr)


def read_command(cdr: bytes) -> tuple[int, int]:
    """(sequence, send time ns) of a command_cdr."""
    digits = cdr[_FRAME_ID]
    return int(digits[:16], 16), int(digits[16:], 16)


# The transports: specs (picklable, sent to a site's process) and the ends they open ----------

Deliver = Callable[[bytes], None]


@dataclass(frozen=True)
class RawUdp:
    bind_port: int
    peer_port: int

    def open(self, deliver: Deliver) -> _RawUdpEnd:
        return _RawUdpEnd(self, deliver)


@dataclass(frozen=True)
class Bridge:
    config_path: str
    role: str

    def open(self, deliver: Deliver) -> _BridgeEnd:
        return _BridgeEnd(self, deliver)


@dataclass(frozen=True)
class RosTopic:
    domain_id: int
    role: str

    def open(self, deliver: Deliver) -> _RosTopicEnd:
        return _RosTopicEnd(self, deliver)


def socket_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped at this machine's UDP sockets bound to these ports because
    their receive buffer was full (/proc/net/udp): a receiver that waited for a CPU too long."""
    drops = 0
    with open("/proc/net/udp") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) in ports:
                drops += int(fields[12])
    return drops


class _RawUdpEnd:
    def __init__(self, spec: RawUdp, deliver: Deliver):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((LOCALHOST, spec.bind_port))
        self._sock.settimeout(_POLL_S)
        self._peer = (LOCALHOST, spec.peer_port)
        self._deliver = deliver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65535)
            except TimeoutError:
                continue
            self._deliver(data)

    def send(self, cdr: bytes) -> None:
        self._sock.sendto(cdr, self._peer)

    def ready(self) -> bool:
        return True

    def counters(self) -> dict[str, int]:
        return {"socket_drops": socket_drops({self._sock.getsockname()[1]})}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


class _BridgeEnd:
    """A BridgeCore with what the bridge node adds around it: heartbeats at the configured
    rate. Ready once it trusts its peer and hears it on every link."""

    def __init__(self, spec: Bridge, deliver: Deliver):
        from telesurg.ros.messages import message_info

        config = load_bridge_config(spec.config_path, spec.role, message_types=message_info)
        self._servo_index = next(topic.index for topic in config.outgoing + config.incoming
                                 if topic.name == SERVO_TOPIC.name)
        self.lost_events = 0  # times the peer was LOST on every link
        self.core = BridgeCore(config, load_key(config.key_file),
                               lambda _topic, cdr: deliver(cdr), self._on_health_change)
        self.core.start()
        self._heartbeat_period_s = 1.0 / config.heartbeat_rate_hz
        self._stop = threading.Event()
        self._heartbeats = threading.Thread(target=self._beat, daemon=True)
        self._heartbeats.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_period_s):
            self.core.send_heartbeat()

    def send(self, cdr: bytes) -> None:
        self.core.send(self._servo_index, cdr)

    def ready(self) -> bool:
        links = self.core.snapshot().links.values()
        return bool(self.core.peer_id) and all(link.state != LinkState.DOWN for link in links)

    def _on_health_change(self, changes) -> None:
        self.lost_events += sum(1 for change in changes
                                if change.link is None and change.current == OverallState.LOST)

    def counters(self) -> dict[str, int]:
        """recovered: commands lost on every link but delivered from the next datagram's
        copy; link_down_events and lost_events: false alarms where no link was cut; rejected:
        datagrams that failed a check."""
        return {"recovered": self.core.recovered, "socket_drops": socket_drops(
                    {link.sock.getsockname()[1] for link in self.core.links}),
                "link_down_events": sum(
                    figures.down_events for figures in self.core.snapshot().links.values()),
                "lost_events": self.lost_events, "rejected": self.core.drops.total}

    def close(self) -> None:
        self._stop.set()
        self._heartbeats.join()
        self.core.close()


class _RosTopicEnd:
    """The master end publishes /psm/servo_cp (serialized: the CDR as is) in its site's domain;
    the patient end subscribes it (raw) in its own. Ready once DDS has matched the bridge node
    of its site, and (patient) that bridge reports both links up. Counters: the commands the
    patient bridge delivered (from its link state), to tell what was lost before it from what
    was lost after it."""

    def __init__(self, spec: RosTopic, deliver: Deliver):
        from telesurg.session.demo import session_environment

        os.environ.update(session_environment(spec.domain_id))  # read by rclpy.init below
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from telesurg.ros.qos import publisher, subscription

        self._rclpy = rclpy
        self._context = rclpy.Context()
        rclpy.init(context=self._context, domain_id=spec.domain_id)
        self._node = rclpy.create_node(f"bench_{spec.role}", context=self._context)
        self._overall = None
        self._bridge_delivered = 0
        if spec.role == MASTER:
            self._publisher = publisher(self._node, SERVO_TOPIC)
        else:
            # A deep queue: a probe slow to take a sample shows as latency, not as loss.
            self._subscription = subscription(self._node, SERVO_TOPIC, deliver, depth=1000,
                                              raw=True)
            subscription(self._node, topics.BRIDGE_LINK_STATE, self._on_link_state)
        self._role = spec.role
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self._executor.spin_once(timeout_sec=_POLL_S)

    def _on_link_state(self, message) -> None:
        overall = next(status for status in message.status
                       if status.hardware_id == LINK_OVERALL_ID)
        self._overall = overall.message
        self._bridge_delivered = int(next(value.value for value in overall.values
                                          if value.key == "commands_delivered"))

    def send(self, cdr: bytes) -> None:
        self._publisher.publish(cdr)

    def ready(self) -> bool:
        if self._role == MASTER:
            return self._publisher.get_subscription_count() > 0
        return (self._subscription.get_publisher_count() > 0
                and self._overall == OverallState.REDUNDANT)

    def counters(self) -> dict[str, int]:
        return {"bridge_delivered": self._bridge_delivered}

    def close(self) -> None:
        self._stop.set()
        self._spinner.join()
        self._executor.shutdown()
        self._node.destroy_node()
        self._rclpy.try_shutdown(context=self._context)


# A site's process ---------------------------------------------------------------------------

def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Site:
    """What a site's process does on each command from the benchmark."""

    def __init__(self):
        self.end = None
        self.arrivals: list[tuple[int, int, int]] = []
        self._listen_mark = (0.0, 0.0, {})  # CPU s, monotonic s and counters at listen()

    def deliver(self, cdr: bytes) -> None:
        received_ns = time.monotonic_ns()
        self.arrivals.append((*read_command(cdr), received_ns))

    def open(self, spec) -> None:
        self.arrivals = []
        self.end = spec.open(self.deliver)

    def ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.end.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.end.__class__.__name__[1:]} not ready after "
                                   f"{timeout_s:g} s")
            time.sleep(0.01)

    def stream(self, rate_hz: float, duration_s: float) -> dict:
        """The one paced sender loop, whatever the transport."""
        cpu_start, start = _cpu_seconds(), time.monotonic()
        sent = 0
        for sequence in paced(rate_hz, duration_s):
            self.end.send(command_cdr(sequence, time.monotonic_ns(), time.time_ns()))
            sent += 1
        elapsed_s = time.monotonic() - start
        return {"sent": sent, "send_rate_hz": sent / elapsed_s,
                "cpu_percent": 100.0 * (_cpu_seconds() - cpu_start) / elapsed_s}

    def peer_id(self) -> int:
        """The sender id a bridge end trusts (the flood benchmark forges datagrams of it)."""
        return self.end.core.peer_id

    def listen(self) -> None:
        self._listen_mark = (_cpu_seconds(), time.monotonic(), self.end.counters())

    def finish(self) -> dict:
        cpu_start, start, counters = self._listen_mark
        return {"arrivals": self.arrivals,
                "cpu_percent": 100.0 * (_cpu_seconds() - cpu_start) / (time.monotonic() - start),
                "counters": {name: count - counters[name]
                             for name, count in self.end.counters().items()}}

    def close(self) -> None:
        if self.end is not None:
            self.end.close()
            self.end = None


def _site_process(connection, niceness: int) -> None:
    """Serve (command, argument) requests until the benchmark closes the pipe (or dies);
    answer each with ("ok", value) or ("error", traceback)."""
    with contextlib.suppress(PermissionError):
        # As the demo runs the bridge nodes: ahead of whatever else runs on the machine.
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    site = _Site()
    try:
        while True:
            try:
                command, argument = connection.recv()
            except EOFError:
                return
            try:
                answer = ("ok", getattr(site, command)(*argument))
            except Exception:
                answer = ("error", traceback.format_exc())
            connection.send(answer)
    finally:
        site.close()


# The benchmark's side -----------------------------------------------------------------------

@dataclass
class Trial:
    """One stream from the master site to the patient site, as the patient site saw it."""

    sent: int
    arrivals: list[tuple[int, int, int]]  # (sequence, sent ns, received ns)
    send_rate_hz: float  # achieved: below the asked rate if the sender could not keep up
    cpu_percent: dict[str, float]  # per site process, of one core, while streaming
    counters: dict[str, int]  # the patient end's, over the trial (see each end's counters())
    window_ns: tuple[int, int] | None = None  # what the `during` hook returned (an outage)

    def summary(self, window_ns: tuple[int, int] | None = None) -> dict:
        stats = StreamStats()
        stats.arrivals = self.arrivals
        return stats.summary(self.sent, window_ns)

    def _arrivals(self, sent_within_ns: tuple[int, int] | None = None) -> np.ndarray:
        """Arrivals as rows (sequence, sent ns, received ns), of those sent within
        sent_within_ns if given."""
        arrivals = np.array(self.arrivals, dtype=np.int64).reshape(-1, 3)
        if sent_within_ns is None:
            return arrivals
        sent_ns = arrivals[:, 1]
        return arrivals[(sent_within_ns[0] <= sent_ns) & (sent_ns <= sent_within_ns[1])]

    def latencies_ms(self, window_ns: tuple[int, int] | None = None) -> np.ndarray:
        arrivals = self._arrivals(window_ns)
        return (arrivals[:, 2] - arrivals[:, 1]) * 1e-6

    def largest_gap_ms(self, received_within_ns: tuple[int, int]) -> float | None:
        """The largest gap between consecutive arrivals that overlaps received_within_ns."""
        received_ns = np.sort(self._arrivals()[:, 2])
        starts, ends = received_ns[:-1], received_ns[1:]
        overlapping = (starts <= received_within_ns[1]) & (ends >= received_within_ns[0])
        gaps = (ends - starts)[overlapping]
        return round(float(gaps.max()) * 1e-6, 3) if gaps.size else None


def pooled_latency_ms(trials: list[Trial], in_window: bool = False) -> dict:
    """p50/p99/max of the latencies of every trial together (of those sent within each
    trial's window if in_window)."""
    return percentiles(np.concatenate(
        [trial.latencies_ms(trial.window_ns if in_window else None) for trial in trials]))


class SitePair:
    """The master and patient site processes (a context manager); trial() runs one stream."""

    def __init__(self, niceness: int = -10):
        context = multiprocessing.get_context("spawn")  # no inherited threads or sockets
        self._connections = {}
        self._processes = {}
        for site in (MASTER, PATIENT):
            ours, theirs = context.Pipe()
            process = context.Process(target=_site_process, args=(theirs, niceness),
                                      name=f"telesurg-bench-{site}", daemon=True)
            process.start()
            theirs.close()
            self._connections[site], self._processes[site] = ours, process

    def __enter__(self) -> SitePair:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Closing the pipes ends the site processes; any still busy is killed."""
        for connection in self._connections.values():
            connection.close()
        for process in self._processes.values():
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join()

    def ask(self, site: str, command: str, *argument, timeout_s: float = 10.0):
        """One request to a site and its answer (a site serves one request at a time)."""
        self._request(site, command, *argument)
        return self._answer(site, timeout_s)

    def _request(self, site: str, command: str, *argument) -> None:
        self._connections[site].send((command, argument))

    def _answer(self, site: str, timeout_s: float):
        connection = self._connections[site]
        if not connection.poll(timeout_s):
            raise TimeoutError(f"the {site} site did not answer within {timeout_s:g} s")
        try:
            status, value = connection.recv()
        except EOFError:
            raise RuntimeError(f"the {site} site process died (exit code "
                               f"{self._processes[site].exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the {site} site failed:\n{value}")
        return value

    def _both(self, command: str, arguments: dict[str, tuple], timeout_s: float) -> None:
        """Both sites at once: a bridge's handshake needs its peer to be opened too."""
        for site, argument in arguments.items():
            self._request(site, command, *argument)
        for site in arguments:
            self._answer(site, timeout_s)

    def trial(self, master, patient, rate_hz: float, duration_s: float,
              during: Callable[[int], tuple[int, int] | None] | None = None,
              drain_s: float = DRAIN_S) -> Trial:
        """Open master and patient (transport specs) at their sites, wait until both are
        ready, stream at rate_hz for duration_s, and close them. during(stream start ns), if
        given, runs here while the stream flows (e.g. cuts a link); what it returns is the
        Trial's window_ns. drain_s: wait after the last command for those in flight."""
        self._both("open", {MASTER: (master,), PATIENT: (patient,)}, READY_TIMEOUT_S)
        self._both("ready", {MASTER: (READY_TIMEOUT_S,), PATIENT: (READY_TIMEOUT_S,)},
                   READY_TIMEOUT_S + 5.0)
        self._request(PATIENT, "listen")
        self._answer(PATIENT, 5.0)
        self._request(MASTER, "stream", rate_hz, duration_s)
        window_ns = during(time.monotonic_ns()) if during else None
        stream = self._answer(MASTER, 2 * duration_s + 30.0)
        time.sleep(drain_s)
        self._request(PATIENT, "finish")
        received = self._answer(PATIENT, 30.0)
        self._both("close", {MASTER: (), PATIENT: ()}, 10.0)
        return Trial(stream["sent"], received["arrivals"], stream["send_rate_hz"],
                     {MASTER: stream["cpu_percent"], PATIENT: received["cpu_percent"]},
                     received["counters"], window_ns)


class MachineLoad:
    """What else the machine did while a benchmark ran, for its notes (tails grow with it): the
    1-minute load average at the end, and the share of CPU time the hypervisor took (steal)."""

    def __init__(self):
        self._start = self._cpu_times()

    @staticmethod
    def _cpu_times() -> np.ndarray:
        """The first eight fields of /proc/stat's cpu line: user ... steal, in ticks."""
        with open("/proc/stat") as stat:
            return np.array(stat.readline().split()[1:9], dtype=np.int64)

    def annotate(self, result: Result) -> None:
        ticks = self._cpu_times() - self._start
        load = os.getloadavg()[0]
        steal_percent = 100.0 * ticks[7] / max(1, ticks.sum())
        result.figures["machine_load"] = {"load_average_1min": round(load, 2),
                                          "steal_percent": round(steal_percent, 1)}
        result.notes.append(
            f"machine during the run: 1-minute load average {load:.1f} on {os.cpu_count()} "
            f"cores (this benchmark's processes included), hypervisor steal "
            f"{steal_percent:.1f}% of CPU time.")


# Setting up a trial's path ------------------------------------------------------------------

def raw_udp_ends() -> tuple[RawUdp, RawUdp]:
    """Two plain sockets on loopback, each sending straight to the other."""
    master_port, patient_port = free_udp_ports(2)
    return RawUdp(master_port, patient_port), RawUdp(patient_port, master_port)


def write_bridge_config(folder: Path, ends: dict[str, tuple[tuple[int, int], tuple[int, int]]]
                        ) -> Path:
    """The default bridge configuration with only the links of `ends` ({name: ((master bind,
    master peer), (patient bind, patient peer))}, ports on 127.0.0.1) and the key
    folder/bridge.key (made if missing), written to folder/bridge.yaml. Unlike
    write_loopback_bridge_config it may leave links out: a single-link bridge is one
    configured with link a alone."""
    if not (folder / "bridge.key").exists():
        write_key(folder / "bridge.key")
    document = yaml.safe_load(default_bridge_config_path().read_text())
    document["key_file"] = "bridge.key"
    document["links"] = [
        {"name": name, **{role: {"bind": f"{LOCALHOST}:{bind}", "peer": f"{LOCALHOST}:{peer}"}
                          for role, (bind, peer) in zip((MASTER, PATIENT), sides, strict=True)}}
        for name, sides in ends.items()]
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@contextlib.contextmanager
def bridge_ends(folder: Path, links: int = 2, profile: str | None = None, seed: int = 0
                ) -> Iterator[tuple[Bridge, Bridge, object]]:
    """(master spec, patient spec, emulated links or None) of two bridges joined by links a
    (and b if links is 2), straight on loopback or, with a profile, each link through a relay
    emulating it (LinkEmulator, seeded from seed: set_down(name, True) cuts a link)."""
    names = DEFAULT_LINKS[:links]
    ports = free_udp_ports(2 * links)
    bridge_ports = {name: ports[2 * i:2 * i + 2] for i, name in enumerate(names)}
    with contextlib.ExitStack() as stack:
        emulated = None
        if profile is None:  # each bridge sends straight to the other's port
            peer_ports = {name: ends[::-1] for name, ends in bridge_ports.items()}
        else:
            emulated = stack.enter_context(LinkEmulator(
                [(name, profile, *bridge_ports[name], seed + 2 * i)
                 for i, name in enumerate(names)], folder / "emulated_links.log"))
            peer_ports = emulated.ports
        path = write_bridge_config(folder, {
            name: tuple(zip(bridge_ports[name], peer_ports[name], strict=True))
            for name in names})
        yield Bridge(str(path), MASTER), Bridge(str(path), PATIENT), emulated
