"""The UDP link relay on loopback: datagrams pass unchanged and on time, the counters account for
every drop (outages, a cut link, unknown or foreign peers), stop() frees everything, and the
command line refuses bad arguments in one line.

Timing assertions are generous and waits are on conditions with timeouts: the suite must pass on
a loaded 2-core machine.
"""

import socket
import statistics
import struct
import threading
import time

import pytest
from waiting import wait_for

from telesurg.linkem.model import PROFILES, LinkProfile, Outage
from telesurg.linkem.relay import THREAD_NAME, LinkRelay, main, serve_together

LOOPBACK = "127.0.0.1"
RECEIVE_TIMEOUT_S = 2.0
# A stream datagram: sequence number and send time (perf_counter), padded to STREAM_BYTES.
STREAM_HEADER = struct.Struct("!Id")
STREAM_BYTES = 200


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(RECEIVE_TIMEOUT_S)
    return sock


@pytest.fixture
def peers():
    """The A and B endpoints: two bound sockets standing for the master and patient bridges."""
    a, b = _udp_socket(), _udp_socket()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def relay_between(peers):
    """Starts a relay between the peers (peer addresses configured); stopped after the test."""
    relays = []

    def start(profile: LinkProfile, **options) -> LinkRelay:
        a, b = peers
        relay = LinkRelay(profile, (LOOPBACK, 0), (LOOPBACK, 0), a_peer=a.getsockname(),
                          b_peer=b.getsockname(), **options)
        relays.append(relay)
        return relay.start()

    yield start
    for relay in relays:
        relay.stop()


def _stream(relay, peers, count, period_s):
    """Send count sequence-numbered datagrams A->B every period_s; (seq, latency s) received.

    Stops receiving at the last datagram or after RECEIVE_TIMEOUT_S of silence.
    """
    a, b = peers
    received = []

    def receive():
        while True:
            try:
                payload = b.recv(2048)
            except TimeoutError:
                return
            seq, sent_at = STREAM_HEADER.unpack_from(payload)
            received.append((seq, time.perf_counter() - sent_at))
            if seq == count - 1:
                return

    receiver = threading.Thread(target=receive)
    receiver.start()
    padding = bytes(STREAM_BYTES - STREAM_HEADER.size)
    start = time.perf_counter()
    for seq in range(count):
        wait_s = start + seq * period_s - time.perf_counter()
        if wait_s > 0:
            time.sleep(wait_s)
        a.sendto(STREAM_HEADER.pack(seq, time.perf_counter()) + padding, relay.a_address)
    receiver.join()
    return received


def test_datagrams_pass_both_ways_unchanged(peers, relay_between):
    a, b = peers
    relay = relay_between(PROFILES["perfect"])
    for size in (0, 1, 200, 1199):
        forward = bytes(i % 256 for i in range(size))
        backward = bytes(255 - byte for byte in forward)
        a.sendto(forward, relay.a_address)
        assert b.recvfrom(2048) == (forward, relay.b_address)
        b.sendto(backward, relay.b_address)
        assert a.recvfrom(2048) == (backward, relay.a_address)
    stats = relay.stats()
    assert stats.a_to_b.received == stats.a_to_b.delivered == 4
    assert stats.b_to_a.received == stats.b_to_a.delivered == 4


@pytest.mark.parametrize("profile_name", ["lan", "perfect"])
def test_1khz_stream_arrives_complete_in_order_and_promptly(peers, relay_between, profile_name):
    count = 2000
    profile = PROFILES[profile_name]
    relay = relay_between(profile)
    received = _stream(relay, peers, count, period_s=1e-3)
    assert [seq for seq, _ in received] == list(range(count))
    added_ms = sorted(1e3 * latency - profile.delay_ms for _, latency in received)
    p50, p90, p99 = (added_ms[int(count * q)] for q in (0.5, 0.9, 0.99))
    print(f"\n{profile_name}: relay-added latency p50 {p50:.3f} ms, p90 {p90:.3f} ms, "
          f"p99 {p99:.3f} ms, max {added_ms[-1]:.3f} ms")
    # p50 would show a relay that rounds its waits to milliseconds, p99 one that stalls. Idle,
    # p99 is ~0.4 ms, but at a load average of 7 on 2 cores it reached 16 ms: hence 50.
    assert p50 < 0.5 and p99 < 50.0


def test_delay_of_the_profile_is_applied(peers, relay_between):
    delay_ms = 20.0
    relay = relay_between(LinkProfile(delay_ms=delay_ms))
    latencies_ms = [1e3 * latency for _, latency in
                    _stream(relay, peers, count=20, period_s=10e-3)]
    assert len(latencies_ms) == 20
    # Never early (clock rounding aside); the fastest on time even when the machine is loaded.
    assert delay_ms - 0.05 <= min(latencies_ms) < delay_ms + 3.0
    assert statistics.median(latencies_ms) < delay_ms + 10.0


def test_an_outage_drops_exactly_the_datagrams_sent_in_it(peers, relay_between):
    count, period_s, outage = 1000, 1e-3, Outage(start_s=0.4, duration_s=0.3)
    relay = relay_between(PROFILES["perfect"], outages=(outage,))
    received = [seq for seq, _ in _stream(relay, peers, count, period_s)]
    lost = sorted(set(range(count)) - set(received))
    assert received == sorted(received)
    assert lost == list(range(lost[0], lost[-1] + 1))  # one run: the window
    # About duration / period of them; the sender's pacing on a loaded machine decides exactly.
    assert 0.5 * outage.duration_s / period_s < len(lost) < 1.5 * outage.duration_s / period_s
    stats = relay.stats().a_to_b
    assert stats.received == count
    assert stats.dropped_outage == len(lost)
    assert stats.delivered == len(received)
    assert stats.dropped_model == stats.dropped_down == 0


def test_set_down_drops_everything_in_flight_and_arriving_until_restored(peers,
                                                                         relay_between):
    a, b = peers
    # Long enough that the datagrams are still in flight when the link is cut.
    relay = relay_between(LinkProfile(delay_ms=500.0))
    for _ in range(3):
        a.sendto(b"in flight", relay.a_address)
    assert wait_for(lambda: relay.stats().a_to_b.received == 3)
    relay.set_down(True)
    stats = relay.stats()
    assert stats.down and stats.pending == 0
    assert stats.a_to_b.dropped_down == 3

    a.sendto(b"while down", relay.a_address)
    b.sendto(b"while down", relay.b_address)
    assert wait_for(lambda: relay.stats().b_to_a.dropped_down == 1)
    assert relay.stats().a_to_b.dropped_down == 4

    relay.set_down(False)
    a.sendto(b"restored", relay.a_address)
    b.sendto(b"restored", relay.b_address)
    # Nothing sent before the restore arrives: the first datagram each side gets is the new one.
    assert b.recv(2048) == b"restored"
    assert a.recv(2048) == b"restored"
    stats = relay.stats()
    assert stats.a_to_b.delivered == stats.b_to_a.delivered == 1


def test_pending_deliveries_are_capped_and_the_excess_counted(peers, relay_between):
    a, _ = peers
    relay = relay_between(LinkProfile(delay_ms=10_000.0), max_pending=5)
    for _ in range(8):
        a.sendto(b"queued", relay.a_address)
    assert wait_for(lambda: relay.stats().a_to_b.received == 8)
    stats = relay.stats()
    assert stats.pending == 5 and stats.a_to_b.dropped_overflow == 3


def test_peers_are_learned_from_the_first_datagram_and_others_ignored(peers):
    a, b = peers
    with LinkRelay(PROFILES["perfect"], (LOOPBACK, 0), (LOOPBACK, 0)) as relay, \
            _udp_socket() as stranger:
        b.sendto(b"before A is known", relay.b_address)
        assert wait_for(lambda: relay.stats().b_to_a.dropped_no_peer == 1)
        a.sendto(b"to B", relay.a_address)
        assert b.recv(2048) == b"to B"
        b.sendto(b"to A", relay.b_address)
        assert a.recv(2048) == b"to A"
        stranger.sendto(b"hijack", relay.a_address)
        assert wait_for(lambda: relay.stats().a_to_b.foreign == 1)
        a.sendto(b"still A", relay.a_address)
        assert b.recv(2048) == b"still A"
        assert relay.stats().a_to_b.received == 2


def test_links_served_together_share_one_thread_and_keep_their_own_delays():
    """The demo's links a and b, relayed by one thread: each with its own delay and peers;
    a relay of the group cannot be started again, and stopping one stops the thread."""
    ends = [_udp_socket() for _ in range(4)]
    slow_a, slow_b, fast_a, fast_b = ends
    slow = LinkRelay(LinkProfile(delay_ms=150.0), (LOOPBACK, 0), (LOOPBACK, 0),
                     a_peer=slow_a.getsockname(), b_peer=slow_b.getsockname())
    fast = LinkRelay(PROFILES["perfect"], (LOOPBACK, 0), (LOOPBACK, 0),
                     a_peer=fast_a.getsockname(), b_peer=fast_b.getsockname())
    try:
        server = serve_together([slow, fast])
        assert [t.name for t in threading.enumerate()].count(THREAD_NAME) == 1
        with pytest.raises(RuntimeError, match="starts once"):
            fast.start()
        sent = time.perf_counter()
        slow_a.sendto(b"slow", slow.a_address)
        fast_a.sendto(b"fast", fast.a_address)
        assert fast_b.recv(2048) == b"fast"
        fast_at = time.perf_counter() - sent
        assert slow_b.recv(2048) == b"slow"
        slow_at = time.perf_counter() - sent
        assert fast_at < 0.1  # not held back behind the slow link's pending delivery
        assert slow_at >= 0.145
        fast_b.sendto(b"back", fast.b_address)
        assert fast_a.recv(2048) == b"back"
        fast.stop()
        assert server.finished.wait(1.0) and not slow.running
    finally:
        for relay in (slow, fast):
            relay.stop()
        for sock in ends:
            sock.close()


def test_stop_ends_the_thread_at_once_and_frees_the_ports(peers, relay_between):
    a, _ = peers
    relay = relay_between(LinkProfile(delay_ms=10_000.0))
    a.sendto(b"never delivered", relay.a_address)
    assert wait_for(lambda: relay.stats().pending == 1)
    ports = [relay.a_address[1], relay.b_address[1]]
    started = time.monotonic()
    relay.stop()
    assert time.monotonic() - started < 1.0  # not waiting for the pending delivery
    assert not relay.running
    assert not any(thread.name == THREAD_NAME for thread in threading.enumerate())
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, port))
    relay.stop()  # idempotent


def test_cli_relays_for_the_duration_and_prints_a_summary(capsys):
    assert main(["--profile", "lan", "--a", f"{LOOPBACK}:0", "--b", f"{LOOPBACK}:0",
                 "--outage", "1+2", "--duration", "0.2"]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert "A->B received=0" in summary and "B->A received=0" in summary


@pytest.mark.parametrize(("arguments", "complaint"), [
    (["--profile", "dialup"], "unknown profile 'dialup'"),
    (["--profile", "lan", "--a-peer", f"{LOOPBACK}:0"], "--a-peer"),
    (["--profile", "lan", "--b", "localhost"], "--b"),
    (["--profile", "lan", "--b", f"{LOOPBACK}:70000"], "--b"),
    (["--profile", "lan", "--outage", "5"], "START+DURATION"),
    (["--profile", "lan", "--a", "no-such-host.invalid:5000"], "no-such-host.invalid:5000"),
])
def test_cli_refuses_bad_arguments_in_one_line(capsys, arguments, complaint):
    defaults = {"--a": f"{LOOPBACK}:0", "--b": f"{LOOPBACK}:0"}
    defaults.update(zip(arguments[::2], arguments[1::2], strict=True))
    assert main([word for item in defaults.items() for word in item]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and complaint in error and "Traceback" not in error


def test_cli_refuses_a_port_in_use(capsys):
    with _udp_socket() as taken:
        port = taken.getsockname()[1]
        assert main(["--profile", "lan", "--a", f"{LOOPBACK}:{port}",
                     "--b", f"{LOOPBACK}:0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "in use" in error and f":{port}" in error
