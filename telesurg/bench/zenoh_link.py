"""`telesurg bench zenoh`: Eclipse Zenoh, what a ROS user would pick for a WAN link instead,
carrying the failover benchmark's stream through the same link emulator with the same link-a
outage, interleaved with telesurg's dual-link bridge pair.

Two Zenoh peers in processes of their own, no router: the subscriber listens on one UDP
endpoint per link; the publisher connects to each link's relay (LinkEmulator) with its socket
bound to the port that relay sends to, so every Zenoh datagram (handshake, keep-alives, data)
crosses the emulator. UDP, not TCP: the emulator relays datagrams, and a latest-wins stream
gains nothing from TCP retransmitting stale commands. The publisher uses what rmw_zenoh maps a
best-effort ROS publisher to: Reliability.BEST_EFFORT, CongestionControl.DROP, not express.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The failover benchmark's stream and outage: 1 kHz over the transcontinental fiber profile,
# link a cut for 5 s mid-stream.
from telesurg.bench.failover import AFTER_S, BEFORE_S, OUTAGE_S, PROFILE, RATE_HZ

KEY = "telesurg/bench/servo_cp"
LOCALHOST = "127.0.0.1"
# How long a peer waits for the other (a handshake over a 60 ms link takes a few RTTs).
MATCH_TIMEOUT_S = 10.0

CUT_LINK = "a"
ROUNDS = 2


@dataclass(frozen=True)
class ZenohVariant:
    label: str
    links: tuple[str, ...]
    lease_ms: int | None = None  # None: Zenoh's default (10 s)


ZENOH_VARIANTS = {
    # The realistic choice: Zenoh has no redundancy protocol, a session rides one path.
    "zenoh_one_link": ZenohVariant("zenoh, link a", ("a",)),
    # Both paths in one session (transport/unicast/max_links 2), defaults otherwise. Zenoh
    # sends on one of them, whichever handshake finished first: the cut is of that one, as
    # a cut of the other costs nothing.
    "zenoh_two_links": ZenohVariant("zenoh, links a+b (the one in use cut)", ("a", "b")),
    # The same tuned to notice a dead link sooner: its lease is what moves traffic off it.
    "zenoh_two_links_lease_1s": ZenohVariant(
        "zenoh, links a+b (the one in use cut), 1 s lease", ("a", "b"), 1000),
}
SENDING_LINK = None  # as the link to cut: the one the Zenoh publisher sends on
TELESURG = "telesurg_dual_link"


# The two Zenoh peers (processes: python -m telesurg.bench.zenoh_link ROLE ...) --------------

def udp_endpoint(port: int, bind_port: int | None = None) -> str:
    """A Zenoh UDP locator; with bind_port the connecting socket is bound to that port."""
    endpoint = f"udp/{LOCALHOST}:{port}"
    return endpoint if bind_port is None else f"{endpoint}#bind={LOCALHOST}:{bind_port}"


def peer_config(listen: list[str], connect: list[str], max_links: int = 1,
                lease_ms: int | None = None):
    """A peer-mode session on exactly these endpoints: no multicast scouting (it would find
    the other peer over loopback, around the emulator), no default TCP listener."""
    import zenoh

    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("listen/endpoints", json.dumps(listen))
    config.insert_json5("connect/endpoints", json.dumps(connect))
    config.insert_json5("scouting/multicast/enabled", "false")
    config.insert_json5("transport/unicast/max_links", str(max_links))
    if lease_ms is not None:
        config.insert_json5("transport/link/tx/lease", str(lease_ms))
    return config


def _subscribe(args) -> int:
    """Record every sample until stdin closes, then print the arrivals as one JSON line."""
    import zenoh

    from telesurg.bench.stream import read_payload

    arrivals: list[tuple[int, bytes]] = []

    def on_sample(sample) -> None:
        arrivals.append((time.monotonic_ns(), sample.payload.to_bytes()))

    with zenoh.open(peer_config(args.listen, [], args.max_links, args.lease_ms)) as session:
        session.declare_subscriber(KEY, on_sample)
        print("ready", flush=True)
        sys.stdin.read()
    print(json.dumps([[*read_payload(data), received] for received, data in arrivals]),
          flush=True)
    return 0


def _publish(args) -> int:
    """Wait for a matching subscriber over every link and say `ready PORT` (PORT: the local
    port of the link it sends on), then on a line from stdin put the stream; print how many
    were sent, when links were dropped and how many are left, as one JSON line."""
    import zenoh

    from telesurg.bench.stream import make_payload, paced

    dropped_ns: list[int] = []

    def on_link_event(event) -> None:
        if event.kind == zenoh.SampleKind.DELETE:
            dropped_ns.append(time.monotonic_ns())

    config = peer_config([], args.connect, args.max_links, args.lease_ms)
    with zenoh.open(config) as session:
        session.info.declare_link_events_listener(on_link_event)
        publisher = session.declare_publisher(
            KEY, congestion_control=zenoh.CongestionControl.DROP,
            reliability=zenoh.Reliability.BEST_EFFORT)
        deadline = time.monotonic() + MATCH_TIMEOUT_S
        while not (publisher.matching_status.matching
                   and len(session.info.links()) >= args.max_links):
            if time.monotonic() > deadline:
                print(f"no subscriber on {args.max_links} links after {MATCH_TIMEOUT_S:g} s",
                      flush=True)
                return 1
            time.sleep(0.01)
        # A session sends on the first of its links (in the order they joined): in our runs
        # cutting it stopped every delivery, cutting the other none.
        print("ready", session.info.links()[0].src.rpartition(":")[2], flush=True)
        sys.stdin.readline()
        sent = 0
        for sequence in paced(args.rate, args.duration):
            publisher.put(make_payload(sequence, time.monotonic_ns()))
            sent = sequence + 1
        print(json.dumps({"sent": sent, "links_dropped_ns": dropped_ns,
                          "links_at_end": len(session.info.links())}), flush=True)
    return 0


class _Peer:
    """One Zenoh peer process, its stderr in log_path."""

    def __init__(self, role: str, arguments: list[str], log_path: Path):
        from telesurg.session.processes import die_with_parent

        self.role = role
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "telesurg.bench.zenoh_link", role, *arguments],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                preexec_fn=die_with_parent)

    def fail(self, what: str) -> RuntimeError:
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return RuntimeError(f"zenoh {self.role}: {what}" + "".join(
            f"\n  {line}" for line in tail))

    def wait_ready(self) -> str:
        """What follows `ready` in its first line of output."""
        line = self.process.stdout.readline().strip()
        word, _, rest = line.partition(" ")
        if word != "ready":
            raise self.fail(f"not ready ({line or 'exited'})")
        return rest

    def finish(self, timeout_s: float, say: str = ""):
        """Its last line of output, parsed as JSON, once it has exited (stdin closed after
        `say`)."""
        try:
            out, _ = self.process.communicate(say, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise self.fail(f"still running after {timeout_s:g} s") from None
        lines = out.strip().splitlines()
        if self.process.returncode or not lines:
            raise self.fail(f"exited with {self.process.returncode}")
        return json.loads(lines[-1])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


# Streams and outages --------------------------------------------------------------------------

def cut_link(emulated, start_ns: int, name: str, start_s: float, down_s: float
             ) -> tuple[int, int]:
    """Cut link `name` of LinkEmulator from start_s after start_ns for down_s: (cut, restore)
    in monotonic ns, both stamped while the link is down. A command stamped between them is
    lost with the link, unless it is stamped so close to the restore that it leaves after."""
    time.sleep(max(0.0, start_s - (time.monotonic_ns() - start_ns) * 1e-9))
    emulated.set_down(name, True)
    cut_ns = time.monotonic_ns()
    time.sleep(max(0.0, start_s + down_s - (time.monotonic_ns() - start_ns) * 1e-9))
    restore_ns = time.monotonic_ns()
    emulated.set_down(name, False)
    return cut_ns, restore_ns


def stream_figures(sent: int, arrivals: list, outage_ns: tuple[int, int] | None) -> dict:
    """StreamStats.summary of a stream, with (if it had an outage) how many of the commands
    sent during it were sent and delivered."""
    from telesurg.bench.stream import StreamStats

    stats = StreamStats()
    stats.arrivals = [tuple(arrival) for arrival in arrivals]
    figures = stats.summary(sent)
    if outage_ns is not None:
        cut_ns, restore_ns = outage_ns
        figures["delivered_in_outage"] = len({
            sequence for sequence, sent_ns, _ in stats.arrivals if cut_ns <= sent_ns < restore_ns})
    return figures


def zenoh_stream(profile: str, links: tuple[str, ...], rate_hz: float, duration_s: float,
                 cut: tuple[str | None, float, float] | None = None, seed: int = 0,
                 lease_ms: int | None = None) -> tuple[dict, list]:
    """Put rate_hz payloads for duration_s from a Zenoh publisher to a Zenoh subscriber over
    emulated links of this profile, one per name in links: (stream_figures, arrivals).

    cut (link, start_s, down_s): that link (SENDING_LINK: the one the publisher sends on) is
    down from start_s into the stream for down_s; the figures then also have link_dropped_ms,
    when the publisher's Zenoh dropped a link after the cut (None if it did not). Also
    sending_link, the link the publisher sent on at the start, and links_at_end, how many
    links its session had at the end.
    """
    from telesurg.bridge.config import free_udp_ports
    from telesurg.linkem.emulator import LinkEmulator
    from telesurg.linkem.model import PROFILES

    ports = free_udp_ports(2 * len(links))
    publisher_ports, subscriber_ports = ports[::2], ports[1::2]
    session = [f"--max-links={len(links)}"] + ([] if lease_ms is None else
                                               [f"--lease-ms={lease_ms}"])
    outage_ns = None
    with tempfile.TemporaryDirectory(prefix="telesurg-zenoh-") as directory, \
            contextlib.ExitStack() as stack:
        log_dir = Path(directory)
        # The subscriber needs no relay port: it starts while the links do.
        subscriber = _Peer("subscribe", [*session, *(
            f"--listen={udp_endpoint(port)}" for port in subscriber_ports)],
            log_dir / "subscriber.log")
        stack.callback(subscriber.close)
        emulated = stack.enter_context(LinkEmulator(
            [(name, profile, publisher_port, subscriber_port, seed + 2 * index)
             for index, (name, publisher_port, subscriber_port)
             in enumerate(zip(links, publisher_ports, subscriber_ports, strict=True))],
            log_dir / "links.log"))
        subscriber.wait_ready()
        publisher = _Peer("publish", [
            *session, f"--rate={rate_hz}", f"--duration={duration_s}",
            *(f"--connect={udp_endpoint(emulated.ports[name][0], port)}"
              for name, port in zip(links, publisher_ports, strict=True))],
            log_dir / "publisher.log")
        stack.callback(publisher.close)
        sending_link = links[publisher_ports.index(int(publisher.wait_ready()))]
        publisher.process.stdin.write("go\n")
        publisher.process.stdin.flush()
        start_ns = time.monotonic_ns()
        if cut is not None:
            name, start_s, down_s = cut
            outage_ns = cut_link(emulated, start_ns, name or sending_link, start_s, down_s)
        ended = publisher.finish(duration_s + MATCH_TIMEOUT_S)
        time.sleep(PROFILES[profile].delay_ms / 1e3 + 0.5)  # the last payloads are in flight
        arrivals = subscriber.finish(10.0)
    figures = stream_figures(ended["sent"], arrivals, outage_ns)
    figures["sending_link"] = sending_link
    figures["links_at_end"] = ended["links_at_end"]
    if outage_ns is not None:
        dropped = [ns for ns in ended["links_dropped_ns"] if ns >= outage_ns[0]]
        figures["link_dropped_ms"] = (round((dropped[0] - outage_ns[0]) * 1e-6)
                                      if dropped else None)
    return figures, arrivals


# The benchmark --------------------------------------------------------------------------------

def _combined(rounds: list[tuple[dict, list]]) -> dict:
    """One variant's figures over its rounds: latency percentiles of every round's commands
    together; lost, largest gap and the outage figures as medians, with each round's."""
    from telesurg.analysis.metrics import percentiles

    figures = [round_figures for round_figures, _ in rounds]
    combined = {"latency_ms": percentiles([
        (received - sent_ns) * 1e-6 for _, arrivals in rounds
        for _, sent_ns, received in arrivals])}
    for key in ("sent", "lost", "largest_gap_ms", "delivered_in_outage"):
        combined[key] = round(statistics.median(
            round_figures[key] for round_figures in figures), 3)
    for key in ("lost", "largest_gap_ms", "delivered_in_outage", "link_dropped_ms",
                "sending_link", "links_at_end"):
        if key in figures[0]:  # the last three are Zenoh's only
            combined[f"{key}_per_round"] = [round_figures[key] for round_figures in figures]
    return combined


def _rows(label: str, figures: dict) -> list:
    from telesurg.bench import Row

    latency = figures["latency_ms"]
    return [
        Row(label, "latency p50", f"{latency['p50']:.1f} ms"),
        Row(label, "latency p99", f"{latency['p99']:.1f} ms"),
        Row(label, "commands lost (median)",
            f"{figures['lost']:g} of {figures['sent']:g} "
            f"({100.0 * figures['lost'] / figures['sent']:.1f}%)"),
        Row(label, "largest gap (median)", f"{figures['largest_gap_ms']:.0f} ms"),
    ]


def _dropped(figures: dict) -> str:
    delays = figures["link_dropped_ms_per_round"]
    if all(delay is None for delay in delays):
        return "no link was dropped"
    return f"the cut link was dropped after {delays} ms"


def _notes(figures: dict, version: str) -> list[str]:
    from telesurg.linkem.model import PROFILES

    one, two, tuned = (figures[name] for name in ZENOH_VARIANTS)
    sending = two["sending_link_per_round"] + tuned["sending_link_per_round"]
    in_flight = PROFILES[PROFILE].delay_ms * RATE_HZ / 1e3
    kept = all(delay is None for delay in one["link_dropped_ms_per_round"])
    return [
        f"Zenoh {version} (eclipse-zenoh from PyPI): two peers, mode peer, no router, "
        f"multicast scouting off; the subscriber listens on udp/127.0.0.1:PORT per link, the "
        f"publisher connects to each link's relay with #bind=127.0.0.1:PORT, so all its "
        f"traffic crosses the emulator. UDP: the emulator relays datagrams, and stale commands "
        f"are not worth retransmitting. Publisher: Reliability.BEST_EFFORT, "
        f"CongestionControl.DROP, not express, as rmw_zenoh maps a best-effort ROS publisher "
        f"(RELIABLE would change nothing here: a UDP-only session retransmits nothing). Lease "
        f"10 s with 4 keep-alives per lease (defaults) unless stated; two links in one session "
        f"need transport/unicast/max_links 2.",
        f"Stream: {RATE_HZ:g} Hz for {BEFORE_S:g} s, a link cut for {OUTAGE_S:g} s, then "
        f"{AFTER_S:g} s; {PROFILE} on each link; {ROUNDS} rounds, each variant once per round. "
        f"telesurg and one-link Zenoh lose link a. Two-link Zenoh sends on one link only, the "
        f"one whose handshake finished first (a in {sending.count('a')} of {len(sending)} "
        f"sessions here): the cut is of that one, as a cut of the other costs nothing.",
        f"Zenoh, one link: nothing gets through while the link is down, and {_dropped(one)} "
        f"(lease 10 s); lost {one['lost_per_round']} against {OUTAGE_S * RATE_HZ:g} sent during "
        f"the outage + ~{in_flight:g} in flight at the cut"
        f"{': the session outlived the cut, the stream was back with the link' if kept else ''}"
        f".",
        f"Zenoh, two links: {_dropped(two)}; {two['delivered_in_outage_per_round']} of the "
        f"~{OUTAGE_S * RATE_HZ:g} commands sent during the outage arrived. "
        f"With a 1 s lease {_dropped(tuned)}, then the stream went over the other link: "
        f"the largest gap is that lease expiry plus the one-way delay. Links in the session at "
        f"the end: {tuned['links_at_end_per_round']}"
        f"{' (the cut one had not rejoined)' if max(tuned['links_at_end_per_round']) < 2 else ''}"
        f".",
        "telesurg, dual link: every command goes out on both links (PRP) and the first copy "
        "to arrive wins, so the cut of a costs only the copies on a.",
    ]


def _telesurg_round(sites, folder: Path, seed: int) -> tuple[dict, list]:
    """telesurg's bridge pair on links a and b, link a cut as in the Zenoh rounds."""
    from telesurg.bench.bridge_pair import DRAIN_S, bridge_ends
    from telesurg.linkem.model import PROFILES

    with bridge_ends(folder, links=2, profile=PROFILE, seed=seed) as (master, patient,
                                                                       emulated):
        trial = sites.trial(
            master, patient, RATE_HZ, BEFORE_S + OUTAGE_S + AFTER_S,
            during=lambda start_ns: cut_link(emulated, start_ns, CUT_LINK, BEFORE_S, OUTAGE_S),
            drain_s=DRAIN_S + PROFILES[PROFILE].delay_ms / 1e3)
    return stream_figures(trial.sent, trial.arrivals, trial.window_ns), trial.arrivals


def run():
    from importlib.metadata import version

    from telesurg.bench import Result
    from telesurg.bench.bridge_pair import SitePair

    zenoh_version = version("eclipse-zenoh")
    duration_s = BEFORE_S + OUTAGE_S + AFTER_S
    variants = [*ZENOH_VARIANTS, TELESURG]
    rounds: dict[str, list] = {name: [] for name in variants}
    with SitePair() as sites, tempfile.TemporaryDirectory(
            prefix="telesurg-bench-zenoh-") as folder:
        for index in range(ROUNDS):
            seed = 100 * index  # every variant sees the same link randomness in a round
            for name, variant in ZENOH_VARIANTS.items():
                cut = CUT_LINK if len(variant.links) == 1 else SENDING_LINK
                rounds[name].append(zenoh_stream(
                    PROFILE, variant.links, RATE_HZ, duration_s,
                    cut=(cut, BEFORE_S, OUTAGE_S), seed=seed, lease_ms=variant.lease_ms))
            rounds[TELESURG].append(_telesurg_round(sites, Path(folder), seed))
    figures = {name: _combined(variant_rounds) for name, variant_rounds in rounds.items()}
    labels = {name: variant.label for name, variant in ZENOH_VARIANTS.items()}
    labels[TELESURG] = "telesurg, links a+b"
    return Result(
        name="zenoh",
        figures={**figures, "profile": PROFILE, "rate_hz": RATE_HZ, "outage_s": OUTAGE_S,
                 "stream_s": [BEFORE_S, OUTAGE_S, AFTER_S], "rounds": ROUNDS,
                 "zenoh_version": zenoh_version},
        rows=[row for name in variants for row in _rows(labels[name], figures[name])],
        notes=_notes(figures, zenoh_version))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telesurg.bench.zenoh_link",
                                     description="One of the benchmark's Zenoh peers.")
    roles = parser.add_subparsers(dest="role", required=True)
    subscribe = roles.add_parser("subscribe")
    subscribe.add_argument("--listen", action="append", required=True)
    publish = roles.add_parser("publish")
    publish.add_argument("--connect", action="append", required=True)
    publish.add_argument("--rate", type=float, required=True)
    publish.add_argument("--duration", type=float, required=True)
    for role in (subscribe, publish):
        role.add_argument("--max-links", type=int, default=1)
        role.add_argument("--lease-ms", type=int)
    args = parser.parse_args(argv)
    return _subscribe(args) if args.role == "subscribe" else _publish(args)


if __name__ == "__main__":
    sys.exit(main())
