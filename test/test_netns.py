"""Multi-process, on a real network: the master site and the patient site each in a network
namespace of their own, joined only by two veth pairs, links a and b. A real bridge process runs
in each namespace with its link sockets bound to its veth addresses; a probe process
(netns_probe.py) in each namespace talks to its site's bridge over DDS, which there sees only the
namespace's own loopback. The links are cut and restored by taking veth interfaces down and up.

Needs root (creating network namespaces); skipped, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from telesurg.bridge.config import ROLES, default_bridge_config_path
from telesurg.bridge.wire import write_key
from telesurg.contract.graph import BRIDGE, NodeSpec
from telesurg.session.demo import session_environment
from telesurg.session.processes import NodeGroup, NodeProcess, die_with_parent

# Tier (setup.cfg markers): network namespaces (root), bridge and probe processes in them.
pytestmark = [pytest.mark.multiprocess, pytest.mark.root]

PROBE_SCRIPT = Path(__file__).with_name("netns_probe.py")
PROBE = NodeSpec("netns_probe", "", "", "both", "test/netns_probe.py")
DISCOVERY_TIMEOUT_S = 30.0
#: Each link a /30 of its own, only ever inside this test's namespaces: .1 master, .2 patient.
SUBNETS = {"a": "10.213.1", "b": "10.213.2"}
HOST = {"master": 1, "patient": 2}
_fixture_runs = itertools.count()


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def ip_ok(*args: str) -> None:
    result = ip(*args)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr.strip()}"


class SiteProbe:
    """The probe process of one site, and the JSON events it printed so far."""

    def __init__(self, role: str, node: NodeProcess, bridge: NodeProcess):
        self.role = role
        self.node = node
        self.bridge = bridge
        self.events: list[dict] = []
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.node.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "noise", "line": line}
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def send(self, **command) -> None:
        self.node.process.stdin.write(json.dumps(command) + "\n")
        self.node.process.stdin.flush()

    def mark(self) -> int:
        """Position in the events, for waiting only for what comes after it."""
        with self._changed:
            return len(self.events)

    def wait_for(self, predicate, timeout_s: float, what: str, since: int = 0) -> dict:
        """The first event from position `since` on for which predicate holds."""
        deadline = time.monotonic() + timeout_s
        position = since
        with self._changed:
            while True:
                for event in self.events[position:]:
                    if predicate(event):
                        return event
                position = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed or not self.bridge.alive():
                    raise AssertionError(self._failure(f"timed out after {timeout_s} s "
                                                       f"waiting for {what}"))
                self._changed.wait(min(remaining, 0.5))

    def wait_overall(self, state: str, timeout_s: float, since: int = 0) -> dict:
        return self.wait_for(lambda e: e["event"] == "link_state" and e["overall"] == state,
                             timeout_s, f"overall state {state}", since)

    def latest_state(self) -> dict | None:
        with self._changed:
            return next((e for e in reversed(self.events) if e["event"] == "link_state"), None)

    def _failure(self, problem: str) -> str:
        bridge = "running" if self.bridge.alive() else f"exited {self.bridge.process.poll()}"
        return (f"{self.role} site: {problem}; last link state: {self.latest_state()}\n"
                f"bridge ({bridge}), log tail:\n{self.bridge.log_tail(12)}\n"
                f"probe log tail:\n{self.node.log_tail(12)}")


@dataclass
class Sites:
    master: SiteProbe
    patient: SiteProbe
    namespaces: dict[str, str]  # role: namespace
    devices: dict[tuple[str, str], str]  # (link, role): veth name
    nodes: list[NodeProcess]

    def probes(self) -> tuple[SiteProbe, SiteProbe]:
        return self.master, self.patient

    def set_link(self, link: str, up: bool) -> float:
        """Take the master end of link up or down; returns when it was done (monotonic)."""
        ip_ok("-n", self.namespaces["master"], "link", "set", self.devices[link, "master"],
              "up" if up else "down")
        return time.monotonic()


def bridge_config(folder: Path, devices: dict[tuple[str, str], str]) -> Path:
    """The default configuration (and its ports), each link bound to its veth's address and
    interface."""
    document = yaml.safe_load(default_bridge_config_path().read_text())
    document["key_file"] = "bridge.key"
    links = {link["name"]: link for link in document["links"]}
    assert set(links) == set(SUBNETS), "the default configuration's links changed"
    for name, link in links.items():
        port = {role: link[role]["bind"].rsplit(":", 1)[1] for role in ROLES}
        for role, other in (ROLES, ROLES[::-1]):
            link[role] = {"bind": f"{SUBNETS[name]}.{HOST[role]}:{port[role]}",
                          "peer": f"{SUBNETS[name]}.{HOST[other]}:{port[other]}",
                          "interface": devices[name, role]}
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def start_in_namespace(group: NodeGroup, namespace: str, spec: NodeSpec, command: list[str],
                       **pipes) -> NodeProcess:
    group.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = group.log_dir / f"{spec.name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(  # ip netns exec execs the command: same process
            ["ip", "netns", "exec", namespace, *command], env=group.env, stderr=log,
            stdout=pipes.get("stdout", log), stdin=pipes.get("stdin", subprocess.DEVNULL),
            start_new_session=True, preexec_fn=die_with_parent,
            **({"text": True} if pipes else {}))
    node = NodeProcess(spec, process, log_path)
    group.nodes.append(node)
    return node


@pytest.fixture
def sites(tmp_path, ros_env, second_domain_id):
    """Both sites up, in namespaces of their own, each bridge seeing both links up."""
    tag = f"{os.getpid()}x{next(_fixture_runs)}"
    namespaces = {role: f"telesurg-{tag}-{secrets.token_hex(3)}-{role}" for role in ROLES}
    devices = {(link, role): f"ts{link}{role[0]}{tag}" for link in SUBNETS for role in ROLES}
    domains = {"master": int(ros_env["ROS_DOMAIN_ID"]), "patient": second_domain_id}
    created, groups = [], []
    try:
        for namespace in namespaces.values():
            try:
                result = ip("netns", "add", namespace)
            except FileNotFoundError:
                pytest.skip("network namespaces: the ip command (iproute2) is not installed")
            if result.returncode != 0:
                if not created and "File exists" not in result.stderr:
                    pytest.skip(f"cannot create network namespaces (needs root): "
                                f"ip netns add: {result.stderr.strip()}")
                raise AssertionError(f"ip netns add {namespace}: {result.stderr.strip()}")
            created.append(namespace)
            ip_ok("-n", namespace, "link", "set", "lo", "up")  # DDS runs on loopback
        for link in SUBNETS:
            ip_ok("link", "add", devices[link, "master"], "netns", namespaces["master"],
                  "type", "veth", "peer", "name", devices[link, "patient"],
                  "netns", namespaces["patient"])
            for role, namespace in namespaces.items():
                ip_ok("-n", namespace, "addr", "add", f"{SUBNETS[link]}.{HOST[role]}/30",
                      "dev", devices[link, role])
                ip_ok("-n", namespace, "link", "set", devices[link, role], "up")
        write_key(tmp_path / "bridge.key")
        config = bridge_config(tmp_path, devices)

        probes = {}
        for role, namespace in namespaces.items():
            group = NodeGroup(session_environment(domains[role]), tmp_path / f"logs_{role}")
            groups.append(group)
            bridge = start_in_namespace(
                group, namespace, BRIDGE,
                [sys.executable, "-m", BRIDGE.module, "--ros-args", "-r",
                 f"__node:={BRIDGE.name}", "-p", f"role:={role}", "-p",
                 f"config_file:={config}"])
            probe = start_in_namespace(group, namespace, PROBE,
                                       [sys.executable, str(PROBE_SCRIPT), role],
                                       stdout=subprocess.PIPE, stdin=subprocess.PIPE)
            probes[role] = SiteProbe(role, probe, bridge)
        for probe in probes.values():
            probe.wait_for(lambda e: e["event"] == "ready", DISCOVERY_TIMEOUT_S,
                           "the servo stream to be matched with the bridge")
            probe.wait_overall("REDUNDANT", DISCOVERY_TIMEOUT_S)
        yield Sites(probes["master"], probes["patient"], namespaces, devices,
                    [node for group in groups for node in group.nodes])
    finally:
        for group in groups:
            for node in group.nodes:
                if node.process.stdin is not None:  # a probe stops at the end of its input
                    with contextlib.suppress(OSError):
                        node.process.stdin.close()
            group.stop()
        for namespace in created:
            ip("netns", "del", namespace)  # destroys the veth pairs with it


def test_cutting_link_a_mid_stream_loses_no_command(sites):
    master, patient = sites.probes()
    base_sent = master.latest_state()["counters"]["sent"]
    base_delivered = patient.latest_state()["counters"]["delivered"]
    marks = {probe.role: probe.mark() for probe in sites.probes()}

    # A 500 Hz command stream for 4 s, link a cut for the middle second. Commands are best
    # effort, keep last 1 (the latest wins), so a loaded machine drops some before the master
    # bridge takes them: what counts is that the patient bridge delivers all the master bridge
    # sent.
    count, rate_hz = 2000, 500.0
    master.send(cmd="stream", count=count, rate_hz=rate_hz)
    started = master.wait_for(lambda e: e["event"] == "stream_started", 10.0, "the stream")
    time.sleep(max(0.0, started["t"] + 1.5 - time.monotonic()))
    cut = {probe.role: probe.mark() for probe in sites.probes()}
    sites.set_link("a", up=False)
    # (On a loaded machine a starved bridge may also see a link flap: look for link a down.)
    cut_seen = {probe.role: probe.wait_for(
        lambda e: e["event"] == "link_state" and e["links"]["a"] == "DOWN", 5.0,
        "link a to be reported down", since=cut[probe.role]) for probe in sites.probes()}
    time.sleep(max(0.0, started["t"] + 2.5 - time.monotonic()))
    restored = {probe.role: probe.mark() for probe in sites.probes()}
    sites.set_link("a", up=True)
    for probe in sites.probes():
        probe.wait_overall("REDUNDANT", 10.0, since=restored[probe.role])
    done = master.wait_for(lambda e: e["event"] == "stream_done", 20.0, "the stream's end")

    # The master bridge's count once the stream has drained into it (it reports at 10 Hz).
    final = master.wait_for(lambda e: e["event"] == "link_state" and e["t"] > done["t"] + 0.5,
                            10.0, "the master bridge's counters after the stream")
    sent = final["counters"]["sent"] - base_sent
    delivered_event = patient.wait_for(
        lambda e: e["event"] == "link_state" and e["t"] > done["t"]
        and e["counters"]["delivered"] - base_delivered >= sent, 10.0,
        f"the patient bridge to deliver all {sent} commands sent", since=marks["patient"])
    delivered = delivered_event["counters"]["delivered"] - base_delivered

    # Each bridge's last report before link a came back: with the first report of the cut,
    # what crossed on link b alone.
    last_in_cut = {probe.role: [e for e in probe.events[:restored[probe.role]]
                                if e["event"] == "link_state"][-1] for probe in sites.probes()}
    sent_in_cut = (last_in_cut["master"]["counters"]["sent"]
                   - cut_seen["master"]["counters"]["sent"])
    delivered_in_cut = (last_in_cut["patient"]["counters"]["delivered"]
                        - cut_seen["patient"]["counters"]["delivered"])
    patient.send(cmd="report")
    received = patient.wait_for(lambda e: e["event"] == "received", 5.0, "the report")["indices"]
    print(f"\nlink a cut mid-stream: {sent} sent, {delivered} delivered by the patient bridge, "
          f"{len(received)} received by the patient's subscriber; while link a was down: "
          f"{sent_in_cut} sent, {delivered_in_cut} delivered; stream took "
          f"{done['duration_s']:.2f} s")
    assert sent >= 1000, f"only {sent} of {count} commands reached the master bridge"
    assert delivered == sent  # zero lost, none twice
    assert patient.latest_state()["counters"]["delivered"] - base_delivered == sent
    # The cut was mid-stream, and commands crossed on link b alone meanwhile.
    assert base_sent < cut_seen["master"]["counters"]["sent"] < final["counters"]["sent"]
    assert sent_in_cut > 100 and delivered_in_cut > 100
    assert received == sorted(set(received))  # in order, no duplicates
    assert len(received) >= 0.5 * sent
    assert all(node.alive() for node in sites.nodes)


def test_both_links_down_is_lost_at_both_sites_and_recovery_is_seen(sites):
    mark = {probe.role: probe.mark() for probe in sites.probes()}
    sites.set_link("a", up=False)
    for probe in sites.probes():
        probe.wait_overall("SINGLE", 5.0, since=mark[probe.role])

    figures = {}
    for state, change in (("LOST", ("b", False)), ("SINGLE", ("b", True)),
                          ("REDUNDANT", ("a", True))):
        mark = {probe.role: probe.mark() for probe in sites.probes()}
        before = time.monotonic()
        sites.set_link(*change)
        for probe in sites.probes():
            event = probe.wait_overall(state, 10.0, since=mark[probe.role])
            figures[state, probe.role] = event["t"] - before
            if state == "SINGLE":
                assert event["links"]["a"] == "DOWN" and event["links"]["b"] != "DOWN"
    print("\n" + "; ".join(f"{state} at the {role} site {seconds * 1000:.0f} ms after the "
                           f"link change" for (state, role), seconds in figures.items()))
    # Design bound: link_timeout_ms 50 + 5 ms after the last datagram. Through DDS to a probe
    # process on a loaded 2-core machine, only a generous bound is meaningful.
    assert figures["LOST", "master"] < 0.5 and figures["LOST", "patient"] < 0.5
    assert all(node.alive() for node in sites.nodes)
