"""A full two-site telesurg session as real processes, for multi-process fault tests.

Brings up what `telesurg demo` brings up (telesurg.session.demo: open_links, plan_sites, the nodes
of telesurg.contract.graph in NodeGroups): the master site (virtual surgeon, master console,
bridge) and the patient site (bridge, safety supervisor, arm controller, MuJoCo simulator), each on
its own DDS domain, joined only by the two bridges over links a and b. The links run either through
the demo's emulated-links process (lan, geostationary_satellite, ... profiles; LinkEmulator cuts
them) or, with netns=True, over two veth pairs between two network namespaces, the master site's
processes in one and the patient site's in the other (`ip link set DEV down` cuts them;
telesurg.bench.sessions, shared with the benchmarks, makes them and picks the DDS domains).

The test process watches both sites through a SiteProbe each: a probe process (site_probe.py)
on the site's domain, started inside the site's network namespace when there is one (a process,
not a thread of the test: see site_probe.py), that records what the fault tests need and
publishes what they inject:

  patient  /safety/status (JSON), /diagnostics (the arm controller's "holding: <reason>" and
           "following servo commands", stamped when decided), /bridge/link_state,
           /console/following and /console/operator_present (as the patient bridge delivers
           them), and raw: /psm/measured_cp, /forward_position_controller/commands,
           /psm/servo_cp
  master   /console/following, /psm/operating_state, /bridge/link_state

Every time is time.time_ns() (the ROS system clock the nodes stamp with): arrival times of what
the probes record, and the header stamps of the messages, compare directly on this one machine.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telesurg.analysis.metrics import largest_step
from telesurg.analysis.summary import command_tip
from telesurg.arm.kinematics import BASE_FRAME
from telesurg.bench.sessions import (
    Namespaces,
    NetnsUnavailable,  # noqa: F401 - the fault tests catch it from here
    pick_domain_pair,
)
from telesurg.bridge.wire import write_key
from telesurg.contract.fields import set_stamp_ns, stamp_ns, tip_position
from telesurg.contract.resources import default_config
from telesurg.contract.topics import BRIDGE_LINK_STATE
from telesurg.ros.messages import message_class
from telesurg.session.demo import (
    DemoOptions,
    open_links,
    plan_sites,
    session_environment,
)
from telesurg.session.processes import CLEAN_STOP_CODES, NodeGroup, NodeProcess, die_with_parent

MS = 1_000_000  # ns
STARTUP_TIMEOUT_S = 60.0
RETRY_S = 0.5  # how often enable / resume are repeated until they take
ARM_CONTROLLER = "arm_controller"
FOLLOWING = "following servo commands"  # the arm controller's diagnostic while it follows


# -- probes --------------------------------------------------------------------------------------

PROBE_SCRIPT = Path(__file__).with_name("site_probe.py")


@dataclass(frozen=True)
class Topic:
    type_name: str
    qos: str  # a QoS name of site_probe.py
    raw: bool = False  # keep the CDR bytes (decoded when analysed): the fast streams


def probe_topics() -> dict[str, dict[str, Topic]]:
    return {
        "patient": {
            "/safety/status": Topic("std_msgs/msg/String", "record_state"),
            "/diagnostics": Topic("diagnostic_msgs/msg/DiagnosticArray", "record_reliable"),
            BRIDGE_LINK_STATE.name: Topic("diagnostic_msgs/msg/DiagnosticArray", "record_state"),
            "/console/following": Topic("std_msgs/msg/Bool", "record_state"),
            "/console/operator_present": Topic("std_msgs/msg/Bool", "record_state"),
            "/psm/measured_cp": Topic("geometry_msgs/msg/PoseStamped", "record_reliable",
                                      raw=True),
            "/forward_position_controller/commands": Topic(
                "std_msgs/msg/Float64MultiArray", "record_reliable", raw=True),
            "/psm/servo_cp": Topic("geometry_msgs/msg/PoseStamped", "record_best_effort",
                                   raw=True),
        },
        "master": {
            "/console/following": Topic("std_msgs/msg/Bool", "record_state"),
            "/psm/operating_state": Topic("crtk_msgs/msg/OperatingState", "record_state"),
            BRIDGE_LINK_STATE.name: Topic("diagnostic_msgs/msg/DiagnosticArray", "record_state"),
        },
    }


class SiteProbe:
    """The test's window on one site's DDS domain: a site_probe.py process (started inside the
    site's network namespace, if any) that records topics, each message stamped with
    time.time_ns() on arrival, and publishes what the test asks it to."""

    def __init__(self, name: str, env: dict[str, str], topics: dict[str, Topic],
                 log_dir: Path, netns: str | None = None, timeout_s: float = 30.0):
        self.name = name
        self.topics = topics
        self._topic_names = list(topics)
        self._classes = [message_class(spec.type_name) for spec in topics.values()]
        self.records: dict[str, list[tuple[int, object]]] = {topic: [] for topic in topics}
        self._changed = threading.Condition()
        self._answers: dict[int, dict] = {}
        self._request_ids = itertools.count()
        self._ready = threading.Event()
        self._closed = False
        config = {"name": name,
                  "topics": [[topic, spec.type_name, spec.qos] for topic, spec in topics.items()]}
        command = [sys.executable, str(PROBE_SCRIPT), json.dumps(config)]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"probe_{name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        bufsize=1, start_new_session=True,
                                        preexec_fn=die_with_parent)
        threading.Thread(target=self._read, name=f"probe-{name}", daemon=True).start()
        if not self._ready.wait(timeout_s):
            self.close()
            raise RuntimeError(f"the {name} probe did not start within {timeout_s:g} s "
                               f"(see {self.log_path})")

    def _read(self) -> None:
        from rclpy.serialization import deserialize_message

        for line in self.process.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "R":
                index, arrival, data = rest.split(" ", 2)
                topic = self._topic_names[int(index)]
                payload = base64.b64decode(data)
                if self.topics[topic].raw:
                    self.records[topic].append((int(arrival), payload))
                    continue
                message = deserialize_message(payload, self._classes[int(index)])
                with self._changed:
                    self.records[topic].append((int(arrival), message))
                    self._changed.notify_all()
            elif kind == "A":
                answer = json.loads(rest)
                with self._changed:
                    self._answers[answer["id"]] = answer
                    self._changed.notify_all()
            elif kind == "READY":
                self._ready.set()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def alive(self) -> bool:
        return self.process.poll() is None

    def request(self, op: str, timeout_s: float = 10.0, **fields):
        """One request to the probe process; its result."""
        request_id = next(self._request_ids)
        self.process.stdin.write(json.dumps({"id": request_id, "op": op, **fields}) + "\n")
        self.process.stdin.flush()
        with self._changed:
            if not self._changed.wait_for(
                    lambda: request_id in self._answers or self._closed, timeout_s):
                raise TimeoutError(f"{self.name} probe: no answer to {op} in {timeout_s:g} s")
            if request_id not in self._answers:
                raise RuntimeError(f"the {self.name} probe exited (see {self.log_path})")
            answer = self._answers.pop(request_id)
        if "error" in answer:
            raise RuntimeError(f"{self.name} probe: {op} {fields.get('topic')}: "
                               f"{answer['error']}")
        return answer["result"]

    def publisher(self, topic: str, type_name: str, qos: str) -> None:
        """Create a publisher (qos: a QoS name of site_probe.py)."""
        self.request("publisher", topic=topic, type=type_name, qos=qos)

    def drop_publisher(self, topic: str) -> None:
        self.request("drop", topic=topic)

    def publish(self, topic: str, message, min_subscribers: int = 1,
                timeout_s: float = 10.0) -> int:
        """Publish once the publisher is matched with min_subscribers; returns time.time_ns()
        just before the publish."""
        from rclpy.serialization import serialize_message

        deadline = time.monotonic() + timeout_s
        while self.request("count", topic=topic) < min_subscribers:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} site: {topic} not matched with "
                                     f"{min_subscribers} subscribers within {timeout_s:g} s")
            time.sleep(0.05)
        data = base64.b64encode(serialize_message(message)).decode()
        return self.request("publish", topic=topic, data=data)

    def latest(self, topic: str):
        store = self.records[topic]
        return store[-1][1] if store else None

    def since(self, topic: str, start_ns: int, end_ns: int | None = None) -> list:
        """(arrival, message) recorded in [start_ns, end_ns]."""
        store = list(self.records[topic])
        first = bisect.bisect_left(store, start_ns, key=lambda record: record[0])
        last = len(store) if end_ns is None else bisect.bisect_right(
            store, end_ns, key=lambda record: record[0])
        return store[first:last]

    def wait_for(self, topic: str, predicate, timeout_s: float, what: str,
                 since_ns: int = 0, check=None) -> tuple[int, object]:
        """The first (arrival, message) from since_ns on whose message satisfies predicate.
        check() runs while waiting (e.g. raises if a node died)."""
        store = self.records[topic]
        position = bisect.bisect_left(list(store), since_ns, key=lambda record: record[0])
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                while position < len(store):
                    arrival, message = store[position]
                    position += 1
                    if predicate(message):
                        return arrival, message
                if check is not None:
                    check()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise AssertionError(f"{self.name} site: timed out after {timeout_s:g} s "
                                         f"waiting for {what}"
                                         + (" (the probe exited)" if self._closed else ""))
                self._changed.wait(min(remaining, 0.05))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


# -- message helpers -----------------------------------------------------------------------------

def overall_state(message) -> str | None:
    return next((s.message for s in message.status if s.hardware_id == "overall"), None)


def arm_status(message):
    """The arm controller's DiagnosticStatus in a /diagnostics message, or None."""
    return next((s for s in message.status if s.name == ARM_CONTROLLER), None)


def displacement(tips) -> float:
    """Largest distance of any of the tips from the first one (m); 0 for none."""
    tips = [tip for _, tip in tips]
    if len(tips) < 2:
        return 0.0
    return float(np.max(np.linalg.norm(np.asarray(tips) - tips[0], axis=1)))


def steps(tips) -> float:
    """Largest distance between consecutive tips (m)."""
    return largest_step([tip for _, tip in tips])


def ms(nanoseconds: float) -> float:
    return nanoseconds / MS


# -- the session -----------------------------------------------------------------------------

class Session:
    """Both sites up, the arm ENABLED, and a probe on each site. Use as a context manager."""

    def __init__(self, out: Path, *, profiles: tuple[str, str] = ("lan", "lan"),
                 netns: bool = False, task: str = "suturing", seed: int = 1,
                 compose: bool = False, say=print):
        self.out = Path(out)
        self.profiles = profiles
        # A process per node unless compose: most faults kill and restart single nodes.
        self.compose = compose
        self.task, self.seed = task, seed
        self.say = say
        self.namespaces: Namespaces | None = Namespaces("fault") if netns else None
        self.links = None  # LinkEmulator, unless in namespaces
        self.groups: dict[str, NodeGroup] = {}
        self.plans: dict[str, dict[str, tuple]] = {}
        self.domains: dict[str, int] = {}
        self.master: SiteProbe | None = None
        self.patient: SiteProbe | None = None
        self.killed: list[NodeProcess] = []
        self.exit_codes: dict[str, int] = {}
        self._stack = contextlib.ExitStack()

    # Life cycle -------------------------------------------------------------------------------

    def __enter__(self) -> Session:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        domain_id = pick_domain_pair()
        options = DemoOptions(task=self.task, seed=self.seed, out=self.out,
                              link_profiles=tuple(self.profiles), compose=self.compose)
        if self.namespaces is not None:
            self.namespaces.create()
            write_key(self.out / "bridge.key")
            bridge_config = self.namespaces.bridge_config(self.out)
        else:
            bridge_config, self.links = open_links(options, self.out, self._stack)
        sites = plan_sites(options, default_config(), domain_id, bridge_config)
        topics = probe_topics()
        for site in sites:
            self.domains[site.name] = site.domain_id
            self.plans[site.name] = {planned.spec.name: planned for planned in site.processes}
            self.groups[site.name] = NodeGroup(session_environment(site.domain_id),
                                               self.out / "logs" / site.name)
            probe = SiteProbe(site.name, session_environment(site.domain_id),
                              topics[site.name], self.out / "logs",
                              netns=self.namespaces.names[site.name] if self.namespaces
                              else None)
            setattr(self, site.name, probe)
            # Reliable, volatile, as the supervisor subscribes: every command counts.
            probe.publisher("/psm/state_command", "crtk_msgs/msg/StringStamped", "event")
        # What the fault tests inject, made now (nothing is published on them yet) so that
        # every subscriber has discovered them long before: a matched writer does not mean
        # the readers have matched it too, and a best-effort sample they have not is dropped.
        self.patient.publisher("/psm/servo_cp", "geometry_msgs/msg/PoseStamped", "stream")
        self.master.publisher("/console/operator_present", "std_msgs/msg/Bool", "state")
        for site in sites:
            for name in self.plans[site.name]:
                self.start_node(site.name, name)
        self._wait_until_ready()
        self.enable()
        self._settle()
        links = ("veth pairs between network namespaces" if self.namespaces
                 else f"emulated {'/'.join(self.profiles)}")
        self.say(f"\nsession up in {time.monotonic() - started:.1f} s: domains "
                 f"{self.domains}, links {links}, logs in {self.out / 'logs'}")

    def close(self) -> None:
        for site, group in self.groups.items():
            with contextlib.suppress(Exception):
                for name, code in group.stop().items():
                    self.exit_codes[f"{site}/{name}"] = code
        for probe in (self.master, self.patient):
            if probe is not None:
                probe.close()
        self._stack.close()
        if self.namespaces is not None:
            self.namespaces.delete()

    def _wait_until_ready(self) -> None:
        """Until the arm reports its pose and the console is ready to engage (it publishes
        /console/following once it has the master and the arm poses), as run_demo waits."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not (self.patient.records["/psm/measured_cp"]
                   and self.master.records["/console/following"]):
            self.raise_if_dead()
            if time.monotonic() > deadline:
                raise AssertionError(f"the node graph did not come up within "
                                     f"{STARTUP_TIMEOUT_S:g} s (see {self.out / 'logs'})")
            time.sleep(0.05)

    def _settle(self, steady_s: float = 0.5, attempts: int = 3) -> None:
        """Warm-up: the first engage, held for steady_s without a pause. Right after start-up
        the first engage may pause for "operator presence lost while following" (see the
        fault tests' report): resume, and engage again."""
        if self.profiles != ("lan", "lan") and self.namespaces is None:
            return  # on a long link the first engage is the test's business
        for _ in range(attempts):
            engaged = self.engage()
            self.wait_until(engaged + int(steady_s * 1e9))
            if not [s for _, s in self.statuses(engaged) if s["state"] != "ENABLED"]:
                return
        raise AssertionError(f"the session did not settle: {self.status()}")

    def unclean_exits(self) -> dict[str, int]:
        """Nodes that did not stop cleanly at close (Ctrl-C), as run_demo judges them."""
        return {name: code for name, code in self.exit_codes.items()
                if code not in CLEAN_STOP_CODES}

    # Processes --------------------------------------------------------------------------------

    def start_node(self, site: str, name: str) -> NodeProcess:
        prefix = ("ip", "netns", "exec", self.namespaces.names[site]) if self.namespaces else ()
        return self.groups[site].start_planned(self.plans[site][name], prefix)

    def node(self, site: str, name: str) -> NodeProcess:
        return next(n for n in self.groups[site].nodes if n.spec.name == name)

    def kill(self, site: str, name: str) -> int:
        """SIGKILL a node; returns time.time_ns() just before. Its log is kept as
        NAME.killed.log so that a restart gets a fresh one."""
        node = self.node(site, name)
        killed_at = time.time_ns()
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=10)
        self.groups[site].nodes.remove(node)
        self.killed.append(node)
        node.log_path.rename(node.log_path.with_suffix(".killed.log"))
        return killed_at

    def restart(self, site: str, name: str) -> int:
        """Start a node of the plan again; returns time.time_ns() just before."""
        started_at = time.time_ns()
        self.start_node(site, name)
        return started_at

    def dead(self) -> str:
        """'' if every node (and the links' process) runs, else which one died and its log."""
        for site, group in self.groups.items():
            node = group.first_dead()
            if node is not None:
                return (f"{site}/{node.spec.name} exited (code {node.process.poll()}):\n"
                        f"{node.log_tail(12)}")
        if self.links is not None and self.links.process.poll() is not None:
            return f"the emulated links' process exited ({self.links.process.poll()})"
        for probe in (self.master, self.patient):
            if probe is not None and not probe.alive():
                return f"the {probe.name} probe exited (see {probe.log_path})"
        return ""

    def raise_if_dead(self) -> None:
        problem = self.dead()
        if problem:
            raise AssertionError(f"a session process died: {problem}")

    def all_alive(self) -> bool:
        return not self.dead()

    # Links ------------------------------------------------------------------------------------

    def set_links_down(self, down: bool, links=("a", "b")) -> int:
        """Cut (or restore) the links; returns time.time_ns() once done."""
        if self.namespaces is not None:
            return self.namespaces.set_links(links, down)[1]
        for link in links:
            self.links.set_down(link, down)
        return time.time_ns()

    def wait_link(self, site: str, overall: str, since_ns: int, timeout_s: float = 10.0):
        probe = getattr(self, site)
        return probe.wait_for(BRIDGE_LINK_STATE.name, lambda m: overall_state(m) == overall,
                              timeout_s, f"the {site} bridge to report {overall}", since_ns,
                              check=self.raise_if_dead)

    # Operator ----------------------------------------------------------------------------------

    def command(self, text: str, site: str = "master") -> int:
        """A /psm/state_command at a site (the operator's tools are at the master site);
        returns time.time_ns() just before it went out."""
        from crtk_msgs.msg import StringStamped

        return getattr(self, site).publish("/psm/state_command", StringStamped(string=text))

    def enable(self, timeout_s: float = STARTUP_TIMEOUT_S) -> int:
        """Enable the arm, repeating `enable` until the supervisor says ENABLED (and `resume`
        if a pause came in between: on this busy machine a stalled bridge may read as the link
        lost); returns when the probe saw ENABLED."""
        since = time.time_ns()
        deadline = time.monotonic() + timeout_s
        while True:
            self.raise_if_dead()
            status = self.status()
            paused = status is not None and status["state"] == "PAUSED"
            self.command("resume" if paused and not self.following() else "enable")
            with contextlib.suppress(AssertionError):
                return self.wait_state("ENABLED", since, RETRY_S)[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"the arm was not ENABLED within {timeout_s:g} s "
                                     f"(status {self.status()})")

    def resume(self, since_ns: int, timeout_s: float = 20.0) -> tuple[int, list[dict]]:
        """Once the console has stopped following, `resume` at the master site until the
        supervisor is ENABLED again. Returns when the probe saw ENABLED, and the supervisor's
        answers to the resume commands."""
        self.wait_following(False, 0, timeout_s=10.0, latest=True)
        deadline = time.monotonic() + timeout_s
        while True:
            self.raise_if_dead()
            self.command("resume")
            try:
                enabled_at = self.wait_state("ENABLED", since_ns, RETRY_S)[0]
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"resume did not take within {timeout_s:g} s; "
                                         f"answers: {self.answers('resume', since_ns)[-2:]}"
                                         f"{self._stale_following()}") from None
        return enabled_at, self.answers("resume", since_ns)

    def _stale_following(self) -> str:
        """The diagnosis when the console has stopped but the patient site still hears it
        following (the package bug in BridgeCore.refresh_states: see the fault tests' report)."""
        recent = self.patient.since("/console/following", time.time_ns() - 2000 * MS)
        if self.following() is False and recent and all(m.data for _, m in recent):
            return (f"; the console is not following, yet /console/following True arrived at "
                    f"the patient site {len(recent)} times in the last 2 s: the master bridge "
                    f"keeps re-sending a stale state (BridgeCore.refresh_states race)")
        return (f"; /console/following at the master site {self.following()}, at the patient "
                f"site {self.following('patient')}")

    def answers(self, command: str, since_ns: int) -> list[dict]:
        """The supervisor's answers to a state command sent since since_ns, one per command
        (every status repeats the last answer: those before since_ns are left out)."""
        before = [status.get("last_command") for _, status in self.statuses(0, since_ns - 1)]
        seen = {before[-1]["number"]} if before and before[-1] else set()
        out = []
        for _, status in self.statuses(since_ns):
            last = status.get("last_command")
            if last and last["command"] == command and last["number"] not in seen:
                seen.add(last["number"])
                out.append(last)
        return out

    def engage(self, timeout_s: float = 30.0) -> int:
        """Bring the session to ENABLED with the console following and the arm following its
        commands (resume or enable as needed; the virtual surgeon re-engages by itself).
        Returns time.time_ns()."""
        deadline = time.monotonic() + timeout_s
        next_try = 0.0
        while True:
            self.raise_if_dead()
            status, following = self.status(), self.following()
            if (status and status["state"] == "ENABLED" and following
                    and self.arm_state() == FOLLOWING):
                return time.time_ns()
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"not engaged within {timeout_s:g} s: status {status}, "
                                     f"arm {self.arm_state()!r}{self._stale_following()}")
            if status and now >= next_try:
                if status["state"] == "PAUSED" and not following:
                    self.command("resume")
                    next_try = now + RETRY_S
                elif status["state"] == "DISABLED":
                    self.command("enable")
                    next_try = now + RETRY_S
                elif status["state"] == "FAULT":
                    raise AssertionError(f"the supervisor is in FAULT: {status}")
            time.sleep(0.02)

    # What the probes saw -----------------------------------------------------------------------

    def statuses(self, since_ns: int = 0, until_ns: int | None = None) -> list[tuple[int, dict]]:
        return [(t, json.loads(m.data))
                for t, m in self.patient.since("/safety/status", since_ns, until_ns)]

    def status(self) -> dict | None:
        message = self.patient.latest("/safety/status")
        return json.loads(message.data) if message is not None else None

    def following(self, site: str = "master") -> bool | None:
        message = getattr(self, site).latest("/console/following")
        return None if message is None else message.data

    def wait_state(self, state: str, since_ns: int, timeout_s: float) -> tuple[int, dict]:
        """The first transition into state (a /safety/status whose state is it, after one that
        was not) at or after since_ns: (arrival, status)."""
        before = self.statuses(0, since_ns - 1)
        previous = [before[-1][1]["state"] if before else None]

        def entered(message) -> bool:
            current = json.loads(message.data)["state"]
            hit = current == state and previous[0] != state
            previous[0] = current
            return hit
        arrival, message = self.patient.wait_for("/safety/status", entered, timeout_s,
                                                 f"the supervisor to enter {state}", since_ns,
                                                 check=self.raise_if_dead)
        return arrival, json.loads(message.data)

    def wait_following(self, value: bool, since_ns: int, timeout_s: float = 15.0,
                       site: str = "master", latest: bool = False) -> int:
        """When /console/following became value at a site (a message at or after since_ns);
        with latest=True, returns at once if the latest message already says value."""
        probe = getattr(self, site)
        if latest and self.following(site) is value:
            return probe.records["/console/following"][-1][0]
        return probe.wait_for("/console/following", lambda m: m.data is value, timeout_s,
                              f"/console/following {value} at the {site} site", since_ns,
                              check=self.raise_if_dead)[0]

    def arm_diagnostics(self, since_ns: int = 0) -> list[tuple[int, str]]:
        """(stamp, message) of the arm controller's decisions, by stamp, from since_ns on."""
        out = []
        for _, message in self.patient.since("/diagnostics", 0):
            status = arm_status(message)
            if status is not None and stamp_ns(message) >= since_ns:
                out.append((stamp_ns(message), status.message))
        return sorted(out)

    def arm_state(self) -> str | None:
        decisions = self.arm_diagnostics()
        return decisions[-1][1] if decisions else None

    def wait_arm(self, prefix: str, since_ns: int, timeout_s: float = 10.0) -> tuple[int, str]:
        """The first arm controller decision starting with prefix, stamped at or after
        since_ns: (stamp, message)."""
        def decided(message) -> bool:
            status = arm_status(message)
            return (status is not None and status.message.startswith(prefix)
                    and stamp_ns(message) >= since_ns)
        _, message = self.patient.wait_for("/diagnostics", decided, timeout_s,
                                           f"the arm controller: {prefix!r}", since_ns - 1000 * MS,
                                           check=self.raise_if_dead)
        return stamp_ns(message), arm_status(message).message

    def _decoded(self, site: str, topic: str, start_ns: int, end_ns: int | None):
        from rclpy.serialization import deserialize_message

        probe = getattr(self, site)
        cls = message_class(probe.topics[topic].type_name)
        return [(t, deserialize_message(data, cls))
                for t, data in probe.since(topic, start_ns, end_ns)]

    def measured_tips(self, start_ns: int, end_ns: int | None = None) -> list:
        """(stamp, tip) of /psm/measured_cp measured in [start_ns, end_ns]."""
        end = end_ns if end_ns is not None else time.time_ns()
        messages = self._decoded("patient", "/psm/measured_cp", start_ns - 1000 * MS,
                                 end + 1000 * MS)
        return sorted((stamp_ns(m), tip_position(m)) for _, m in messages
                      if start_ns <= stamp_ns(m) <= end)

    def latest_measured(self):
        from rclpy.serialization import deserialize_message

        data = self.patient.latest("/psm/measured_cp")
        return deserialize_message(data, message_class("geometry_msgs/msg/PoseStamped"))

    def command_tips(self, start_ns: int, end_ns: int | None = None) -> list:
        """(arrival, tip) of the joint commands that arrived in [start_ns, end_ns]."""
        return [(t, command_tip(m)) for t, m in self._decoded(
            "patient", "/forward_position_controller/commands", start_ns, end_ns)]

    def servo_commands(self, start_ns: int, end_ns: int | None = None) -> list:
        """(arrival, stamp, tip) of the /psm/servo_cp that arrived at the patient site in
        [start_ns, end_ns]."""
        return [(t, stamp_ns(m), tip_position(m))
                for t, m in self._decoded("patient", "/psm/servo_cp", start_ns, end_ns)]

    def servo_goals(self, start_ns: int, end_ns: int | None = None) -> list:
        """(stamp, tip) of the /psm/servo_cp at the patient site stamped in [start_ns, end_ns]
        (the console's stamp: when it sent them)."""
        end = end_ns if end_ns is not None else time.time_ns()
        return sorted((stamp, tip) for _, stamp, tip in self.servo_commands(start_ns)
                      if start_ns <= stamp <= end)

    def wait_until(self, t_ns: int) -> None:
        """Let the session run until time.time_ns() >= t_ns (to record what follows an
        event), failing early if a process dies."""
        while time.time_ns() < t_ns:
            self.raise_if_dead()
            time.sleep(min(0.05, max(0.0, (t_ns - time.time_ns()) * 1e-9)))


def forged_pose(measured, offset_m: np.ndarray):
    """A /psm/servo_cp with a valid current stamp in the arm base frame, at measured's pose
    moved by offset_m."""
    from geometry_msgs.msg import PoseStamped

    message = PoseStamped()
    message.header.frame_id = BASE_FRAME
    set_stamp_ns(message, time.time_ns())
    message.pose.orientation = measured.pose.orientation
    position = tip_position(measured) + offset_m
    message.pose.position.x, message.pose.position.y, message.pose.position.z = (
        float(v) for v in position)
    return message
