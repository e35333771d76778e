"""`telesurg demo`: a telesurgery session in simulation, as real node processes over DDS.

Brings up the node graph (telesurg.graph), lets the virtual surgeon perform a task for the
requested time while recording what the arm did, stops every node cleanly, then writes and
prints the session figures (summary.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telesurg.graph import BRIDGE, SESSION_NODES, NodeSpec, nodes_of_site
from telesurg.kinematics import ARM_JOINT_NAMES, JOINT_LIMITS, JOINT_NAMES, forward
from telesurg.metrics import (
    engage_offsets,
    following_intervals,
    largest_step,
    limit_violations,
    motion_while_held,
    percentiles,
    tracking_errors,
)
from telesurg.params import ConfigError, load_parameter_file
from telesurg.processes import NodeGroup
from telesurg.resources import default_config, fastdds_profile

#: Contract topics the demo records at each site (raw CDR, deserialised after the session).
MASTER_TOPICS = {
    "/psm/servo_cp": "geometry_msgs/msg/PoseStamped",
    "/console/following": "std_msgs/msg/Bool",
    "/console/clutch": "std_msgs/msg/Bool",
}
PATIENT_TOPICS = {
    "/psm/setpoint_cp": "geometry_msgs/msg/PoseStamped",
    "/psm/measured_cp": "geometry_msgs/msg/PoseStamped",
    "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray",
}
RECORDED_TOPICS = {**MASTER_TOPICS, **PATIENT_TOPICS}
STARTUP_TIMEOUT_S = 60.0
MAX_DOMAIN_ID = 232


class DemoError(RuntimeError):
    """The session could not run or ended badly; the message says why."""


@dataclass(frozen=True)
class DemoOptions:
    task: str = "suturing"
    duration_s: float = 20.0
    seed: int = 1
    out: Path = Path("runs/latest")
    config: Path | None = None
    two_sites: bool = False        # each site on its own DDS domain, joined only by bridges
    link_profile: str = "lan"      # emulated network profile of both links (two sites)


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


class Recorder:
    """A node in the demo process that keeps the raw bytes of the recorded topics."""

    def __init__(self, context, topics: dict[str, str]):
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from telesurg.bridge_config import message_class
        from telesurg.ros_support import STATE_QOS

        self.node = Node("demo_recorder", context=context)
        self.messages: dict[str, list[tuple[int, bytes]]] = {t: [] for t in topics}
        self.frozen = False  # set when the task ends: shutting nodes down is not the session
        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        best_effort = QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT)
        for topic, type_name in topics.items():
            qos = STATE_QOS if topic.startswith("/console/") else (
                best_effort if topic == "/psm/servo_cp" else deep)
            self.node.create_subscription(message_class(type_name), topic,
                                          self._keeper(topic), qos, raw=True)

    def _keeper(self, topic: str):
        store = self.messages[topic]

        def keep(data: bytes) -> None:
            if not self.frozen:
                store.append((time.time_ns(), data))  # ROS clock, as header stamps
        return keep

    def count(self, topic: str) -> int:
        return len(self.messages[topic])


@dataclass
class Site:
    """One DDS domain of the session: its node processes and what the demo records there."""

    name: str
    domain_id: int
    nodes: list[tuple[NodeSpec, list[str]]]
    topics: dict[str, str]
    group: NodeGroup | None = None
    recorder: Recorder | None = None
    executor: object = None


def plan_sites(options: DemoOptions, config: Path, domain_id: int, out: Path,
               stack: contextlib.ExitStack) -> list[Site]:
    """The session's sites: one domain with every node, or (two_sites) the master and the
    patient site on two domains joined only by two bridges over two emulated links."""
    params = ["--params-file", str(config)]
    surgeon = ["-p", f"task:={options.task}", "-p", f"seed:={options.seed}"]

    def args(spec: NodeSpec) -> list[str]:
        return params + (surgeon if spec.name == "virtual_surgeon" else [])

    if not options.two_sites:
        return [Site("local", domain_id, [(spec, args(spec)) for spec in SESSION_NODES],
                     RECORDED_TOPICS)]
    bridge_config = write_session_bridge_config(options, out, stack)
    # Fast DDS accepts domain ids up to 232.
    patient_domain = domain_id + 1 if domain_id < MAX_DOMAIN_ID else domain_id - 1
    sites = []
    for name, domain, topics in (("master", domain_id, MASTER_TOPICS),
                                 ("patient", patient_domain, PATIENT_TOPICS)):
        nodes = [(spec, args(spec)) for spec in nodes_of_site(name)]
        nodes.append((BRIDGE, ["-p", f"role:={name}", "-p", f"config_file:={bridge_config}"]))
        sites.append(Site(name, domain, nodes, topics))
    return sites


def write_session_bridge_config(options: DemoOptions, out: Path,
                                stack: contextlib.ExitStack) -> Path:
    """A fresh key, and two links from bridge to bridge each through an in-process relay
    emulating options.link_profile."""
    from telesurg.bridge_config import free_udp_ports, write_loopback_bridge_config
    from telesurg.linkem import PROFILES
    from telesurg.relay import LinkRelay
    from telesurg.wire import write_key

    write_key(out / "bridge.key")
    links = []
    for seed in range(2):  # links a and b of the default configuration
        master_port, patient_port = free_udp_ports(2)
        relay = stack.enter_context(LinkRelay(
            PROFILES[options.link_profile], ("127.0.0.1", 0), ("127.0.0.1", 0),
            a_peer=("127.0.0.1", master_port), b_peer=("127.0.0.1", patient_port), seed=seed))
        links.append(((master_port, relay.a_address[1]), (patient_port, relay.b_address[1])))
    path = write_loopback_bridge_config(out, links)
    return path


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
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    domain_id = pick_domain_id()
    os.environ.update({k: v for k, v in session_environment(domain_id).items()
                       if k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                                "FASTDDS_DEFAULT_PROFILES_FILE")})
    with contextlib.ExitStack() as stack:
        sites = plan_sites(options, config, domain_id, out, stack)
        contexts = []
        for site in sites:
            logs = out / "logs" if len(sites) == 1 else out / "logs" / site.name
            site.group = NodeGroup(session_environment(site.domain_id), logs)
            context = rclpy.Context()
            rclpy.init(context=context, domain_id=site.domain_id,
                       signal_handler_options=SignalHandlerOptions.NO)
            contexts.append(context)
            site.executor = SingleThreadedExecutor(context=context)
            site.recorder = Recorder(context, site.topics)
            site.executor.add_node(site.recorder.node)
            threading.Thread(target=site.executor.spin, daemon=True).start()
        domains = ", ".join(f"{site.name} {site.domain_id}" for site in sites)
        say(f"telesurg demo: task {options.task}, {options.duration_s:g} s, seed "
            f"{options.seed}, DDS domains {domains}, logs in {out / 'logs'}")
        groups = [site.group for site in sites]
        try:
            for site in sites:
                for spec, arguments in site.nodes:
                    site.group.start(spec, arguments)
            _wait_until_ready(groups, _recorded(sites))
            say(f"graph up: {', '.join(n.spec.name for g in groups for n in g.nodes)}; "
                "running the task")
            started = time.monotonic()
            cpu_at_start = {id(n): n.cpu_seconds() for g in groups for n in g.nodes}
            while time.monotonic() - started < options.duration_s:
                _raise_if_dead(groups, "during the session")
                time.sleep(0.1)
            for site in sites:
                site.recorder.frozen = True
            recorded_s = time.monotonic() - started
            cpu_percent = {
                _node_label(site, n): round(
                    100.0 * (n.cpu_seconds() - cpu_at_start[id(n)]) / recorded_s, 1)
                for site in sites for n in site.group.nodes}
        finally:
            codes = {_node_label(site, n): code for site in sites
                     for n, code in zip(site.group.nodes, site.group.stop().values(),
                                        strict=True)}
            for site, context in zip(sites, contexts, strict=True):
                site.executor.shutdown()
                site.recorder.node.destroy_node()
                rclpy.try_shutdown(context=context)
    failed = {name: code for name, code in codes.items() if code not in (0, -signal.SIGINT)}
    if failed:
        raise DemoError(f"nodes did not shut down cleanly: {failed} (see {out / 'logs'})")
    summary = summarize(_recorded(sites), options, recorded_s)
    summary["cpu_percent"] = cpu_percent
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not summary["engagements"]:
        raise DemoError("the arm never followed the surgeon (see master_console.log)")
    return summary


def _recorded(sites: list[Site]) -> dict:
    return {topic: records for site in sites
            for topic, records in site.recorder.messages.items()}


def _node_label(site: Site, node) -> str:
    return node.spec.name if site.name == "local" else f"{site.name}/{node.spec.name}"


def _raise_if_dead(groups: list[NodeGroup], when: str) -> None:
    for group in groups:
        dead = group.first_dead()
        if dead:
            raise DemoError(f"node {dead.spec.name} exited {when} "
                            f"(code {dead.process.poll()}):\n{dead.log_tail()}")


def _wait_until_ready(groups: list[NodeGroup], recorded: dict) -> None:
    """Wait until the arm reports its pose and the console is ready to engage."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        _raise_if_dead(groups, "at start-up")
        if recorded["/psm/measured_cp"] and recorded["/console/following"]:
            return
        time.sleep(0.05)
    raise DemoError(f"the node graph did not come up within {STARTUP_TIMEOUT_S:.0f} s "
                    "(no arm pose, or the console never got master and arm poses); see the logs")


def summarize(messages: dict, options: DemoOptions, recorded_s: float) -> dict:
    from rclpy.serialization import deserialize_message

    from telesurg.bridge_config import message_class

    def decoded(topic):
        cls = message_class(RECORDED_TOPICS[topic])
        return [(t, deserialize_message(data, cls)) for t, data in messages[topic]]

    def tips(topic):
        return {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec:
                np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])
                for _, m in decoded(topic)}

    goals = tips("/psm/servo_cp")

    setpoints, measured = tips("/psm/setpoint_cp"), tips("/psm/measured_cp")
    measured_stamps = sorted(measured)
    measured_path = [measured[s] for s in measured_stamps]
    commands = decoded("/forward_position_controller/commands")
    command_times = [t for t, _ in commands]
    command_joints = [m.data for _, m in commands]
    command_tips = [forward(np.asarray(q[:len(ARM_JOINT_NAMES)]))[:3, 3]
                    for q in command_joints]
    lower = [JOINT_LIMITS[name].lower for name in JOINT_NAMES]
    upper = [JOINT_LIMITS[name].upper for name in JOINT_NAMES]
    changes = [(t, m.data) for t, m in decoded("/console/following")]
    intervals = following_intervals(changes, command_times[-1] if commands else 0)
    clutches = sum(1 for _, m in decoded("/console/clutch") if m.data)
    servo = messages["/psm/servo_cp"]
    servo_span_s = (servo[-1][0] - servo[0][0]) * 1e-9 if len(servo) > 1 else 0.0
    return {
        "task": options.task,
        "seed": options.seed,
        "duration_s": round(recorded_s, 3),
        "command_rate_hz": round((len(servo) - 1) / servo_span_s, 1) if servo_span_s else 0.0,
        "commands_sent": len(servo),
        "tracking_error_mm": percentiles(tracking_errors(setpoints, measured), 1000.0),
        "jump_max_mm": round(1000.0 * largest_step(command_tips), 4),
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
    say(f"  commands: {summary['commands_sent']} at {summary['command_rate_hz']} Hz, "
        f"engagements {summary['engagements']}")
    say(f"  tracking error (tip measured vs setpoint): p50 {error['p50']} mm, "
        f"p99 {error['p99']} mm, max {error['max']} mm")
    say(f"  largest tip step per controller tick: {summary['jump_max_mm']} mm; "
        f"joint limit violations: {summary['joint_limit_violations']}")
    say(f"  clutch presses {summary['clutch_presses']}; arm motion while not following "
        f"{summary['motion_while_not_following_mm']} mm; first goal after an engage "
        f"{summary['engage_offset_mm']} mm from the held arm")
