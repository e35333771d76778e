"""Two-site sessions on one machine, for the benchmarks and the multi-process fault tests: a
pair of DDS domains that no running process uses, the two sites in network namespaces of their
own, joined only by two veth pairs (links a and b), each site's nodes started inside its
namespace (or on loopback), and a benchmark's measuring process run in the session with the
CPU share it had.

Taking a veth end down (`ip link set DEV down`) cuts a link for real: the kernel drops what the
bridge sends, as on a cut fibre, with no emulator process in the path. Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import yaml

from telesurg.bridge.config import ROLES, default_bridge_config_path
from telesurg.session.demo import session_environment
from telesurg.session.processes import NodeGroup, _prepare_child, cpu_seconds

#: Each link a /30 of its own, only ever inside a session's namespaces: .1 master, .2 patient.
SUBNETS = {"a": "10.214.1", "b": "10.214.2"}
#: Below the kernel's ephemeral range and off every domain's DDS ports (7400 + 250 x domain +
#: 0..149), as config/bridge.yaml advises: 47201 was in both, and a bridge once found it taken.
PORTS = {"a": 17621, "b": 17622}
HOSTS = {"master": 1, "patient": 2}
_namespace_runs = iter(range(10**6))


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be created here; the message says why."""


def ip(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True,
                          timeout=20)


def ip_ok(*args: str, stdin: str | None = None) -> None:
    result = ip(*args, stdin=stdin)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Namespaces:
    """Two network namespaces, master and patient, joined by veth pairs a and b.

    label names what they are for (telesurg-LABEL-TAG-ROLE); another process rebuilds the same
    handle from (label, tag) to cut the links itself."""

    def __init__(self, label: str, tag: str | None = None):
        self.label = label
        self.tag = tag or f"{os.getpid() % 100000}{next(_namespace_runs) % 100}"
        self.names = {role: f"telesurg-{label}-{self.tag}-{role}" for role in ROLES}
        # Interface names have at most 15 characters.
        self.devices = {(link, role): f"t{label[0]}{link}{role[0]}{self.tag}"
                        for link in SUBNETS for role in ROLES}
        self.created: list[str] = []

    def create(self) -> None:
        for name in self.names.values():
            try:
                result = ip("netns", "add", name)
            except FileNotFoundError:
                raise NetnsUnavailable("the ip command (iproute2) is not installed") from None
            if result.returncode != 0:
                if not self.created:
                    raise NetnsUnavailable(f"cannot create network namespaces (needs root): "
                                           f"ip netns add: {result.stderr.strip()}")
                raise RuntimeError(f"ip netns add {name}: {result.stderr.strip()}")
            self.created.append(name)
            ip_ok("-n", name, "link", "set", "lo", "up")  # each site's DDS runs on loopback
        for link, subnet in SUBNETS.items():
            ip_ok("link", "add", self.devices[link, "master"], "netns", self.names["master"],
                  "type", "veth", "peer", "name", self.devices[link, "patient"],
                  "netns", self.names["patient"])
            for role, name in self.names.items():
                ip_ok("-n", name, "addr", "add", f"{subnet}.{HOSTS[role]}/30",
                      "dev", self.devices[link, role])
                ip_ok("-n", name, "link", "set", self.devices[link, role], "up")

    def bridge_config(self, folder: Path) -> Path:
        """The default bridge configuration, each link bound to its veth address and device."""
        document = yaml.safe_load(default_bridge_config_path().read_text())
        document["key_file"] = "bridge.key"
        for link in document["links"]:
            name = link["name"]
            for role, other in (ROLES, ROLES[::-1]):
                link[role] = {"bind": f"{SUBNETS[name]}.{HOSTS[role]}:{PORTS[name]}",
                              "peer": f"{SUBNETS[name]}.{HOSTS[other]}:{PORTS[name]}",
                              "interface": self.devices[name, role]}
        path = folder / "bridge.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    def set_links(self, links, down: bool) -> tuple[int, int]:
        """Take the master end of the links down (or up) in one `ip -batch`; returns
        time.time_ns() just before and just after."""
        commands = "".join(f"link set dev {self.devices[link, 'master']} "
                           f"{'down' if down else 'up'}\n" for link in links)
        before = time.time_ns()
        ip_ok("-n", self.names["master"], "-batch", "-", stdin=commands)
        return before, time.time_ns()

    def delete(self) -> None:
        for name in self.created:
            ip("netns", "del", name)  # destroys the veth pairs with it
        self.created.clear()


def pick_domain_pair() -> int:
    """A DDS domain id d (master) with d + 1 (patient) that no running process uses."""
    used = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for item in (entry / "environ").read_bytes().split(b"\0"):
                if item.startswith(b"ROS_DOMAIN_ID="):
                    with contextlib.suppress(ValueError):
                        used.add(int(item.split(b"=", 1)[1]))
    # Fast DDS refuses domain ids above 232; the tests' conftest hands out from 100 on.
    free = [d for d in range(100, 232) if d not in used and d + 1 not in used]
    return random.choice(free)


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of every core of the machine so far (Linux /proc/stat)."""
    # The "cpu" line: user nice system idle iowait irq softirq steal ..., in clock ticks.
    ticks = [int(value) for value in Path("/proc/stat").read_text().split(maxsplit=9)[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


class CpuShare:
    """From now on: how busy the machine's cores were, and how much of their capacity the given
    processes used (on 2 shared cores, that decides a session's latency tails)."""

    def __init__(self, pids):
        self.pids = list(pids)
        self._machine = machine_cpu_seconds()
        self._processes = sum(cpu_seconds(pid) for pid in self.pids)

    def figures(self) -> dict:
        """Percentages of all cores' capacity; call while the processes still run."""
        busy, total = (now - then for now, then in zip(machine_cpu_seconds(), self._machine,
                                                        strict=True))
        used = sum(cpu_seconds(pid) for pid in self.pids) - self._processes
        return {"machine_busy_percent": round(100.0 * busy / total, 1),
                "session_percent": round(100.0 * used / total, 1)}


def cpu_note(cpu: dict) -> str:
    """CpuShare.figures() as a sentence for a benchmark's notes."""
    if not cpu:
        return "CPU share not measured (the measurement never started)."
    return (f"Over the measurement the machine's {os.cpu_count()} cores were "
            f"{cpu['machine_busy_percent']:g} % busy, {cpu['session_percent']:g} % of their "
            "capacity by the session's own processes.")


def start_sites(sites, out: Path, stack: contextlib.ExitStack,
                namespaces: Namespaces | None = None) -> list[NodeGroup]:
    """Start every node of the planned sites (telesurg.session.demo.plan_sites), each site
    inside its namespace if there are namespaces: a NodeGroup per site, logging to out/logs/SITE,
    stopped when the stack closes."""
    groups = []
    for site in sites:
        group = NodeGroup(session_environment(site.domain_id), out / "logs" / site.name)
        groups.append(group)
        stack.callback(group.stop)
        # `ip netns exec` execs: the process started is the node's.
        prefix = ("ip", "netns", "exec", namespaces.names[site.name]) if namespaces else ()
        for planned in site.processes:
            group.start_planned(planned, prefix)
    return groups


def run_measurer(command: list[str], env: dict[str, str], log_path: Path, groups,
                 stack: contextlib.ExitStack, on_line=None, pids=(),
                 niceness: int = 0) -> tuple[list[dict], dict]:
    """Run a benchmark's measuring process in a session, at niceness as the nodes are: its JSON
    lines on stdout (on_line sees each as it comes), its stderr in log_path. A session node that
    exits meanwhile fails the benchmark, naming it. Its {"started": ...} line starts a CpuShare
    over the session's nodes (and pids), read when it exits. Returns its other lines and that
    share ({} if it never started)."""
    log = stack.enter_context(open(log_path, "wb"))
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                               preexec_fn=lambda: _prepare_child(niceness))
    stack.callback(_end, process)
    lines: list[dict] = []
    share: list[CpuShare] = []

    def read() -> None:
        for text in process.stdout:
            if not text.startswith("{"):
                continue
            line = json.loads(text)
            if "started" in line:
                share.append(CpuShare([node.process.pid for group in groups
                                       for node in group.nodes] + list(pids)))
                continue
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while reader.is_alive():
        dead = next((node for group in groups for node in group.nodes if not node.alive()),
                    None)
        if dead is not None:
            raise RuntimeError(f"node {dead.spec.name} exited during the benchmark (code "
                               f"{dead.process.poll()}):\n{dead.log_tail()}")
        reader.join(0.2)
    cpu = share[0].figures() if share else {}
    if process.wait() != 0 or not lines:
        tail = log_path.read_text(errors="replace").splitlines()[-12:]
        raise RuntimeError(f"{' '.join(command[:6])} ... failed (code {process.returncode}):\n"
                           + "\n".join(tail))
    return lines, cpu


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
