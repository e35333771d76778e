"""`telesurg demo`: a telesurgery session in simulation, as real node processes over DDS.

Brings up the master site and the patient site (telesurg.contract.graph) on two DDS domains joined
only by two bridges, each link through an emulated long-distance network (telesurg.linkem.relay, in
this process) that scheduled outages can cut. The virtual surgeon performs a task for the requested
time while both sites are recorded; then the command sources stop, what is in flight drains, every
node stops cleanly, and the session figures are written and printed (summary.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from telesurg.analysis.metrics import (
    engage_offsets,
    following_intervals,
    largest_gap_within,
    largest_step,
    limit_violations,
    motion_while_held,
    percentiles,
    tracking_errors,
)
from telesurg.arm.kinematics import ARM_JOINT_NAMES, JOINT_LIMITS, JOINT_NAMES, forward
from telesurg.bags.recorder import RECORDER_NODE_NAME
from telesurg.bags.storage import BagReader, decode
from telesurg.contract import topics
from telesurg.contract.fields import link_state_values, stamp_ns, tip_position
from telesurg.contract.graph import BRIDGE, DEFAULT_LINKS, NodeSpec, nodes_of_site
from telesurg.contract.params import ConfigError, load_parameter_file
from telesurg.contract.resources import default_config, fastdds_profile
from telesurg.contract.states import (
    LINK_OVERALL_ID,
    ArmHold,
    OperatingState,
    OverallState,
    StateCommand,
)
from telesurg.contract.topics import MASTER, PATIENT, SITE_TOPICS, SITES, Qos
from telesurg.linkem.model import PROFILES, Outage, outage_timeline
from telesurg.patient.safety import Cause
from telesurg.session.playback import BAG_DIRS, ReplayPlan
from telesurg.session.processes import NodeGroup, cpu_seconds

#: The bridges' link timeout in the demo: twice the 50 ms default, because on a shared 2-core
#: machine running eight Python processes, every process (even at raised priority) stalls now
#: and then for 50-70 ms, and each stall would read as both links lost and pause the arm.
DEMO_LINK_TIMEOUT_MS = 100.0
#: Nodes stopped first at the end of the task, so that the command counters can settle.
COMMAND_SOURCES = ("virtual_surgeon", "master_console")
STARTUP_TIMEOUT_S = 60.0
DEFAULT_DURATION_S = 20.0
#: What shows that a site is up: the arm's pose, and the console ready to engage.
READY_TOPICS = {MASTER: (topics.CONSOLE_FOLLOWING,), PATIENT: (topics.PSM_MEASURED_CP,)}
#: Records a site (`telesurg record`), below the session nodes' priority: its deep queues
#: absorb a delay, the session's loops must not wait for it.
RECORDER = NodeSpec("recorder", "telesurg", "telesurg.cli", "both",
                    "Records the site's contract topics into a rosbag2 bag.", niceness=5)
MAX_DOMAIN_ID = 232


class DemoError(RuntimeError):
    """The session could not run or ended badly; the message says why."""


@dataclass(frozen=True)
class DemoOptions:
    task: str = "suturing"
    duration_s: float | None = None  # DEFAULT_DURATION_S, or a replay's recorded span
    seed: int = 1
    out: Path = Path("runs/latest")
    config: Path | None = None
    link_profiles: tuple[str, ...] = ("lan", "lan")  # emulated network of each link
    outages: tuple[tuple[str, Outage], ...] = ()     # (link or 'all', Outage), from task start
    record: bool = True          # leave the sites' bags in out
    storage: str = "mcap"
    replay: Path | None = None   # a run directory whose master bag drives the session
    report: bool = True          # write out/report.html


def session_environment(domain_id: int) -> dict[str, str]:
    """Environment for every process of a local session: its own DDS domain, discovery kept
    on this machine, and the faster-discovery Fast DDS profile."""
    env = dict(os.environ)
    env.update({
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(fastdds_profile()),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def pick_domain_id() -> int:
    """ROS_DOMAIN_ID from the environment, else a random one so parallel sessions don't mix."""
    configured = os.environ.get("ROS_DOMAIN_ID")
    return int(configured) if configured else random.randint(10, 99)


@dataclass
class Site:
    """One DDS domain of the session: its node processes, and the demo's own node there, which
    watches what the demo needs to know live (the recording is a `telesurg record` process)."""

    name: str
    domain_id: int
    nodes: list[tuple[NodeSpec, list[str]]]
    group: NodeGroup | None = None
    node: object = None
    executor: object = None
    #: The site bridge's reports as they arrive (the final counters come after the command
    #: stream has stopped and drained).
    link_states: list = field(default_factory=list)
    heard: set[str] = field(default_factory=set)  # names of READY_TOPICS heard so far

    def watch(self, context) -> None:
        from rclpy.node import Node

        from telesurg.ros.qos import subscription

        self.node = Node(f"demo_{self.name}", context=context)
        # Every report, deep: the figures come from the last one after the drain.
        subscription(self.node, topics.BRIDGE_LINK_STATE,
                     lambda message: self.link_states.append((time.time_ns(), message)),
                     qos=Qos.EVENT, depth=100)
        for topic in READY_TOPICS[self.name]:
            subscription(self.node, topic, lambda _, name=topic.name: self.heard.add(name),
                         qos=topic.qos)

    def recording(self) -> bool:
        """Whether the site's recorder subscribes to every topic of the site, as this node
        has discovered (a recorder that has only joined the graph missed a run's first
        pedal presses once, discovering their publisher seconds later)."""
        return all(any(info.node_name == RECORDER_NODE_NAME
                       for info in self.node.get_subscriptions_info_by_topic(topic))
                   for topic in SITE_TOPICS[self.name])


def plan_sites(options: DemoOptions, config: Path, domain_id: int, bridge_config: Path,
               replay: bool = False) -> list[Site]:
    """The master and the patient site, on two DDS domains joined only by their bridges; in a
    replay without the virtual surgeon (a bag player stands in for it)."""
    params = ["--params-file", str(config)]
    surgeon = ["-p", f"task:={options.task}", "-p", f"seed:={options.seed}"]
    # Fast DDS accepts domain ids up to 232.
    patient_domain = domain_id + 1 if domain_id < MAX_DOMAIN_ID else domain_id - 1
    sites = []
    for name, domain in zip(SITES, (domain_id, patient_domain), strict=True):
        nodes = [(spec, params + (surgeon if spec.name == "virtual_surgeon" else []))
                 for spec in nodes_of_site(name)
                 if not (replay and spec.name == "virtual_surgeon")]
        nodes.append((BRIDGE, ["-p", f"role:={name}", "-p", f"config_file:={bridge_config}"]))
        sites.append(Site(name, domain, nodes))
    return sites


def open_links(options: DemoOptions, out: Path, stack: contextlib.ExitStack):
    """A fresh key, and links a and b from bridge to bridge, each through a relay emulating its
    profile. Returns the bridge configuration file and the links' process."""
    from telesurg.bridge.config import free_udp_ports, write_loopback_bridge_config
    from telesurg.bridge.wire import write_key
    from telesurg.linkem.emulator import LinkEmulator

    write_key(out / "bridge.key")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    bridge_ports = {name: free_udp_ports(2) for name in DEFAULT_LINKS}
    links = stack.enter_context(LinkEmulator(
        [(name, profile, *bridge_ports[name], 2 * seed) for seed, (name, profile)
         in enumerate(zip(DEFAULT_LINKS, options.link_profiles, strict=True))],
        out / "logs" / "emulated_links.log"))
    ends = [tuple(zip(bridge_ports[name], links.ports[name], strict=True))
            for name in DEFAULT_LINKS]
    return write_loopback_bridge_config(out, ends, link_timeout_ms=DEMO_LINK_TIMEOUT_MS), links


class ScriptedOperator:
    """The person at the console, in the master site's DDS domain: enables the arm at the start
    and, once the links are not all cut, resumes it after every pause (the surgeon then
    presses the operator-present pedal again to re-engage)."""

    RETRY_S = 0.5

    def __init__(self, node, say):
        from std_msgs.msg import String

        from telesurg.ros.qos import publisher, subscription

        self.state: OperatingState | None = None
        self._say = say
        self._message = String
        self._publisher = publisher(node, topics.PSM_STATE_COMMAND)
        subscription(node, topics.PSM_OPERATING_STATE, self._on_state)
        self._next_try = 0.0

    def _on_state(self, message) -> None:
        self.state = OperatingState.parse(message.data)

    def _command(self, command: StateCommand) -> None:
        self._publisher.publish(self._message(data=command))

    def enable(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.state is not OperatingState.ENABLED:
            if time.monotonic() > deadline:
                raise DemoError(f"the arm was not ENABLED within {timeout_s:.0f} s of asking "
                                f"(operating state {self.state}; see "
                                "logs/patient/safety_supervisor.log)")
            self._command(StateCommand.ENABLE)
            time.sleep(self.RETRY_S)

    def resume_if_paused(self, links_all_cut: bool) -> None:
        now = time.monotonic()
        if self.state is OperatingState.PAUSED and not links_all_cut and now >= self._next_try:
            self._next_try = now + self.RETRY_S
            self._say("  operator: resume")
            self._command(StateCommand.RESUME)


class OutageSchedule(threading.Thread):
    """Cuts and restores the emulated links at the outages' times after start()."""

    def __init__(self, links, outages, say):
        super().__init__(name="demo-outages", daemon=True)
        self.timeline = outage_timeline(outages, DEFAULT_LINKS)
        self.links = links
        self.say = say
        self.cancelled = threading.Event()
        self.down: set[str] = set()

    def run(self) -> None:
        started = time.monotonic()
        for at_s, link, down in self.timeline:
            if self.cancelled.wait(max(0.0, started + at_s - time.monotonic())):
                return
            self.links.set_down(link, down)
            (self.down.add if down else self.down.discard)(link)
            self.say(f"  {at_s:g} s: link {link} {'cut' if down else 'restored'}")


def run_demo(options: DemoOptions, say=print) -> dict:
    """Run one session; return the summary (also written to options.out/summary.json)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    config = Path(options.config) if options.config else default_config()
    try:
        load_parameter_file(config)
    except ConfigError as error:
        raise DemoError(f"configuration error: {error}") from None
    if len(options.link_profiles) != len(DEFAULT_LINKS):
        raise DemoError(f"one link profile per link ({', '.join(DEFAULT_LINKS)}), got "
                        f"{len(options.link_profiles)}")
    unknown = [p for p in options.link_profiles if p not in PROFILES]
    if unknown:
        raise DemoError(f"unknown link profile {unknown[0]!r}: one of {', '.join(PROFILES)}")
    try:
        outage_timeline(options.outages, DEFAULT_LINKS)
    except ValueError as error:
        raise DemoError(str(error)) from None
    replay = ReplayPlan.of(options.replay) if options.replay else None
    duration_s = options.duration_s or (replay.span_s if replay else DEFAULT_DURATION_S)
    if replay:
        duration_s = min(duration_s, replay.span_s)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = None if options.record else Path(tempfile.mkdtemp(prefix="telesurg-demo-"))
    bag_root = scratch or out
    _clear_previous_run(out, say)
    domain_id = pick_domain_id()
    os.environ.update({k: v for k, v in session_environment(domain_id).items()
                       if k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                                "FASTDDS_DEFAULT_PROFILES_FILE")})
    with contextlib.ExitStack() as stack:
        if scratch:
            stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        bridge_config, links = open_links(options, out, stack)
        sites = plan_sites(options, config, domain_id, bridge_config, replay is not None)
        contexts = []
        for site in sites:
            site.group = NodeGroup(session_environment(site.domain_id),
                                   out / "logs" / site.name)
            context = rclpy.Context()
            rclpy.init(context=context, domain_id=site.domain_id,
                       signal_handler_options=SignalHandlerOptions.NO)
            contexts.append(context)
            site.executor = SingleThreadedExecutor(context=context)
            site.watch(context)
            site.executor.add_node(site.node)
            threading.Thread(target=site.executor.spin, daemon=True).start()
        domains = ", ".join(f"{site.name} {site.domain_id}" for site in sites)
        networks = ", ".join(f"{name} {profile}" for name, profile in
                             zip(DEFAULT_LINKS, options.link_profiles, strict=True))
        driver = (f"replay of {replay.master_bag}" if replay else
                  f"task {options.task}, seed {options.seed}")
        say(f"telesurg demo: {driver}, {duration_s:g} s, DDS domains {domains}, links "
            f"{networks}, logs in {out / 'logs'}")
        outages = OutageSchedule(links, options.outages, say)
        groups = [site.group for site in sites]
        replay_go, stop_replay = threading.Event(), threading.Event()
        try:
            for site in sites:
                site.group.start_program(RECORDER, [
                    "record", "--site", site.name, "--out", str(bag_root / BAG_DIRS[site.name]),
                    "--storage", options.storage])
                for spec, arguments in site.nodes:
                    site.group.start(spec, arguments)
            if replay:  # the recorded surgeon's device, held still until the arm is enabled
                player, replayer = replay.start_player(sites[0].node, replay_go, stop_replay, say)
            _wait_until_ready(groups, sites)
            operator = ScriptedOperator(sites[0].node, say)
            operator.enable(STARTUP_TIMEOUT_S)
            replay_go.set()
            say(f"graph up: {', '.join(n.spec.name for g in groups for n in g.nodes)}; "
                "arm ENABLED; running the task")
            started = time.monotonic()
            started_ns = time.time_ns()
            outages.start()
            cpu_at_start = {id(n): n.cpu_seconds() for g in groups for n in g.nodes}
            helpers_at_start = _helper_cpu_seconds(links)
            while time.monotonic() - started < duration_s:
                if replay and not player.is_alive():
                    break  # the recording has been played to its end
                _raise_if_dead(groups, "during the session")
                operator.resume_if_paused(outages.down == set(DEFAULT_LINKS))
                time.sleep(0.1)
            recorded_s = time.monotonic() - started
            task_ended_ns = time.time_ns()
            cpu_percent = {
                _node_label(site, n): round(
                    100.0 * (n.cpu_seconds() - cpu_at_start[id(n)]) / recorded_s, 1)
                for site in sites for n in site.group.nodes}
            cpu_percent.update({
                name: round(100.0 * (seconds - helpers_at_start[name]) / recorded_s, 1)
                for name, seconds in _helper_cpu_seconds(links).items()})
            outages.cancelled.set()
            stop_replay.set()
            sites[0].group.stop(names=COMMAND_SOURCES)
            _wait_for_final_counters(sites, options)
        finally:
            outages.cancelled.set()
            stop_replay.set()
            codes = {_node_label(site, n): code for site in sites
                     for n, code in zip(site.group.nodes, site.group.stop().values(),
                                        strict=True)}
            for site, context in zip(sites, contexts, strict=True):
                site.executor.shutdown()
                site.node.destroy_node()
                rclpy.try_shutdown(context=context)
        failed = {name: code for name, code in codes.items() if code not in (0, -signal.SIGINT)}
        if failed:
            raise DemoError(f"nodes did not shut down cleanly: {failed} (see {out / 'logs'})")
        messages = {site.name: _read_bag(bag_root / BAG_DIRS[site.name], task_ended_ns)
                    for site in sites}
    summary = summarize(messages, options, recorded_s)
    summary.update(network_summary(sites[0].link_states, sites[1].link_states))
    summary.update(safety_summary(messages, sites[1].link_states, started_ns, task_ended_ns))
    if replay:
        summary["replay_of"] = str(options.replay)
        summary.update(replay.deviation(messages, replayer.played_at_ns))
    summary["cpu_percent"] = cpu_percent
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not summary["engagements"]:
        raise DemoError("the arm never followed the surgeon (see master_console.log)")
    if options.report and options.record:
        from telesurg.analysis.report import write_report

        write_report(out, out)
    return summary


def _read_bag(path: Path, until_ns: int) -> dict[str, list[tuple[int, bytes]]]:
    """A site's recording up to the end of the task (stopping the nodes is not the session)."""
    with BagReader(path) as bag:
        return {topic: [(t, data) for t, data in messages if t <= until_ns]
                for topic, messages in bag.read_all().items()}


def _clear_previous_run(out: Path, say) -> None:
    """A run directory holds one run: the bags and report of an earlier one go."""
    previous = [out / name for name in (*BAG_DIRS.values(), "report.html", "figures")
                if (out / name).exists()]
    if previous:
        say(f"replacing the earlier run in {out}: {', '.join(p.name for p in previous)}")
    for path in previous:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _helper_cpu_seconds(links) -> dict[str, float]:
    """CPU time of the processes that emulate the network and record the sites."""
    return {"emulated_links": cpu_seconds(links.process.pid),
            "demo": time.process_time()}


def _node_label(site: Site, node) -> str:
    return f"{site.name}/{node.spec.name}"


#: Longest wait for the bridges' final counters after the command sources stopped.
DRAIN_TIMEOUT_S = 5.0


def _wait_for_final_counters(sites: list[Site], options: DemoOptions) -> None:
    """Wait until what was in flight when the commands stopped has arrived and both bridges
    have reported their counters since (they report at 10 Hz)."""
    in_flight_s = max(PROFILES[p].delay_ms + 4 * PROFILES[p].jitter_ms
                      for p in options.link_profiles) / 1e3
    settled_ns = time.time_ns() + int((in_flight_s + 0.3) * 1e9)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S + in_flight_s
    while time.monotonic() < deadline:
        if all(site.link_states and site.link_states[-1][0] > settled_ns
               for site in sites):
            return
        time.sleep(0.05)


def _raise_if_dead(groups: list[NodeGroup], when: str) -> None:
    for group in groups:
        dead = group.first_dead()
        if dead:
            raise DemoError(f"node {dead.spec.name} exited {when} "
                            f"(code {dead.process.poll()}):\n{dead.log_tail()}")


def _wait_until_ready(groups: list[NodeGroup], sites: list[Site]) -> None:
    """Wait until the arm reports its pose, the console is ready to engage and both sites are
    being recorded."""
    wanted = {(site.name, topic.name) for site in sites for topic in READY_TOPICS[site.name]}
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        _raise_if_dead(groups, "at start-up")
        heard = {(site.name, topic) for site in sites for topic in site.heard}
        if wanted <= heard and all(site.recording() for site in sites):
            return
        time.sleep(0.05)
    raise DemoError(f"the node graph did not come up within {STARTUP_TIMEOUT_S:.0f} s "
                    "(no arm pose, the console never got master and arm poses, or a recorder "
                    "never joined); see the logs")


def decoded(messages: dict, site: str, topic: topics.Topic) -> list[tuple[int, object]]:
    """(arrival ns, message) of a recorded topic at a site."""
    return [(t, decode(data, topic.type_name)) for t, data in messages[site].get(topic.name, [])]


def command_tips(commands) -> list[np.ndarray]:
    """Tool tip positions of recorded joint commands."""
    return [forward(np.asarray(m.data[:len(ARM_JOINT_NAMES)]))[:3, 3] for _, m in commands]


def summarize(messages: dict, options: DemoOptions, recorded_s: float) -> dict:
    def tips(site, topic):
        return {stamp_ns(m): tip_position(m) for _, m in decoded(messages, site, topic)}

    goals = tips(MASTER, topics.PSM_SERVO_CP)
    setpoints = tips(PATIENT, topics.PSM_SETPOINT_CP)
    measured = tips(PATIENT, topics.PSM_MEASURED_CP)
    measured_stamps = sorted(measured)
    measured_path = [measured[s] for s in measured_stamps]
    commands = decoded(messages, PATIENT, topics.FORWARD_POSITION_COMMANDS)
    command_times = [t for t, _ in commands]
    command_joints = [m.data for _, m in commands]
    lower = [JOINT_LIMITS[name].lower for name in JOINT_NAMES]
    upper = [JOINT_LIMITS[name].upper for name in JOINT_NAMES]
    changes = [(t, m.data) for t, m in decoded(messages, MASTER, topics.CONSOLE_FOLLOWING)]
    intervals = following_intervals(changes, command_times[-1] if commands else 0)
    clutches = sum(1 for _, m in decoded(messages, MASTER, topics.CONSOLE_CLUTCH) if m.data)
    servo = messages[MASTER].get(topics.PSM_SERVO_CP.name, [])
    arrivals = [(t, stamp_ns(m)) for t, m in decoded(messages, PATIENT, topics.PSM_SERVO_CP)]
    servo_span_s = (servo[-1][0] - servo[0][0]) * 1e-9 if len(servo) > 1 else 0.0
    return {
        "task": "replay" if options.replay else options.task,
        "seed": options.seed,
        "duration_s": round(recorded_s, 3),
        "command_rate_hz": round((len(servo) - 1) / servo_span_s, 1) if servo_span_s else 0.0,
        "command_gap_ms_max": round(1e-6 * largest_gap_within(arrivals, intervals), 3),
        "tracking_error_mm": percentiles(tracking_errors(setpoints, measured), 1000.0),
        "jump_max_mm": round(1000.0 * largest_step(command_tips(commands)), 4),
        "joint_limit_violations": limit_violations(command_joints, lower, upper),
        "engagements": len(intervals),
        "clutch_presses": clutches,
        "following_s": round(sum(end - start for start, end in intervals) * 1e-9, 3),
        "motion_while_not_following_mm": round(1000.0 * motion_while_held(
            measured_stamps, measured_path, intervals), 4),
        "engage_offset_mm": round(1000.0 * max(engage_offsets(
            [start for start, _ in intervals], sorted(goals), [goals[s] for s in sorted(goals)],
            sorted(setpoints), [setpoints[s] for s in sorted(setpoints)]), default=0.0), 4),
        "controller_ticks": len(commands),
    }


def print_summary(summary: dict, say=print) -> None:
    error = summary["tracking_error_mm"]
    age = summary["command_age_ms"]
    say(f"  commands: {summary['command_rate_hz']} Hz; bridged {summary['commands_sent']} sent, "
        f"{summary['commands_delivered']} delivered ({summary['commands_recovered']} from the "
        f"next datagram), {summary['commands_lost']} lost; "
        f"age at the patient bridge p50 {age['p50']} ms, p99 {age['p99']} ms; largest gap "
        f"while following {summary['command_gap_ms_max']} ms")
    say(f"  datagrams: {summary['duplicates_discarded']} second copies discarded, "
        f"{summary['rejected_datagrams']} rejected, {summary['untrusted_discarded']} from "
        "untrusted senders")
    for name, link in summary["links"].items():
        say(f"  link {name}: RTT p50 {link['rtt_ms_p50']} ms, p99 {link['rtt_ms_p99']} ms, "
            f"loss {link['loss_pct']} %, down {link['down_events']} times")
    say(f"  engagements {summary['engagements']}")
    say(f"  tracking error (tip measured vs setpoint): p50 {error['p50']} mm, "
        f"p99 {error['p99']} mm, max {error['max']} mm")
    say(f"  largest tip step per controller tick: {summary['jump_max_mm']} mm; "
        f"joint limit violations: {summary['joint_limit_violations']}")
    say(f"  clutch presses {summary['clutch_presses']}; arm motion while not following "
        f"{summary['motion_while_not_following_mm']} mm; first goal after an engage "
        f"{summary['engage_offset_mm']} mm from the held arm")
    if "replay_deviation_mm" in summary:
        deviation = summary["replay_deviation_mm"]
        say(f"  replay: tip path p50 {deviation['p50']} mm, p99 {deviation['p99']} mm, max "
            f"{deviation['max']} mm from the recorded one; compared {summary['replay_compared_s']}"
            f" s of the {summary['replay_following_s']} s it followed, "
            f"{summary['replay_differences']} differences in following "
            f"({summary['replay_rebased_stretches']} stretches compared from their start)")


def network_summary(master_states: list, patient_states: list) -> dict:
    """Command delivery and link figures from each site bridge's reports: the final counters
    (after the drain), and per link the patient bridge's view over the session."""
    if not master_states or not patient_states:
        raise DemoError("a bridge never reported its link state (see logs/*/bridge.log)")
    master = link_state_values(master_states[-1][1])[LINK_OVERALL_ID][1]
    patient = link_state_values(patient_states[-1][1])[LINK_OVERALL_ID][1]

    def number(values, key):
        return float(values[key]) if values.get(key) else None

    sent, delivered = int(master["commands_sent"]), int(patient["commands_delivered"])
    reports = [link_state_values(message) for _, message in patient_states]
    links = {}
    for name in DEFAULT_LINKS:
        views = [report[name][1] for report in reports if name in report]
        rtts = [float(v["rtt_ms"]) for v in views if v.get("rtt_ms")]
        rtt = percentiles(rtts)
        links[name] = {
            "rtt_ms_p50": rtt["p50"], "rtt_ms_p99": rtt["p99"],
            # Mean of the 10 Hz reports of loss over the last 1,000 sequence numbers.
            "loss_pct": round(float(np.mean([float(v["loss_percent"]) for v in views])), 4)
            if views else None,
            "down_events": int(views[-1]["down_events"]) if views else 0,
        }
    return {
        "commands_sent": sent,
        "commands_delivered": delivered,
        "commands_lost": sent - delivered,
        "commands_recovered": int(patient["recovered"]),
        "duplicates_discarded": int(patient["duplicates_discarded"]),
        "rejected_datagrams": int(master["rejected_datagrams"])
        + int(patient["rejected_datagrams"]),
        "untrusted_discarded": int(master["untrusted_discarded"])
        + int(patient["untrusted_discarded"]),
        "command_age_ms": {"p50": number(patient, "command_age_ms_p50"),
                           "p99": number(patient, "command_age_ms_p99")},
        "links": links,
    }


#: After a resume, how long the tip steps count towards resume_jump_mm.
RESUME_WINDOW_NS = 500_000_000
#: After a resume, how long the surgeon has to engage again.
REENGAGE_WINDOW_NS = 3_000_000_000


def safety_summary(messages: dict, patient_link_states: list, started_ns: int,
                   ended_ns: int) -> dict:
    """Operating state transitions (patient site, /safety/status), and for every pause: how fast
    the arm was held after the link was lost, how far it moved while paused, and how far it
    stepped in the 500 ms after the resume."""
    statuses = [(t, json.loads(m.data)) for t, m in decoded(messages, PATIENT,
                                                             topics.SAFETY_STATUS)]
    transitions = []
    for (_, before), (t, after) in zip(statuses, statuses[1:], strict=False):
        if after["state"] != before["state"]:
            transitions.append({"t_s": round((t - started_ns) * 1e-9, 3),
                                "from": before["state"], "to": after["state"],
                                "cause": after["cause"]})
    holds = [(stamp_ns(m), hold) for _, m in decoded(messages, PATIENT, topics.DIAGNOSTICS)
             for hold in map(ArmHold.of, m.status) if hold is not None]
    setpoints = sorted((stamp_ns(m), tip_position(m)) for _, m in decoded(messages, PATIENT,
                                                                   topics.PSM_SETPOINT_CP))
    measured = sorted((stamp_ns(m), tip_position(m)) for _, m in decoded(messages, PATIENT,
                                                                  topics.PSM_MEASURED_CP))
    commands = decoded(messages, PATIENT, topics.FORWARD_POSITION_COMMANDS)
    tips = command_tips(commands)
    reactions, paused_motion, resume_jumps = [], [], []
    for index, transition in enumerate(transitions):
        if transition["to"] != OperatingState.PAUSED:
            continue
        paused_at = started_ns + int(transition["t_s"] * 1e9)
        left = transitions[index + 1] if index + 1 < len(transitions) else None
        left_at = started_ns + int(left["t_s"] * 1e9) if left else None
        last_datagram = (_last_datagram_before_lost(patient_link_states, paused_at)
                         if Cause.LINK_LOST in transition["cause"].split(", ") else None)
        hold_ns = _hold_start(holds, paused_at)
        if hold_ns is None:
            continue
        if last_datagram is not None:
            # The first hold the controller commanded after the last datagram: "commands
            # stale" if it was following, the PAUSED hold if it already held (a clutch).
            held = next((t for t, hold in holds if t >= last_datagram and hold.holding), None)
            if held is not None:
                reactions.append((held - last_datagram) * 1e-6)
        hold_pose = next((tip for t, tip in setpoints if t >= hold_ns), None)
        end = left_at if left_at is not None else measured[-1][0] if measured else hold_ns
        if hold_pose is not None:
            paused_motion.append(max((float(np.linalg.norm(tip - hold_pose))
                                      for t, tip in measured if hold_ns <= t <= end),
                                     default=0.0))
        if left is not None and left["to"] == OperatingState.ENABLED:
            window = [tip for (t, _), tip in zip(commands, tips, strict=True)
                      if left_at <= t <= left_at + RESUME_WINDOW_NS]
            resume_jumps.append(largest_step(window))
    # Each resume with time left to re-engage (the surgeon re-presses the pedal after a second)
    # must be followed by following again.
    resumes = [started_ns + int(t["t_s"] * 1e9) for t in transitions
               if t["from"] == OperatingState.PAUSED and t["to"] == OperatingState.ENABLED
               and started_ns + int(t["t_s"] * 1e9) + REENGAGE_WINDOW_NS <= ended_ns]
    changes = [(t, m.data) for t, m in decoded(messages, MASTER, topics.CONSOLE_FOLLOWING)]
    return {
        "pauses": sum(1 for t in transitions if t["to"] == OperatingState.PAUSED),
        "pause_reaction_ms": percentiles(reactions),
        "motion_while_paused_mm": round(1000.0 * max(paused_motion, default=0.0), 4),
        "resume_jump_mm": round(1000.0 * max(resume_jumps, default=0.0), 4),
        "following_after_resume": bool(resumes) and all(
            any(following and resume < t <= resume + REENGAGE_WINDOW_NS
                for t, following in changes) for resume in resumes),
        "transitions": transitions,
    }


def _hold_start(holds: list[tuple[int, ArmHold]], paused_at: int) -> int | None:
    """When the arm controller began the hold in force once it learned of the pause at
    paused_at: the start of the run of hold reports that includes the first one for PAUSED
    (for a lost link, usually "commands stale" came first)."""
    start = None
    for stamp, hold in holds:
        if not hold.holding:
            start = None
            continue
        if start is None:
            start = stamp
        if stamp >= paused_at - 100_000_000 and hold.paused:
            return start
    return None


def _last_datagram_before_lost(link_states: list, before_ns: int) -> int | None:
    """When the patient bridge last heard any link, from its last report before before_ns,
    if that says LOST: the report's stamp minus the smallest last-heard age."""
    for _, message in reversed(link_states):
        stamp = stamp_ns(message)
        if stamp > before_ns:
            continue
        report = link_state_values(message)
        if report.get(LINK_OVERALL_ID, ("",))[0] != OverallState.LOST:
            return None
        ages = [float(values["last_heard_age_ms"]) for name, (_, values) in report.items()
                if name != LINK_OVERALL_ID and values.get("last_heard_age_ms")]
        return stamp - int(min(ages) * 1e6) if ages else None
    return None
