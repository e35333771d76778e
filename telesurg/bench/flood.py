"""flood: how many forged datagrams per second on each link the patient bridge withstands while
it carries a command stream, with no false alarm and at least 99% of the commands delivered.

A keyless attacker on both links sends datagrams that look right up to the authentication tag,
in two kinds, each the costliest of its sort:

- forged_senders: a valid header with a random sender id (each one a key derivation, 20 us, if
  the bridge derived a subkey for every sender it has not met);
- peer_sender: the header of the trusted peer (its sender id is plaintext on the wire), with
  sequence numbers ahead of its own: each one costs a decryption before it fails.

For each kind, the rate per link steps up through RATES_PER_LINK; each step is a trial of its
own: the two bridges (BridgeCores in site processes, straight on loopback) carry COMMAND_RATE_HZ
commands for DURATION_S while a flooder process sends the forged datagrams at the step's rate on
each link. A step holds if no link went DOWN, the peer was never LOST and at least
DELIVERED_FRACTION of the commands arrived; the figure is the highest step that held (and what
the flooder achieved: it is a Python process on the same 2 cores).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from telesurg.bench import Result, Row
from telesurg.bench.bridge_pair import MachineLoad, SitePair, bridge_ends
from telesurg.bridge.wire import MAX_DATAGRAM_BYTES, PROTOCOL_VERSION, MessageKind
from telesurg.contract.topics import PATIENT

RATES_PER_LINK = (10_000, 25_000, 50_000, 75_000, 100_000)
TARGET_PER_LINK = 50_000
DURATION_S = 5.0
COMMAND_RATE_HZ = 500.0
DELIVERED_FRACTION = 0.99
KINDS = ("forged_senders", "peer_sender")
_HEADER = struct.Struct("!BBBQQQH")  # as bridge.wire's: version, kind, link, sender, seq, t, topic
_BODY_BYTES = 200  # a command's size
#: Datagrams a flooder sends between two looks at the clock.
_BURST = 50


def forged_datagrams(kind: str, link_id: int, peer_sender_id: int, count: int,
                     first_sequence: int = 1 << 40) -> list[bytes]:
    """count datagrams of one kind for one link: valid headers, random bodies and tags."""
    datagrams = []
    for i in range(count):
        sender = (int.from_bytes(os.urandom(8), "big") if kind == "forged_senders"
                  else peer_sender_id)
        header = _HEADER.pack(PROTOCOL_VERSION, MessageKind.DATA, link_id, sender,
                              first_sequence + i, time.monotonic_ns(), 0)
        datagrams.append(header + os.urandom(_BODY_BYTES))
    assert len(datagrams[0]) <= MAX_DATAGRAM_BYTES
    return datagrams


def _flood(ports: list[int], kind: str, peer_sender_id: int, rate_per_link: float,
           duration_s: float, sent) -> None:
    """A flooder process: rate_per_link forged datagrams per second to each port (link i at
    ports[i]) for duration_s; the number sent goes in sent.value."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pool = [forged_datagrams(kind, link_id, peer_sender_id, 2000) for link_id in
            range(len(ports))]
    targets = [("127.0.0.1", port) for port in ports]
    count, start = 0, time.monotonic()
    period = _BURST / rate_per_link
    next_burst = start
    while (now := time.monotonic()) < start + duration_s:
        if now < next_burst:
            time.sleep(next_burst - now)
        for i in range(_BURST):
            for datagrams, target in zip(pool, targets, strict=True):
                try:
                    sock.sendto(datagrams[(count + i) % len(datagrams)], target)
                except BlockingIOError:
                    pass
        count += _BURST
        next_burst += period
    sent.value = count


def run_step(pair: SitePair, folder: Path, kind: str, rate_per_link: float,
             duration_s: float = DURATION_S) -> dict:
    """One trial: the command stream with a flood of kind at rate_per_link on both links."""
    with bridge_ends(folder, links=2) as (master, patient, _):
        ports = [port for _, port in _patient_ports(patient.config_path)]
        sent = multiprocessing.Value("q", 0)

        def during(_started_ns: int):
            peer_id = pair.ask(PATIENT, "peer_id")
            flooder = multiprocessing.Process(
                target=_flood, args=(ports, kind, peer_id, rate_per_link, duration_s, sent),
                daemon=True)
            flooder.start()
            flooder.join(duration_s + 30.0)
            return None

        trial = pair.trial(master, patient, COMMAND_RATE_HZ, duration_s, during=during)
    summary = trial.summary()
    counters = trial.counters
    latency = trial.latencies_ms()
    delivered = 1.0 - summary["lost"] / max(1, summary["sent"])
    return {
        "kind": kind, "rate_per_link": rate_per_link,
        "achieved_per_link": round(sent.value / duration_s, 1),
        "commands_sent": summary["sent"], "commands_lost": summary["lost"],
        "delivered_fraction": round(delivered, 5),
        "command_age_ms_p99": round(float(np.percentile(latency, 99)), 3) if latency.size
        else None,
        "link_down_events": counters["link_down_events"],
        "lost_events": counters["lost_events"], "rejected": counters["rejected"],
        "socket_drops": counters["socket_drops"],
        "patient_cpu_percent": round(trial.cpu_percent[PATIENT], 1),
        "held": (delivered >= DELIVERED_FRACTION and not counters["link_down_events"]
                 and not counters["lost_events"]),
    }


def _patient_ports(config_path: str) -> list[tuple[str, int]]:
    """(link name, port) of the patient side of each link of a loopback configuration."""
    import yaml

    document = yaml.safe_load(Path(config_path).read_text())
    return [(link["name"], int(link["patient"]["bind"].rsplit(":", 1)[1]))
            for link in document["links"]]


def run(rates: tuple[float, ...] = RATES_PER_LINK, duration_s: float = DURATION_S) -> Result:
    load = MachineLoad()
    steps: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="telesurg-bench-") as folder, SitePair() as pair:
        for rate in rates:  # kinds interleaved at each rate
            for kind in KINDS:
                steps[kind].append(run_step(pair, Path(folder), kind, rate, duration_s))
    result = report(steps, duration_s)
    load.annotate(result)
    return result


def withstood(steps: list[dict]) -> dict | None:
    """The highest step that held, all those below it having held too."""
    best = None
    for step in sorted(steps, key=lambda step: step["rate_per_link"]):
        if not step["held"]:
            break
        best = step
    return best


def report(steps: dict[str, list[dict]], duration_s: float) -> Result:
    figures = {"duration_s": duration_s, "command_rate_hz": COMMAND_RATE_HZ,
               "delivered_fraction_required": DELIVERED_FRACTION, "steps": steps}
    rows = []
    for kind, kind_steps in steps.items():
        best = withstood(kind_steps)
        figures[f"{kind}_withstood_per_link"] = best and best["achieved_per_link"]
        value = (f"{best['achieved_per_link']:,.0f}/s per link ({best['delivered_fraction']:.2%}"
                 f" delivered, patient bridge {best['patient_cpu_percent']:.0f}% of a core)"
                 if best else "none of the steps")
        rows.append(Row(kind, f"forged datagrams withstood for {duration_s:g} s",
                        value, f">= {TARGET_PER_LINK:,}/s per link",
                        bool(best) and best["achieved_per_link"] >= TARGET_PER_LINK))
        for step in kind_steps:
            rows.append(Row(kind, f"step {step['rate_per_link']:,.0f}/s per link",
                            f"achieved {step['achieved_per_link']:,.0f}/s; delivered "
                            f"{step['delivered_fraction']:.2%}, age p99 "
                            f"{step['command_age_ms_p99']} ms; links down "
                            f"{step['link_down_events']}, LOST {step['lost_events']}; "
                            f"patient {step['patient_cpu_percent']:.0f}% CPU"))
    notes = [f"Each step: {COMMAND_RATE_HZ:g} Hz commands for {duration_s:g} s over two "
             "loopback links while a flooder process sends the step's rate of forged datagrams "
             "on each; a step holds with no link DOWN, no LOST and at least "
             f"{DELIVERED_FRACTION:.0%} of the commands delivered. The flooder is Python on "
             "the same machine: 'achieved' is what it managed to send."]
    return Result("flood", figures, rows, notes=notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES_PER_LINK))
    parser.add_argument("--duration", type=float, default=DURATION_S)
    args = parser.parse_args(argv)
    result = run(tuple(args.rates), args.duration)
    print(json.dumps(result.figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
