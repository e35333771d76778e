"""The bridge between two sites, without ROS: every datagram out on every link, the first copy
in wins (IEC 62439-3 PRP), heartbeats on every link, and the links' health.

Freshness. Every bridge start draws a new random sender id, and each heartbeat names the peer
sender it answers. A receiver trusts a sender only once that sender's heartbeat names the
receiver's own current id: proof that it is alive now, which a recording of an earlier session
(or of an earlier peer of this one) cannot give. Until then, and for any sender it has since
replaced, its datagrams are discarded (counted apart from rejected ones, since a restarting
peer sends them too) and count for nothing: neither delivered nor as signs of a live link. A
replaced sender is never trusted again, so its recorded traffic cannot be replayed later.

Video. A message of a video topic (a compressed frame) goes to send_video(): it is cut into
fragments with forward error correction (telesurg.video.transport), which a thread of their
own sends, paced under VIDEO_CAP_MBPS per link, each under the send lock for one datagram only:
a command waits behind at most one fragment, never behind a frame. A newer frame of the same
topic replaces what is left of the older one in the queue (shown late it would be worthless).
The receiver reassembles each topic's frames and delivers a frame once, whole and in order, or
not at all.

No rclpy: the node hands outgoing payloads (CDR bytes) to send() (or send_video()), and gets
incoming ones back through a callback from the receive thread. Sockets are plain UDP, one per
link, optionally bound to a network interface so that each link leaves on its own technology.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from telesurg.analysis.metrics import LatencyHistogram
from telesurg.bridge.config import BridgeConfig, LinkConfig, quiet_udp_ports
from telesurg.bridge.link_health import HealthSnapshot, LinkHealth, LinkHealthConfig, StateChange
from telesurg.bridge.wire import (
    MAX_DATAGRAM_BYTES,
    AntiReplayWindow,
    DropCounters,
    MessageKind,
    WireCodec,
    WireError,
    max_message_bytes,
    max_payload_bytes,
    pack_data,
    unpack_data,
)
from telesurg.contract.params import MAX_CLOCK_SKEW
from telesurg.contract.states import LinkState
from telesurg.contract.topics import Qos
from telesurg.video import transport

#: Heartbeat payload: per link, the link id, the newest peer heartbeat timestamp heard on it and
#: how long it was held before this heartbeat left (RTCP's LSR/DLSR), so that each side measures
#: every link's round trip from heartbeats alone, with every datagram still sent on every link.
_ECHO = struct.Struct("!BQQ")
#: Heartbeat payload head: the peer sender id this heartbeat answers (0 before any is heard).
_ANSWERS = struct.Struct("!Q")
#: Message header stamp in CDR: after the 4-byte encapsulation, int32 sec and uint32 nanosec.
_CDR_STAMP = {False: struct.Struct(">iI"), True: struct.Struct("<iI")}
#: A message rides again in the next datagram only if that leaves this soon after it: a command
#: recovered later would be too old to act on.
REDUNDANCY_WINDOW_NS = 100_000_000
#: Linux SO_TIMESTAMPNS (= SCM_TIMESTAMPNS): the kernel stamps each datagram's arrival
#: (CLOCK_REALTIME), so that a receive thread slow to read (a busy machine) does not make a link
#: that delivered on time look silent.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
#: Video's share of each link (every fragment goes on every link), and the burst it may send at
#: once: a frame's fragments leave together unless the link is busy with video already.
VIDEO_CAP_MBPS = 20.0
VIDEO_BURST_BYTES = 64_000
#: A video frame not complete this long after its first fragment arrived is dropped.
VIDEO_DEADLINE_NS = 100_000_000
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size)
RECEIVE_BUFFER_BYTES = 4 << 20
#: Longest the receive thread sleeps when no link deadline is due.
_IDLE_WAIT_S = 0.1
#: Key derivations for senders not trusted yet, at most (about 20 us each), while no trusted
#: peer is alive: a flood of forged sender ids costs at most 2% of a core in derivations, and a
#: restarted peer's heartbeats (100 per second per link) still meet a free one within seconds.
DERIVATIONS_PER_S = 1000.0
DERIVATION_BURST = 50


class TokenBucket:
    """At most rate_per_s takes per second on average, burst at once."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate_per_ns = rate_per_s * 1e-9
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last_ns: int | None = None

    def take(self, now_ns: int) -> bool:
        if self._last_ns is not None:
            self._tokens = min(self._burst, self._tokens
                               + (now_ns - self._last_ns) * self._rate_per_ns)
        self._last_ns = now_ns
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass
class VideoCounters:
    frames_sent: int = 0  # handed to send_video
    frames_superseded: int = 0  # a newer frame of the topic came before all was sent
    fragments_sent: int = 0  # on every link
    bytes_sent: int = 0  # of those fragments, on each link
    fragments_unexpected: int = 0  # for a topic this site does not receive as video


@dataclass
class _Link:
    index: int  # link id on the wire: position in the configuration, the same at both sites
    config: LinkConfig
    sock: socket.socket
    peer: tuple[str, int]
    # Newest peer heartbeat heard here: its sender timestamp and our monotonic arrival, in ns.
    echo: tuple[int, int] = (0, 0)
    send_errors: int = 0
    # The trusted peer's sequences heard on this link: only a datagram new on its own link shows
    # that the link carries the peer now (a copy recorded earlier and replayed does not).
    window: AntiReplayWindow = field(default_factory=AntiReplayWindow)


def echo(link: _Link, now_ns: int) -> bytes:
    """The echo of the newest peer heartbeat heard on link, held since then until now_ns (0 if
    it arrived after now_ns was read: the receive thread runs meanwhile)."""
    echoed_ns, arrival_ns = link.echo
    return _ECHO.pack(link.index, echoed_ns, max(0, now_ns - arrival_ns) if echoed_ns else 0)


def header_stamp_ns(cdr: bytes) -> int | None:
    """The header stamp of a message that starts with a std_msgs/Header, from its CDR bytes;
    None if there is none (a zero stamp is invalid, as in CRTK)."""
    if len(cdr) < 12:
        return None
    sec, nanosec = _CDR_STAMP[bool(cdr[1] & 1)].unpack_from(cdr, 4)
    return sec * 1_000_000_000 + nanosec if sec or nanosec else None


def open_link_socket(link: LinkConfig) -> socket.socket:
    """A non-blocking UDP socket bound as the link configuration says."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if link.interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                            link.interface.encode() + b"\0")
        sock.bind(link.bind)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        # Room for a burst while the receive thread waits for a core (or wades through a
        # flood): the kernel caps it at net.core.rmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    except OSError as error:
        sock.close()
        hint = ""
        if error.errno == errno.EADDRINUSE and link.bind[1] not in quiet_udp_ports():
            hint = (" (the port is in the kernel's ephemeral range or among DDS's ports, where"
                    " other processes' sockets take ports at random: choose one like the"
                    " defaults in config/bridge.yaml)")
        raise OSError(f"link {link.name}: cannot bind {link.bind[0]}:{link.bind[1]}"
                      f"{' on ' + link.interface if link.interface else ''}: "
                      f"{error.strerror}{hint}") from None
    sock.setblocking(False)
    return sock


class BridgeCore:
    def __init__(self, config: BridgeConfig, key: bytes,
                 deliver: Callable[[int, bytes], None],
                 health_changed: Callable[[list[StateChange]], None],
                 max_clock_skew_ms: float = MAX_CLOCK_SKEW.default):
        self.config = config
        self.codec = WireCodec(key)
        self._deliver = deliver
        self._health_changed = health_changed
        self.health = LinkHealth([link.name for link in config.links],
                                 LinkHealthConfig(link_timeout_ms=config.link_timeout_ms))
        self.links: list[_Link] = []
        try:
            for index, link in enumerate(config.links):
                peer = (socket.gethostbyname(link.peer[0]), link.peer[1])  # resolve once
                self.links.append(_Link(index, link, open_link_socket(link), peer))
        except OSError:
            for link in self.links:
                link.sock.close()
            raise
        self._by_fileno = {link.sock.fileno(): link for link in self.links}
        self.peer_id = 0  # the trusted peer sender (0: none yet)
        self._peer_heard_ns = -(1 << 62)  # monotonic, its last authentic datagram
        self._link_timeout_ns = int(config.link_timeout_ms * 1e6)
        self._derivations = TokenBucket(DERIVATIONS_PER_S, DERIVATION_BURST)
        self._candidate_id = 0  # the newest untrusted sender heard: the one our heartbeats answer
        self._replaced_ids: set[int] = set()
        self._window = AntiReplayWindow()
        self.drops = DropCounters()
        self.sent = 0
        self.delivered = 0
        self.duplicates_discarded = 0
        self.recovered = 0  # lost on every link, delivered from the next datagram's copy
        self.untrusted_discarded = 0
        # The latest message of each outgoing state topic, sent again by refresh_states().
        self._state_topics = frozenset(topic.index for topic in config.outgoing
                                       if topic.qos == Qos.STATE)
        # Commands (streamed, latest wins) counted apart: states are sent again, so the sent
        # and delivered counts of all messages differ by the refreshes in flight.
        self._command_topics = frozenset(topic.index for topic in config.outgoing
                                         if topic.qos == Qos.COMMAND)
        self._command_topics_in = frozenset(topic.index for topic in config.incoming
                                            if topic.qos == Qos.COMMAND)
        self.commands_sent = 0
        self.commands_delivered = 0
        # {topic index: (its latest message, monotonic ns when sent)}
        self._latest_states: dict[int, tuple[bytes, int]] = {}
        # The last message sent: (sequence, topic index, CDR, monotonic ns when sent).
        self._previous_data: tuple[int, int, bytes, int] | None = None
        self.oversized = 0
        # Age of arriving commands (stamp at the other site to arrival here, wall clocks); one
        # stamped further ahead than the clocks may disagree, or older than the histogram
        # holds, is counted as out of range.
        self._aged_topics = frozenset(topic.index for topic in config.incoming
                                      if topic.stamped and topic.qos == Qos.COMMAND)
        self.command_age = LatencyHistogram(tolerance_ms=max_clock_skew_ms)
        self._sequence = 0
        self._send_lock = threading.Lock()  # sequences must leave in order on every link
        self._lock = threading.Lock()  # health, shared by the receive and heartbeat threads
        self._stop = threading.Event()
        self._receiver = threading.Thread(target=self._receive_loop, name="bridge_receive",
                                          daemon=True)
        # Video: per outgoing topic, its next frame number and the fragments still to send;
        # per incoming topic, its frames being reassembled.
        self.video = VideoCounters()
        self._video_numbers = {topic.index: transport.first_frame_number()
                               for topic in config.outgoing if topic.qos == Qos.VIDEO}
        self._video_queues: dict[int, deque[bytes]] = {index: deque()
                                                       for index in self._video_numbers}
        self._video_ready = threading.Condition()
        self._video_pacer = transport.Pacer(VIDEO_CAP_MBPS * 1e6 / 8, VIDEO_BURST_BYTES)
        self._assemblers = {topic.index: transport.FrameAssembler(VIDEO_DEADLINE_NS)
                            for topic in config.incoming if topic.qos == Qos.VIDEO}
        self._video_sender = threading.Thread(target=self._video_loop, name="bridge_video",
                                              daemon=True) if self._video_numbers else None

    def start(self) -> None:
        self._receiver.start()
        if self._video_sender is not None:
            self._video_sender.start()

    def close(self) -> None:
        self._stop.set()
        with self._video_ready:
            self._video_ready.notify()
        for thread in (self._receiver, self._video_sender):
            if thread is not None and thread.is_alive():
                thread.join(timeout=2.0)
        for link in self.links:
            link.sock.close()

    # Sending -----------------------------------------------------------------------------

    def send(self, topic_index: int, message: bytes) -> bool:
        """Send one message's CDR bytes on every link, with the previous message too if it
        fits; False if the message alone is too large for a datagram."""
        if len(message) > max_message_bytes():
            self.oversized += 1
            return False
        with self._send_lock:
            self._send_data(topic_index, message)
            if topic_index in self._state_topics:
                self._latest_states[topic_index] = (message, time.monotonic_ns())
        if topic_index in self._command_topics:
            self.commands_sent += 1
        return True

    def send_video(self, topic_index: int, frame: bytes) -> None:
        """Queue a video topic's message (a compressed frame, CDR bytes) for the video thread,
        in fragments with parity for the links' loss now; what is left of this topic's previous
        frame is dropped. ValueError if the frame needs more than transport.MAX_BLOCKS
        fragments."""
        k = transport.data_blocks(len(frame), max_payload_bytes())
        parity = transport.parity_blocks(k, self._video_loss_rate())
        number = self._video_numbers[topic_index]
        self._video_numbers[topic_index] = (number + 1) % (1 << 32)
        fragments = transport.fragment_frame(number, max(header_stamp_ns(frame) or 0, 0), frame,
                                             False, parity=parity,
                                             payload_bytes=max_payload_bytes())
        with self._video_ready:
            queue = self._video_queues[topic_index]
            if queue:
                self.video.frames_superseded += 1
            queue.clear()
            queue.extend(fragments)
            self.video.frames_sent += 1
            self._video_ready.notify()

    def _video_loss_rate(self) -> float:
        """The chance that a fragment is lost on every link, from the links' loss as measured
        on what the peer sends (a link DOWN loses everything)."""
        rate = 1.0
        with self._lock:  # the two figures alone: a whole snapshot sorts every link's samples
            for monitor in self.health.links.values():
                rate *= 1.0 if monitor.state == LinkState.DOWN else monitor.loss_percent() / 100.0
        return min(rate, 1.0)

    def _video_loop(self) -> None:
        """Send queued fragments, the topics in turn, each when the pacer lets it go."""
        turn = deque(self._video_queues)
        while not self._stop.is_set():
            with self._video_ready:
                while not any(self._video_queues.values()) and not self._stop.is_set():
                    self._video_ready.wait()
                if self._stop.is_set():
                    return
                while not self._video_queues[turn[0]]:
                    turn.rotate(-1)
                topic_index = turn[0]
                fragment = self._video_queues[topic_index].popleft()
                turn.rotate(-1)
            wait_ns = self._video_pacer.wait_ns(len(fragment), time.monotonic_ns())
            if wait_ns and self._stop.wait(wait_ns * 1e-9):
                return
            self._video_pacer.take(len(fragment), time.monotonic_ns())
            with self._send_lock:
                self._send_everywhere(MessageKind.VIDEO, topic_index, fragment)
            self.video.fragments_sent += 1
            self.video.bytes_sent += len(fragment)

    def refresh_states(self, unsent_for_ns: int = 0) -> None:
        """Send again the latest message of every state topic not sent for unsent_for_ns. A
        state is sent once, on change; one lost with both links down would leave the other
        site with a stale value for good. A state its publisher repeats more often than that
        needs no help, and a copy would reach the other site's readers twice (a CRTK client
        expects each operating state newer than the last). Under the send lock, so that a
        newer value sent meanwhile cannot be overtaken."""
        with self._send_lock:
            now_ns = time.monotonic_ns()
            for topic_index, (message, sent_ns) in self._latest_states.items():
                if now_ns - sent_ns >= unsent_for_ns:
                    self._send_data(topic_index, message)

    def _send_data(self, topic_index: int, message: bytes) -> None:
        """Needs _send_lock."""
        now_ns = time.monotonic_ns()
        previous = self._previous_data
        recent = previous is not None and now_ns - previous[3] <= REDUNDANCY_WINDOW_NS
        sequence = self._send_everywhere(MessageKind.DATA, topic_index,
                                         pack_data(message, previous[:3] if recent else None))
        self._previous_data = (sequence, topic_index, message, now_ns)
        self.sent += 1

    def send_heartbeat(self) -> None:
        now_ns = time.monotonic_ns()
        answers = _ANSWERS.pack(self.peer_id or self._candidate_id)
        echoes = b"".join(echo(link, now_ns) for link in self.links)
        with self._send_lock:
            self._send_everywhere(MessageKind.HEARTBEAT, 0, answers + echoes)

    def _send_everywhere(self, kind: MessageKind, topic_index: int, payload: bytes) -> int:
        """Send under the next sequence number on every link; returns it. Needs _send_lock:
        sequences must leave in order on every link."""
        self._sequence += 1
        timestamp_ns = time.monotonic_ns()
        for link in self.links:
            datagram = self.codec.encode(kind, link.index, self._sequence, timestamp_ns,
                                         topic_index, payload)
            try:
                link.sock.sendto(datagram, link.peer)
            except OSError:
                # A link whose interface is down: the other links carry the datagram.
                link.send_errors += 1
        return self._sequence

    # Receiving ---------------------------------------------------------------------------

    def _receive_loop(self) -> None:
        sockets = [link.sock for link in self.links]
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                deadline = self.health.next_deadline(now)
            wait = _IDLE_WAIT_S if deadline is None else min(_IDLE_WAIT_S, deadline - now)
            try:
                ready, _, _ = select.select(sockets, [], [], max(0.0, wait))
            except (OSError, ValueError):
                return  # sockets closed: shutting down
            for sock in ready:
                self._drain(self._by_fileno[sock.fileno()])
            with self._lock:
                changes = self.health.update(time.monotonic())
            if changes:
                self._health_changed(changes)

    def _drain(self, link: _Link) -> None:
        realtime_to_monotonic_ns = time.monotonic_ns() - time.time_ns()
        while True:
            try:
                datagram, ancillary, _, _ = link.sock.recvmsg(MAX_DATAGRAM_BYTES + 1,
                                                              _ANCILLARY_BYTES)
            except OSError:  # nothing left to read (BlockingIOError), or closed
                return
            now_ns = time.monotonic_ns()
            arrival_ns = now_ns
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack(data)
                    arrival_ns = min(now_ns, seconds * 1_000_000_000 + nanoseconds
                                     + realtime_to_monotonic_ns)
            self._receive(link, datagram, arrival_ns)

    def _receive(self, link: _Link, raw: bytes, arrival_ns: int) -> None:
        try:
            header = self.codec.header(raw)
            rejected = self._rejected_unread(link, header, arrival_ns)
            if rejected:
                self.drops.record(rejected)
                return
            datagram = self.codec.authenticate(raw, header)
        except WireError as error:
            self.drops.record(error.reason)
            return
        if datagram.sender_id == self.peer_id:
            self._peer_heard_ns = arrival_ns
        elif not self._trust(datagram):
            self.untrusted_discarded += 1
            return
        if datagram.kind == MessageKind.DATA:
            try:
                message, previous = unpack_data(datagram.payload)
            except WireError as error:
                self.drops.record(error.reason)
                return
        fresh = self._window.accept(datagram.sequence)
        link.window.accept(datagram.sequence)
        now = arrival_ns * 1e-9
        with self._lock:
            monitor = self.health.links[link.config.name]
            counted = monitor.on_datagram(now, datagram.sequence, datagram.timestamp_ns,
                                          len(raw))
            # A heartbeat too old for the link's window is no round trip of the link now.
            if counted and datagram.kind == MessageKind.HEARTBEAT:
                link.echo = (datagram.timestamp_ns, arrival_ns)
                self._take_echo(link, datagram.payload, now)
        if datagram.kind == MessageKind.DATA:
            if previous is not None and self._window.accept(previous[0]):
                self.recovered += 1
                self._deliver_data(previous[1], previous[2])
            if fresh:
                self._deliver_data(datagram.topic_index, message)
            else:
                self.duplicates_discarded += 1
        elif datagram.kind == MessageKind.VIDEO:
            if fresh:
                self._take_fragment(datagram.topic_index, datagram.payload, arrival_ns)
            else:
                self.duplicates_discarded += 1

    def _rejected_unread(self, link: _Link, header, arrival_ns: int) -> str:
        """Why a datagram is dropped on its header alone, before any cryptography ("" if it is
        to be authenticated): what bounds the cost of a flood of forged datagrams."""
        if header.link_id != link.index:
            return "wrong link"  # relabelled or misrouted
        if header.sender_id == self.peer_id:
            # Seen on this link before: a recorded copy replayed (or a duplicate the network
            # made). It proves nothing about the link now, so the link's health never sees it.
            return "" if link.window.is_new(header.sequence) else "replayed"
        if arrival_ns - self._peer_heard_ns < self._link_timeout_ns:
            # The trusted peer is alive: no other sender is (a restarted peer is heard once the
            # old one has been silent for the link timeout), so no key derivation for one.
            return "unknown sender"
        if not self.codec.knows(header.sender_id) and not self._derivations.take(arrival_ns):
            return "unknown sender over budget"
        return ""

    def _take_fragment(self, topic_index: int, fragment: bytes, arrival_ns: int) -> None:
        assembler = self._assemblers.get(topic_index)
        if assembler is None:  # not a video topic this site receives: misconfigured peer
            self.video.fragments_unexpected += 1
            return
        for frame in assembler.add(fragment, arrival_ns):
            self._deliver(topic_index, frame.data)

    def video_assembly(self) -> dict[int, transport.AssemblyCounters]:
        """Each incoming video topic's reassembly counters, by topic index."""
        return {index: assembler.counters for index, assembler in self._assemblers.items()}

    def _deliver_data(self, topic_index: int, message: bytes) -> None:
        self.delivered += 1
        if topic_index in self._command_topics_in:
            self.commands_delivered += 1
        if topic_index in self._aged_topics:
            stamp_ns = header_stamp_ns(message)
            if stamp_ns is not None:
                self.command_age.add((time.time_ns() - stamp_ns) * 1e-6)
        self._deliver(topic_index, message)

    def _trust(self, datagram) -> bool:
        """Whether a sender other than the trusted peer becomes the trusted peer: only when its
        heartbeat answers our own id (see the module docstring)."""
        sender = datagram.sender_id
        if sender in self._replaced_ids or datagram.kind != MessageKind.HEARTBEAT:
            return False
        if len(datagram.payload) < _ANSWERS.size:
            return False
        self._candidate_id = sender
        (answered,) = _ANSWERS.unpack_from(datagram.payload)
        if answered != self.codec.sender_id:
            return False
        if self.peer_id:
            self._replaced_ids.add(self.peer_id)
        self.peer_id = sender
        self._window = AntiReplayWindow()
        for link in self.links:
            link.window = AntiReplayWindow()
        return True

    def _take_echo(self, link: _Link, payload: bytes, now: float) -> None:
        """Round trip of this link from the echo of our own heartbeat the peer sent on it."""
        for offset in range(_ANSWERS.size, len(payload) - _ECHO.size + 1, _ECHO.size):
            link_index, echoed_ns, held_ns = _ECHO.unpack_from(payload, offset)
            if link_index == link.index and echoed_ns:
                self.health.links[link.config.name].on_heartbeat_reply(
                    now, (echoed_ns + held_ns) * 1e-9)

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            return self.health.snapshot(time.monotonic())
