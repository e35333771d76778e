"""A UDP relay that emulates one network link between two endpoints, in both directions.

The bridges at the master and patient sites send their datagrams to the relay instead of to each
other. A datagram from the A peer arriving on side A's socket is run through a LinkModel (A->B,
seeded with seed) and sent from side B's socket to the B peer at each delivery time the model
gives; B->A works the same way with its own model (seed + 1). No rclpy.

Peers: each side's peer address is either configured or learned from the first datagram that
side receives, and is then fixed: datagrams from any other address are counted as foreign and
ignored, so a stray sender cannot hijack the link. A datagram whose destination peer is not
known yet has nowhere to go and is dropped (dropped_no_peer).

set_down(True) cuts the link like a cut cable: datagrams arriving while it is down are dropped,
and so are those already in flight (the pending deliveries are discarded at the cut).
set_down(False) restores it. Scheduled outages (see linkem.Outage) are the model's, on a clock
that starts at start(); the relay only tells their drops apart from other losses.

One thread waits in select() with a timeout equal to the time to the next pending delivery (a
heap), so deliveries leave on time to within the scheduler's wake-up latency (~0.1 ms on an idle
machine), or up to TIMER_SLACK_S early. The pending heap is capped (max_pending); beyond it
datagrams are dropped and counted. Several relays can share that thread (serve_together: the demo's
links a and b), so that what the bridges send on every link at once costs one wake-up, not one per
link.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, fields, replace

from telesurg.linkem.model import ALL_LINKS, PROFILES, LinkModel, LinkProfile, Outage, parse_outage

Address = tuple[str, int]

# Relay any UDP datagram unchanged, not only the bridges' (< 1200 bytes).
MAX_DATAGRAM_BYTES = 65535
# 16 s of a 1 kHz stream in flight; at most ~20 MB of 1200-byte datagrams.
DEFAULT_MAX_PENDING = 16384
# Room for bursts while the relay thread waits for the CPU (the kernel may cap it lower).
SOCKET_BUFFER_BYTES = 1 << 20
# Reads from one socket per wake-up, so a flood on one side cannot hold back due deliveries.
READS_PER_WAKE = 64
# A delivery due this soon leaves in the current wake-up rather than after another one: waking
# a thread takes about as long (the kernel's own timer slack is 50 us), and on the lan profile
# (0.1 ms) a second wake-up per datagram was half the relay's CPU.
TIMER_SLACK_S = 0.0002
THREAD_NAME = "telesurg-link-relay"


@dataclass
class DirectionStats:
    """Counters of one direction of the link, in datagrams."""

    received: int = 0  # from the sending peer
    delivered: int = 0  # copies sent to the receiving peer (a duplicated datagram counts twice)
    dropped_model: int = 0  # lost on the wire or to a full queue, as the profile says
    dropped_outage: int = 0  # sent during a scheduled outage
    dropped_down: int = 0  # sent while the link was cut, or in flight when it was cut
    dropped_overflow: int = 0  # the relay's pending deliveries were at max_pending
    dropped_no_peer: int = 0  # the receiving peer's address was not known yet
    send_failed: int = 0  # the socket refused to send (buffer full, network unreachable)
    foreign: int = 0  # from an address other than the sending peer: ignored, not received

    def summary(self) -> str:
        return " ".join(f"{field.name}={getattr(self, field.name)}" for field in fields(self))


@dataclass(frozen=True)
class RelayStats:
    """A consistent snapshot of a relay's counters."""

    a_to_b: DirectionStats
    b_to_a: DirectionStats
    down: bool  # cut by set_down
    pending: int  # deliveries waiting for their time
    elapsed_s: float  # since start()

    def summary(self) -> str:
        return (f"{self.elapsed_s:.1f} s, A->B {self.a_to_b.summary()} | "
                f"B->A {self.b_to_a.summary()}")


@dataclass
class _Side:
    """One end of the link: the relay's socket there and the peer it talks to."""

    sock: socket.socket
    peer: tuple | None  # a socket address; None until learned from the first datagram


@dataclass
class _Direction:
    source: _Side
    destination: _Side
    model: LinkModel
    stats: DirectionStats


def format_address(address) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _open_socket(address: Address) -> socket.socket:
    """A non-blocking UDP socket bound to address; OSError naming the address if it cannot."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(*address, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as error:
        raise OSError(error.errno, f"{format_address(address)}: {error.strerror}") from error
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"{format_address(address)}: {error.strerror}") from error
    sock.setblocking(False)
    return sock


def _resolve_peer(address: Address, family: int) -> tuple:
    try:
        return socket.getaddrinfo(*address, family=family, type=socket.SOCK_DGRAM)[0][4]
    except OSError as error:
        raise OSError(error.errno, f"peer {format_address(address)}: {error.strerror}") from error


class LinkRelay:
    """One emulated link between side A and side B, both directions, relayed by one thread.

    Binds both sockets at construction (port 0 picks a free port: see a_address, b_address);
    start() begins relaying in a thread of its own (or serve_together, in one shared with other
    relays), stop() ends it. Also a context manager: start on entry, stop on exit.
    """

    def __init__(self, profile: LinkProfile, a: Address, b: Address, *,
                 a_peer: Address | None = None, b_peer: Address | None = None, seed: int = 0,
                 outages: tuple[Outage, ...] = (), max_pending: int = DEFAULT_MAX_PENDING):
        if max_pending < 1:
            raise ValueError(f"LinkRelay.max_pending must be at least 1, got {max_pending}")
        self.profile = profile
        self._max_pending = max_pending
        self._sockets: list[socket.socket] = []
        try:
            side_a, side_b = (self._open_side(address, peer)
                              for address, peer in ((a, a_peer), (b, b_peer)))
        except BaseException:
            self._close_sockets()
            raise
        self._a_to_b = _Direction(side_a, side_b, LinkModel(profile, seed, outages),
                                  DirectionStats())
        self._b_to_a = _Direction(side_b, side_a, LinkModel(profile, seed + 1, outages),
                                  DirectionStats())
        self._direction_from = {direction.source.sock: direction
                                for direction in (self._a_to_b, self._b_to_a)}
        # (delivery time, arrival order, direction, payload): the order breaks ties, so
        # datagrams due at the same time leave in the order they came.
        self._pending: list[tuple[float, int, _Direction, bytes]] = []
        self._arrival_order = itertools.count()
        self._down = False
        self._start_time: float | None = None
        self._server: RelayThread | None = None  # the thread that relays for it, once started
        self._stopped = False
        # Held by the relay thread while it handles datagrams, so the counters, the heap and the
        # link state change together as seen from stats() and set_down().
        self._lock = threading.Lock()

    def _open_side(self, address: Address, peer: Address | None) -> _Side:
        sock = _open_socket(address)
        self._sockets.append(sock)
        return _Side(sock, None if peer is None else _resolve_peer(peer, sock.family))

    @property
    def a_address(self) -> tuple:
        """Where side A listens: the A peer sends here and receives from here."""
        return self._a_to_b.source.sock.getsockname()

    @property
    def b_address(self) -> tuple:
        return self._b_to_a.source.sock.getsockname()

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    def start(self) -> LinkRelay:
        """Relay in a thread of its own."""
        RelayThread([self]).start()
        return self

    def stop(self) -> None:
        """Stop relaying (pending deliveries are discarded; a shared thread stops for every
        relay it serves), join the thread, close the sockets.

        Idempotent; also the way to release the sockets of a relay never started.
        """
        self._stopped = True
        if self._server is not None:
            self._server.stop()
        self._close_sockets()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the relay thread ends (stop(), or a failure) or timeout seconds pass.

        True if it has ended. Unlike Thread.join, safe to interrupt with Ctrl-C: in Python 3.11
        an interrupted join marks the thread as stopped while it still runs.
        """
        if self._server is None:
            raise RuntimeError("the relay was never started")
        return self._server.finished.wait(timeout)

    def __enter__(self) -> LinkRelay:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def set_down(self, down: bool) -> None:
        """Cut (True) or restore (False) both directions; a cut also loses what is in flight."""
        with self._lock:
            if down:
                for _, _, direction, _ in self._pending:
                    direction.stats.dropped_down += 1
                self._pending.clear()
            self._down = down

    def stats(self) -> RelayStats:
        with self._lock:
            return RelayStats(a_to_b=replace(self._a_to_b.stats),
                              b_to_a=replace(self._b_to_a.stats), down=self._down,
                              pending=len(self._pending), elapsed_s=self._clock())

    def _clock(self) -> float:
        """Seconds since start(): the model's (and the outages') clock."""
        return 0.0 if self._start_time is None else time.monotonic() - self._start_time

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _time_to_next_delivery(self) -> float | None:
        with self._lock:  # set_down() may empty the heap meanwhile
            return max(0.0, self._pending[0][0] - self._clock()) if self._pending else None

    def _relay(self, readable: set) -> None:
        """Take what arrived on the readable sockets, send what is due."""
        with self._lock:
            for sock, direction in self._direction_from.items():
                if sock in readable:
                    self._receive(direction)
            self._deliver_due()

    def _receive(self, direction: _Direction) -> None:
        for _ in range(READS_PER_WAKE):
            try:
                payload, sender = direction.source.sock.recvfrom(MAX_DATAGRAM_BYTES)
            except OSError:  # nothing left to read, or an ICMP error report (no datagram)
                return
            self._accept(direction, payload, sender, self._clock())

    def _accept(self, direction: _Direction, payload: bytes, sender: tuple, t: float) -> None:
        source, stats = direction.source, direction.stats
        if source.peer is None:
            source.peer = sender
        elif sender[:2] != source.peer[:2]:
            stats.foreign += 1
            return
        stats.received += 1
        if direction.destination.peer is None:
            stats.dropped_no_peer += 1
            return
        if self._down:
            stats.dropped_down += 1
            return
        delivery_times = direction.model.schedule(t, len(payload))
        if not delivery_times:
            if any(outage.covers(t) for outage in direction.model.outages):
                stats.dropped_outage += 1
            else:
                stats.dropped_model += 1
        for delivery_time in delivery_times:
            if len(self._pending) >= self._max_pending:
                stats.dropped_overflow += 1
            else:
                heapq.heappush(self._pending,
                               (delivery_time, next(self._arrival_order), direction, payload))

    def _deliver_due(self) -> None:
        now = self._clock() + TIMER_SLACK_S
        while self._pending and self._pending[0][0] <= now:
            _, _, direction, payload = heapq.heappop(self._pending)
            destination = direction.destination
            try:
                destination.sock.sendto(payload, destination.peer)
            except OSError:
                direction.stats.send_failed += 1
            else:
                direction.stats.delivered += 1


class RelayThread:
    """One thread relaying for one or more LinkRelays: one select() over all their sockets,
    with the timeout to the earliest pending delivery of any of them."""

    def __init__(self, relays: list[LinkRelay]):
        if not relays:
            raise ValueError("RelayThread needs at least one relay")
        if any(relay._server is not None or relay._stopped for relay in relays):
            raise RuntimeError("a LinkRelay starts once, and not after stop()")
        for relay in relays:
            relay._server = self
        self.relays = list(relays)
        # Woken by stop(): select() then returns at once rather than at the next delivery.
        self._wake_receiver, self._wake_sender = socket.socketpair()
        self._stopping = False
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.finished.is_set()

    def start(self) -> RelayThread:
        started = time.monotonic()
        for relay in self.relays:
            relay._start_time = started
        self._thread.start()
        return self

    def stop(self) -> None:
        """Idempotent: stop relaying and join the thread (the relays' sockets stay open)."""
        if not self._stopping:
            self._stopping = True
            if self.running:
                self._wake_sender.send(b"\0")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        for sock in (self._wake_receiver, self._wake_sender):
            sock.close()

    def _run(self) -> None:
        try:
            watched = [self._wake_receiver,
                       *(sock for relay in self.relays for sock in relay._direction_from)]
            while not self._stopping:
                due = [t for relay in self.relays
                       if (t := relay._time_to_next_delivery()) is not None]
                # select(), not poll() or epoll: those round the timeout up to whole ms.
                readable, _, _ = select.select(watched, [], [], min(due) if due else None)
                readable = set(readable)
                for relay in self.relays:
                    relay._relay(readable)
        finally:
            self.finished.set()


def serve_together(relays: list[LinkRelay]) -> RelayThread:
    """Start relaying for all of relays (none started yet) from one thread; stop() on any of
    them, or on the returned RelayThread, stops it."""
    return RelayThread(relays).start()


# The command line: `telesurg linkem`.

PROG = "telesurg linkem"


class _UsageError(Exception):
    pass


class _OneLineErrorParser(argparse.ArgumentParser):
    """Reports a usage error as one line (by main), not argparse's usage text and exit."""

    def error(self, message):
        raise _UsageError(message)


def parse_address(text: str, lowest_port: int = 1) -> Address:
    """(host, port) from HOST:PORT or [IPV6]:PORT, PORT in [lowest_port, 65535], or ValueError."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not lowest_port <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT with PORT in [{lowest_port}, 65535]")
    return host, int(port)


def _argument_type(parse):
    """An argparse type from a parser that raises ValueError with a message worth showing."""
    def parse_argument(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse_argument


def _profile_name(name: str) -> str:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return name


def _outage(text: str) -> Outage:
    # parse_outage reads LINK@START+DURATION; this relay is one link, so it is every link.
    try:
        return parse_outage(f"{ALL_LINKS}@{text}")[1]
    except ValueError:
        raise ValueError(f"outage {text!r} is not START+DURATION in seconds from the start, "
                         f"DURATION > 0 (e.g. 5+2.5)") from None


def _duration(text: str) -> float:
    value = float(text)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"duration {text!r} must be a finite number of seconds >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog=PROG,
        description="Relay UDP datagrams between two endpoints through an emulated network "
                    "link (delay, jitter, loss, outages), both directions.")
    parser.add_argument("--profile", required=True, type=_argument_type(_profile_name),
                        help=f"link profile: {', '.join(PROFILES)}")
    for side in ("a", "b"):
        parser.add_argument(f"--{side}", required=True,
                            type=_argument_type(lambda text: parse_address(text, 0)),
                            metavar="HOST:PORT",
                            help=f"where side {side.upper()} listens (port 0: any free port)")
        parser.add_argument(f"--{side}-peer", type=_argument_type(parse_address),
                            metavar="HOST:PORT",
                            help=f"the side {side.upper()} endpoint (default: the sender of the "
                                 f"first datagram side {side.upper()} receives)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the A->B model; B->A uses SEED+1 (default: 0)")
    parser.add_argument("--outage", type=_argument_type(_outage), action="append", default=[],
                        metavar="START+DURATION",
                        help="link down for DURATION seconds from START seconds after the "
                             "start (repeatable)")
    parser.add_argument("--duration", type=_argument_type(_duration), default=0.0,
                        help="seconds to run; 0 = until Ctrl-C (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    try:
        relay = LinkRelay(PROFILES[args.profile], args.a, args.b, a_peer=args.a_peer,
                          b_peer=args.b_peer, seed=args.seed, outages=tuple(args.outage))
    except OSError as error:
        print(f"{PROG}: error: {error.strerror}", file=sys.stderr)
        return 2
    peers = [format_address(peer) if peer else "learned" for peer in (args.a_peer, args.b_peer)]
    print(f"{PROG}: {args.profile}, A {format_address(relay.a_address)} (peer {peers[0]}) <-> "
          f"B {format_address(relay.b_address)} (peer {peers[1]})", flush=True)
    with relay:
        try:
            failed = relay.wait(args.duration or None)  # ended before it was stopped
        except KeyboardInterrupt:  # the usual way to end an open-ended run
            failed = False
    print(f"{PROG}: {relay.stats().summary()}")
    if failed:
        print(f"{PROG}: error: the relay thread failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
