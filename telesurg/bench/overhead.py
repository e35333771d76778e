"""overhead: the latency the telesurg bridge adds to a command stream, over what the network
path itself costs.

A 1 kHz stream of /psm/servo_cp-sized commands (see bridge_pair) over (a) raw UDP sockets on
loopback, (b) two bridges on one loopback link, (c) on two: interleaved a b c a b c ... for
ROUNDS rounds, so that the machine's drift hits all three alike. Timed from the master bridge
getting each message (BridgeCore.send: where the node hands over what DDS delivered) to the
patient bridge handing it on (its deliver callback: where the node publishes it).

Percentiles pool every round's commands of a variant (ROUNDS x ROUND_S x RATE_HZ of them), and
the bridge-added figure is the pooled bridge percentile minus the pooled raw UDP one; each
round's own p50 and p99 are kept in the figures to show the spread.

Then the full topic-to-topic path: a publisher in the master site's DDS domain to a subscriber
in the patient site's, through two bridge node processes on two links, so that the DDS hops
show too; with the bridge nodes' CPU use meanwhile.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np

from telesurg.bench import Result, Row
from telesurg.bench.bridge_pair import (
    MASTER,
    PATIENT,
    MachineLoad,
    RosTopic,
    SitePair,
    Trial,
    bridge_ends,
    pooled_latency_ms,
    raw_udp_ends,
)

RATE_HZ = 1000.0
ROUNDS = 6
ROUND_S = 3.0
TOPIC_ROUNDS = 2
#: The issue's targets for the bridge-added latency.
TARGET_ADDED_MS = {"p50": 0.3, "p99": 1.0}
#: Variant -> links between the bridges (0: raw UDP, no bridge).
LINKS = {"raw_udp": 0, "bridge_one_link": 1, "bridge_two_links": 2}
BRIDGES = {"bridge_one_link": "one_link", "bridge_two_links": "two_links"}


def run(rounds: int = ROUNDS, round_s: float = ROUND_S, rate_hz: float = RATE_HZ,
        topic_rounds: int = TOPIC_ROUNDS) -> Result:
    """topic_rounds 0 leaves the topic-to-topic part out."""
    load = MachineLoad()
    trials: dict[str, list[Trial]] = {variant: [] for variant in LINKS}
    topic = None
    with tempfile.TemporaryDirectory(prefix="telesurg-bench-") as folder, SitePair() as pair:
        for _ in range(rounds):
            for variant, links in LINKS.items():
                trials[variant].append(_trial(pair, Path(folder), links, rate_hz, round_s))
        if topic_rounds:
            topic = topic_to_topic(pair, Path(folder), rate_hz, round_s, topic_rounds)
    result = report(trials, topic, rate_hz, round_s)
    load.annotate(result)
    return result


def _trial(pair: SitePair, folder: Path, links: int, rate_hz: float, duration_s: float
           ) -> Trial:
    if not links:
        return pair.trial(*raw_udp_ends(), rate_hz, duration_s)
    with bridge_ends(folder, links) as (master, patient, _):
        return pair.trial(master, patient, rate_hz, duration_s)


class _NodeCpu:
    """CPU % of node processes over the streaming part of trials (a trial's `during` hook)."""

    def __init__(self, nodes: dict, duration_s: float):
        self._nodes = nodes
        self._duration_s = duration_s
        self._cpu_s = dict.fromkeys(nodes, 0.0)
        self._wall_s = 0.0

    def during(self, _started_ns: int) -> None:
        before = {role: node.cpu_seconds() for role, node in self._nodes.items()}
        start = time.monotonic()
        time.sleep(self._duration_s)
        self._wall_s += time.monotonic() - start
        for role, node in self._nodes.items():
            self._cpu_s[role] += node.cpu_seconds() - before[role]

    def percent(self) -> dict[str, float]:
        return {role: round(100.0 * cpu_s / self._wall_s, 1)
                for role, cpu_s in self._cpu_s.items()}


def topic_to_topic(pair: SitePair, folder: Path, rate_hz: float, duration_s: float,
                   rounds: int) -> tuple[list[Trial], dict[str, float]]:
    """Trials from a publisher in the master site's DDS domain to a subscriber in the patient
    site's, through two bridge node processes joined by two loopback links; and the CPU % of
    each bridge node while the stream flows."""
    from telesurg.contract.graph import BRIDGE
    from telesurg.session.demo import session_environment
    from telesurg.session.processes import NodeGroup

    master_domain = random.randrange(10, 99)  # as the demo's: apart from the tests' 100-232
    domains = {MASTER: master_domain, PATIENT: master_domain + 1}
    with bridge_ends(folder) as (master, _, _):
        groups = {role: NodeGroup(session_environment(domain), folder / f"logs_{role}")
                  for role, domain in domains.items()}
        try:
            nodes = {role: group.start(BRIDGE, ["-p", f"role:={role}",
                                                "-p", f"config_file:={master.config_path}"])
                     for role, group in groups.items()}
            cpu = _NodeCpu(nodes, duration_s)
            try:
                trials = [pair.trial(RosTopic(domains[MASTER], MASTER),
                                     RosTopic(domains[PATIENT], PATIENT), rate_hz, duration_s,
                                     during=cpu.during) for _ in range(rounds)]
            except (RuntimeError, TimeoutError) as error:
                logs = "\n".join(f"{role} bridge node log:\n{node.log_tail()}"
                                 for role, node in nodes.items())
                raise RuntimeError(f"topic-to-topic: {error}\n{logs}") from error
        finally:
            for group in groups.values():
                group.stop()
    return trials, cpu.percent()


def _variant_figures(trials: list[Trial]) -> dict:
    summaries = [trial.summary() for trial in trials]
    return {
        "latency_ms": pooled_latency_ms(trials),
        "round_p50_ms": [summary["latency_ms"]["p50"] for summary in summaries],
        "round_p99_ms": [summary["latency_ms"]["p99"] for summary in summaries],
        "sent": sum(summary["sent"] for summary in summaries),
        "lost": sum(summary["lost"] for summary in summaries),
        "socket_drops": sum(trial.counters.get("socket_drops", 0) for trial in trials),
    }


def _spread(figures: dict, q: str) -> str:
    rounds = figures[f"round_{q}_ms"]
    return f"{min(rounds):.2f}-{max(rounds):.2f}"


def _latency_text(latency: dict) -> str:
    return f"{latency['p50']:.3f} / {latency['p99']:.3f} / {latency['max']:.2f} ms"


def report(trials: dict[str, list[Trial]], topic: tuple[list[Trial], dict] | None,
           rate_hz: float, round_s: float) -> Result:
    rounds = len(trials["raw_udp"])
    figures = {"rate_hz": rate_hz, "rounds": rounds, "round_s": round_s,
               "statistic": "pooled over rounds"}
    figures.update({variant: _variant_figures(runs) for variant, runs in trials.items()})
    raw = figures["raw_udp"]["latency_ms"]
    figures["bridge_added_ms"] = {
        name: {q: round(figures[variant]["latency_ms"][q] - raw[q], 4) for q in TARGET_ADDED_MS}
        for variant, name in BRIDGES.items()}
    figures["ratio_to_raw_udp"] = {
        name: {q: round(figures[variant]["latency_ms"][q] / raw[q], 2) for q in TARGET_ADDED_MS}
        for variant, name in BRIDGES.items()}
    rows = []
    for variant in LINKS:
        data = figures[variant]
        rows.append(Row(variant, "one-way latency p50 / p99 / max",
                        _latency_text(data["latency_ms"])))
        rows.append(Row(variant, "lost (dropped at full receive buffers)",
                        f"{data['lost']} of {data['sent']} ({data['socket_drops']})"))
    notes = [f"{rounds} interleaved rounds of {round_s:g} s at {rate_hz:g} Hz per variant; "
             "percentiles pool every round's commands, bridge-added = pooled bridge percentile "
             "- pooled raw UDP percentile (round p50s in results.json)."]
    for variant, name in BRIDGES.items():
        for q, target in TARGET_ADDED_MS.items():
            added = figures["bridge_added_ms"][name][q]
            met = added <= target
            rows.append(Row(variant, f"bridge-added {q}",
                            f"{added:.3f} ms ({figures['ratio_to_raw_udp'][name][q]:.1f}x raw)",
                            f"<= {target:g} ms", met))
            if not met:
                notes.append(
                    f"{variant}: bridge-added {q} {added:.3f} ms misses <= {target:g} ms "
                    f"(round {q}s {_spread(figures[variant], q)} ms, raw UDP's "
                    f"{_spread(figures['raw_udp'], q)} ms): both sites share 2 cores with the "
                    "rest of the machine, whose load stalls them now and then, and a stall "
                    "hits the bridge's longer per-datagram path (Python: AEAD, link health, "
                    "one interpreter lock for its threads) more often than a bare socket.")
    if topic is not None:
        topic_trials, node_cpu = topic
        data = _variant_figures(topic_trials)
        del data["socket_drops"]  # the bridge nodes' sockets are not the probe's to count
        data["lost_before_patient_bridge"] = data["sent"] - sum(
            trial.counters["bridge_delivered"] for trial in topic_trials)
        figures["topic_to_topic_ms"] = data.pop("latency_ms")
        figures["topic_to_topic"] = {**data, "rounds": len(topic_trials),
                                     "bridge_node_cpu_percent": node_cpu}
        rows.append(Row("topic_to_topic", "one-way latency p50 / p99 / max",
                        _latency_text(figures["topic_to_topic_ms"])))
        rows.append(Row("topic_to_topic", "lost",
                        f"{data['lost']} of {data['sent']}, "
                        f"{data['lost_before_patient_bridge']} before the patient bridge"))
        rows.append(Row("topic_to_topic", "bridge node CPU (master / patient)",
                        f"{node_cpu[MASTER]:.0f} % / {node_cpu[PATIENT]:.0f} % of a core"))
        dds_share = _dds_share(figures["topic_to_topic_ms"],
                               figures["bridge_two_links"]["latency_ms"])
        notes.append(
            f"topic_to_topic: publisher at the master site's DDS domain to subscriber at the "
            f"patient site's, through two bridge node processes on two links, "
            f"{len(topic_trials)} rounds of {round_s:g} s; {dds_share}.")
        if data["lost_before_patient_bridge"]:
            notes.append(
                f"topic_to_topic: {data['lost_before_patient_bridge']} commands never reached "
                "the patient bridge (its own count): lost on the DDS hop into the master "
                "bridge, whose subscription keeps only the latest command (best effort, depth "
                "1), so that one its node loop is late to take is replaced by the next; "
                "or on both loopback links at once.")
    return Result("overhead", figures, rows, notes=notes)


def _dds_share(topic: dict, bridge: dict) -> str:
    """How much of the topic-to-topic p50 the two DDS hops and rclpy take."""
    share = topic["p50"] - bridge["p50"]
    return (f"the DDS hops and rclpy at both ends add {share:.2f} ms at p50 "
            f"({np.clip(share / topic['p50'], 0.0, 1.0):.0%} of it)")
