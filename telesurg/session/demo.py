"""`telesurg demo`: a telesurgery session in simulation, as real node processes over DDS.

Brings up the master site and the patient site (telesurg.contract.graph) on two DDS domains joined
only by two bridges, each link through an emulated long-distance network (a telesurg.linkem.relay
per link, in a process of their own) that scheduled outages can cut. The virtual surgeon performs a
task for the requested time while both sites are recorded; then the command sources stop, what is
in flight drains, every node stops cleanly, and the session figures (telesurg.analysis.summary) are
written to summary.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from telesurg.analysis.recording import BAG_DIRS
from telesurg.analysis.summary import (
    SummaryError,
    network_summary,
    safety_summary,
    summarize,
)
from telesurg.analysis.video import VideoSummaryError, video_summary
from telesurg.bags.recorder import RECORDER_NODE_NAME
from telesurg.bags.storage import BagReader
from telesurg.console.options import DEFAULT_BIND, DEFAULT_PORT, page_url
from telesurg.contract import topics
from telesurg.contract.graph import (
    BRIDGE,
    DEFAULT_LINKS,
    ENDOSCOPE,
    ENDOSCOPE_DECODER,
    SIMULATOR,
    SITE_CONTAINER,
    SITE_CONTAINER_NODES,
    VIRTUAL_SURGEON,
    WEB_CONSOLE,
    NodeSpec,
    nodes_of_site,
)
from telesurg.contract.params import ConfigError, load_parameter_file
from telesurg.contract.resources import (
    FASTDDS_PROFILE_VARIABLE,
    default_config,
    fastdds_profile,
)
from telesurg.contract.states import OperatingState, StateCommand
from telesurg.contract.topics import MASTER, PATIENT, SITES, Qos, site_topics
from telesurg.linkem.model import PROFILES, Outage, outage_timeline
from telesurg.session.operator_cli import MAX_DOMAIN_ID, parse_domain, parse_status
from telesurg.session.playback import ReplayPlan
from telesurg.session.processes import (
    CLEAN_STOP_CODES,
    TEARDOWN_ALARM,
    TEARDOWN_LIMIT_S,
    NodeGroup,
    PlannedProcess,
    container_arguments,
    cpu_seconds,
    node_arguments,
)

#: Longest wait, at the end of the task, for the arm to confirm DISABLED at the master site.
FINISH_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 60.0
DEFAULT_DURATION_S = 20.0
#: What shows that the session is up: the console ready to engage (it publishes following once
#: it has the master's and the arm's pose); at the patient site the arm's pose, and the
#: console's state and the operator-present pedal as the bridge carries them. Without the
#: last two, an engage could reach the safety supervisor before the pedal's state does, which
#: it takes for following without the operator (discovery between the master's processes
#: can take seconds).
READY_TOPICS = {MASTER: (topics.CONSOLE_FOLLOWING,),
                PATIENT: (topics.PSM_MEASURED_CP, topics.CONSOLE_FOLLOWING,
                          topics.CONSOLE_OPERATOR_PRESENT)}
#: With video, also a keyframe of each eye through the bridge at the master site: the video
#: figures count from the task's start, and the frames before the video path was up (the
#: bridges' handshake) or before a picture could be decoded there are not a loss.
VIDEO_READY_TOPICS = {MASTER: (topics.ENDOSCOPE_LEFT_COMPRESSED,
                               topics.ENDOSCOPE_RIGHT_COMPRESSED),
                      PATIENT: ()}
#: Records a site (`telesurg record`).
RECORDER = NodeSpec("recorder", "telesurg", "telesurg.cli", "both",
                    "Records the site's contract topics into a rosbag2 bag.")


class DemoError(RuntimeError):
    """The session could not run or ended badly; the message says why."""


class DemoOptionError(DemoError):
    """An option, a file or the environment the session was given is not usable: refused before
    anything is started or written."""


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
    accept_damage: bool = False  # replay a damaged recording without its damaged chunks
    arm_hardware: str = "mujoco"  # the arm controller's: mujoco in it, or ros2_control topics
    compose: bool = True         # SITE_CONTAINER_NODES in one process, or a process per node
    report: bool = True          # write out/report.html
    video: bool = False          # the patient site's stereo endoscope, carried to the master site
    console: bool = False        # a person drives from the console page: no virtual surgeon
    console_port: int = DEFAULT_PORT  # the console page's port on DEFAULT_BIND


def session_environment(domain_id: int) -> dict[str, str]:
    """Environment for every process of a local session: its own DDS domain and telesurg's
    Fast DDS profile, applied whole (SYSTEM_DEFAULT: LOCALHOST would put rmw_fastrtps's own
    transports, shared memory included, in place of the profile's), which keeps discovery
    on this machine."""
    env = dict(os.environ)
    env.update({
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        FASTDDS_PROFILE_VARIABLE: str(fastdds_profile()),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def pick_domain_id() -> int:
    """ROS_DOMAIN_ID from the environment, else a random one so parallel sessions don't mix."""
    configured = os.environ.get("ROS_DOMAIN_ID")
    if not configured:
        return random.randint(10, 99)
    try:
        return parse_domain(configured)
    except ValueError as error:
        raise DemoOptionError(f"ROS_DOMAIN_ID: {error}") from None


def prepare_run_directory(out: Path) -> None:
    """Create out (and its parents) if needed; DemoOptionError if it cannot hold a run."""
    if out.exists() and not out.is_dir():
        raise DemoOptionError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass  # writable: a read-only file system or folder fails here, not mid-session
    except OSError as error:
        raise DemoOptionError(f"--out {out}: cannot write a run there: "
                              f"{error.strerror or error}") from None


@dataclass
class Site:
    """One DDS domain of the session: its node processes, and the demo's own node there, which
    watches what the demo needs to know live (the recording is a `telesurg record` process)."""

    name: str
    domain_id: int
    processes: list[PlannedProcess]
    video: bool = False  # whether its recording holds the endoscope's video
    group: NodeGroup | None = None
    node: object = None
    loop: object = None  # the node's NodeLoop, served by a thread of the demo
    #: The site bridge's reports as they arrive (the final counters come after the command
    #: stream has stopped and drained).
    link_states: list = field(default_factory=list)
    heard: set[str] = field(default_factory=set)  # names of ready_topics() heard so far
    _readiness: list = field(default_factory=list)  # the subscriptions that hear them

    def watch(self, context) -> None:
        from rclpy.node import Node

        from telesurg.ros.loop import NodeLoop
        from telesurg.ros.qos import subscription

        self.node = Node(f"demo_{self.name}", context=context)
        self.loop = NodeLoop(self.node)
        # Every report, deep: the figures come from the last one after the drain.
        subscription(self.node, topics.BRIDGE_LINK_STATE,
                     lambda message: self.link_states.append((time.time_ns(), message)),
                     qos=Qos.EVENT, depth=100)
        self._readiness = [subscription(self.node, topic, self._hearing(topic), qos=topic.qos)
                           for topic in self.ready_topics()]

    def _hearing(self, topic: topics.Topic):
        """The callback that marks topic heard: any message, or for video a keyframe (the
        video's figures start at a picture the master site can decode)."""
        if not topic.video:
            return lambda _: self.heard.add(topic.name)
        from telesurg.video.codec import is_keyframe

        def on_frame(message) -> None:
            if is_keyframe(bytes(message.data)):
                self.heard.add(topic.name)
        return on_frame

    def ready_topics(self) -> tuple:
        """What the demo must hear at this site before the task starts."""
        return READY_TOPICS[self.name] + (VIDEO_READY_TOPICS[self.name] if self.video else ())

    def stop_watching_readiness(self) -> None:
        """Drop the subscriptions that told the site was up (the arm's pose streams at
        100 Hz: taking it for the whole session would cost this process a few % of a core)."""
        for watched in self._readiness:
            self.node.destroy_subscription(watched)
        self._readiness = []
        self.loop.refresh()

    def recording(self) -> bool:
        """Whether the site's recorder subscribes to every topic of the site, as this node
        has discovered (a recorder that has only joined the graph missed a run's first
        pedal presses once, discovering their publisher seconds later)."""
        return all(any(info.node_name == RECORDER_NODE_NAME
                       for info in self.node.get_subscriptions_info_by_topic(topic))
                   for topic in site_topics(self.name, self.video))


def plan_sites(options: DemoOptions, config: Path, domain_id: int, bridge_config: Path,
               replay: bool = False) -> list[Site]:
    """The master and the patient site, on two DDS domains joined only by their bridges; in a
    replay without the virtual surgeon (a bag player stands in for it), with options.console
    the console page in its place (its token in options.out/console.token). With
    options.compose,
    each site's SITE_CONTAINER_NODES share a site container process. Every process reads the
    configuration, then the session's own parameters (options.out/SITE_params.yaml, written
    here), which a node's section in the configuration cannot override."""
    # Fast DDS accepts domain ids up to 232.
    patient_domain = domain_id + 1 if domain_id < MAX_DOMAIN_ID else domain_id - 1
    sites = []
    for name, domain in zip(SITES, (domain_id, patient_domain), strict=True):
        specs = [spec for spec in nodes_of_site(name)
                 if not ((replay or options.console) and spec.name == VIRTUAL_SURGEON)]
        if name == PATIENT and options.arm_hardware == "ros2_control":
            specs.append(SIMULATOR)
        if options.video:
            specs.append(ENDOSCOPE if name == PATIENT else ENDOSCOPE_DECODER)
        specs.append(BRIDGE)
        session = {"virtual_surgeon": {"task": options.task, "seed": options.seed},
                   "arm_controller": {"hardware": options.arm_hardware},
                   BRIDGE.name: {"role": name, "config_file": str(bridge_config),
                                 "video": options.video},
                   # The figures judge the picture a viewer gets, keyframe requests included.
                   ENDOSCOPE_DECODER.name: {"decode_unwatched": True}}
        session_file = Path(options.out) / f"{name}_params.yaml"
        session_file.write_text(yaml.safe_dump(
            {node: {"ros__parameters": values} for node, values in session.items()
             if any(spec.name == node for spec in specs)}, sort_keys=False))
        params = ["--params-file", str(config), "--params-file", str(session_file)]
        contained = ([spec for spec in specs if spec.name in SITE_CONTAINER_NODES[name]]
                     if options.compose else [])
        contained.sort(key=lambda spec: SITE_CONTAINER_NODES[name].index(spec.name))
        processes = []
        if contained:
            names = tuple(spec.name for spec in contained)
            processes.append(PlannedProcess(SITE_CONTAINER, container_arguments(list(names),
                                                                                params), names))
        processes += [PlannedProcess.node(spec, params) for spec in specs
                      if spec not in contained]
        if options.console and name == MASTER:
            processes.append(PlannedProcess(WEB_CONSOLE, [
                "--port", str(options.console_port), "--token-file",
                str(write_console_token(Path(options.out))),
                "--figures", str(Path(options.out) / CONSOLE_FIGURES),
                *node_arguments(WEB_CONSOLE, params)], (WEB_CONSOLE.name,)))
        sites.append(Site(name, domain, processes, options.video))
    return sites


#: The console page's latency figures, written by web_console when it stops (in the run's
#: directory; summary.json's `console`).
CONSOLE_FIGURES = "console_figures.json"


def write_console_token(out: Path) -> Path:
    """A new token for the console page, in out/console.token (mode 0600)."""
    path = out / "console.token"
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_urlsafe(24) + "\n")
    return path


def console_url(out: Path, port: int) -> str:
    return page_url(DEFAULT_BIND, port, (out / "console.token").read_text().strip())


def open_links(options: DemoOptions, out: Path, stack: contextlib.ExitStack):
    """A fresh key, and links a and b from bridge to bridge, each through a relay emulating its
    profile. Returns the bridge configuration file and the links' process."""
    from telesurg.bridge.config import free_udp_ports, write_loopback_bridge_config
    from telesurg.bridge.wire import write_key
    from telesurg.linkem.emulator import LinkEmulator

    write_key(out / "bridge.key")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    ports = iter(free_udp_ports(2 * len(DEFAULT_LINKS)))  # distinct: picked in one go
    bridge_ports = {name: [next(ports), next(ports)] for name in DEFAULT_LINKS}
    links = stack.enter_context(LinkEmulator(
        [(name, profile, *bridge_ports[name], 2 * seed) for seed, (name, profile)
         in enumerate(zip(DEFAULT_LINKS, options.link_profiles, strict=True))],
        out / "logs" / "emulated_links.log"))
    ends = [tuple(zip(bridge_ports[name], links.ports[name], strict=True))
            for name in DEFAULT_LINKS]
    return write_loopback_bridge_config(out, ends), links


class ScriptedOperator:
    """The person at the console, in the master site's DDS domain: enables the arm at the start
    and resumes it after every pause once the links are not all cut (the surgeon then presses
    the operator-present pedal again to re-engage). Says each pause it resumes, with its cause.
    A pause before the task (a start-up race) is resumed like any other; a FAULT stops the
    session at once, naming its cause: only a person may clear a fault."""

    RETRY_S = 0.5

    def __init__(self, node, say, supervisor_log: Path | str = "the safety supervisor's log"):
        from telesurg.ros.qos import publisher, subscription

        self.state: OperatingState | None = None
        self.cause = ""  # of the last transition, from /safety/status
        self._status_state = ""  # the state that status gave
        self._say = say
        self._supervisor_log = supervisor_log
        self._clock = node.get_clock()
        self._publisher = publisher(node, topics.PSM_STATE_COMMAND)
        subscription(node, topics.PSM_OPERATING_STATE, self._on_state)
        subscription(node, topics.SAFETY_STATUS, self._on_status)
        self._next_try = 0.0
        self._pauses_seen = 0  # pauses heard so far
        self._announced = 0  # of them, those said to be resumed

    def _on_state(self, message) -> None:
        state = OperatingState.parse(message.state)
        if state is OperatingState.PAUSED and self.state is not OperatingState.PAUSED:
            self._pauses_seen += 1
        self.state = state

    def _on_status(self, message) -> None:
        status = parse_status(message.data) or {}
        self.cause = str(status.get("cause", ""))
        self._status_state = str(status.get("state", ""))

    def _command(self, command: StateCommand) -> None:
        from telesurg.ros.messages import state_command

        self._publisher.publish(state_command(command, self._clock))

    def enable(self, timeout_s: float) -> None:
        """Until the arm is ENABLED: enable it, resume it if it paused meanwhile; DemoError at
        once on a FAULT, or after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while self.state is not OperatingState.ENABLED:
            if self.state is OperatingState.FAULT:
                raise DemoError(f"the arm went to FAULT ({self.cause or 'cause unknown'}) "
                                f"before the task began; see {self._supervisor_log}")
            if time.monotonic() > deadline:
                raise DemoError(f"the arm was not ENABLED within {timeout_s:.0f} s of asking "
                                f"(operating state {self.state}"
                                f"{f', {self.cause}' if self.cause else ''}; see "
                                f"{self._supervisor_log})")
            if self.state is OperatingState.PAUSED:
                self._announce_pause()
                self._command(StateCommand.RESUME)
            else:
                self._command(StateCommand.ENABLE)
            time.sleep(self.RETRY_S)

    def disable(self, timeout_s: float) -> None:
        """Disable the arm, as at the end of a procedure, until it is DISABLED (DemoError after
        timeout_s): the console stops streaming commands once it hears so."""
        deadline = time.monotonic() + timeout_s
        while self.state is not OperatingState.DISABLED:
            if time.monotonic() > deadline:
                raise DemoError(f"the arm was not DISABLED within {timeout_s:.0f} s of asking at "
                                f"the end of the task (operating state {self.state}; see "
                                f"{self._supervisor_log})")
            self._command(StateCommand.DISABLE)
            time.sleep(self.RETRY_S)

    def resume_if_paused(self, links_all_cut: bool) -> None:
        now = time.monotonic()
        if self.state is OperatingState.PAUSED and not links_all_cut and now >= self._next_try:
            self._next_try = now + self.RETRY_S
            self._announce_pause()
            self._command(StateCommand.RESUME)

    def _announce_pause(self) -> None:
        """Say once per pause that the operator resumes it, and why it paused (once the status
        naming that cause has come: it travels apart from the state)."""
        if (self._pauses_seen > self._announced
                and self._status_state == OperatingState.PAUSED):
            self._announced = self._pauses_seen
            self._say(f"  operator: resume (the arm paused: {self.cause})")


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
    from rclpy.signals import SignalHandlerOptions

    config = Path(options.config) if options.config else default_config()
    try:
        load_parameter_file(config)
    except ConfigError as error:
        raise DemoOptionError(f"configuration error: {error}") from None
    if len(options.link_profiles) != len(DEFAULT_LINKS):
        raise DemoOptionError(f"one link profile per link ({', '.join(DEFAULT_LINKS)}), got "
                              f"{len(options.link_profiles)}")
    unknown = [p for p in options.link_profiles if p not in PROFILES]
    if unknown:
        raise DemoOptionError(f"unknown link profile {unknown[0]!r}: one of "
                              f"{', '.join(PROFILES)}")
    try:
        outage_timeline(options.outages, DEFAULT_LINKS)
    except ValueError as error:
        raise DemoOptionError(str(error)) from None
    if options.console and options.replay:
        raise DemoOptionError("--console and --replay: one driver at a time (a person or the "
                              "recording)")
    replay = ReplayPlan.of(options.replay, options.accept_damage) if options.replay else None
    for note in replay.damage if replay else ():
        say(f"telesurg demo: {note}")
    duration_s = options.duration_s or (replay.span_s if replay else DEFAULT_DURATION_S)
    if replay:
        duration_s = min(duration_s, replay.span_s)
    if options.console and not options.duration_s:
        duration_s = math.inf  # until Ctrl-C
    late = [(link, outage) for link, outage in options.outages if outage.start_s >= duration_s]
    if late:
        link, outage = late[0]
        raise DemoOptionError(f"--outage {link}@{outage.start_s:g}+{outage.duration_s:g} starts "
                              f"after the {duration_s:g} s task has ended: it would never happen")
    domain_id = pick_domain_id()
    out = Path(options.out)
    prepare_run_directory(out)
    scratch = None if options.record else Path(tempfile.mkdtemp(prefix="telesurg-demo-"))
    bag_root = scratch or out
    _clear_previous_run(out, say)
    os.environ.update({k: v for k, v in session_environment(domain_id).items()
                       if k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                                FASTDDS_PROFILE_VARIABLE)})
    with contextlib.ExitStack() as stack:
        if scratch:
            stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        bridge_config, links = open_links(options, out, stack)
        sites = plan_sites(options, config, domain_id, bridge_config, replay is not None)
        for site in sites:
            site.group = NodeGroup(session_environment(site.domain_id),
                                   out / "logs" / site.name)
            context = rclpy.Context()
            rclpy.init(context=context, domain_id=site.domain_id,
                       signal_handler_options=SignalHandlerOptions.NO)
            site.watch(context)
            spinner = threading.Thread(target=site.loop.run, daemon=True)
            spinner.start()
            # Closed however the session ends (the with's exit), after its nodes have stopped.
            stack.callback(_close_watch, site, context, spinner)
        domains = ", ".join(f"{site.name} {site.domain_id}" for site in sites)
        networks = ", ".join(f"{name} {profile}" for name, profile in
                             zip(DEFAULT_LINKS, options.link_profiles, strict=True))
        driver = (f"replay of {replay.master_bag}" if replay else "a person at the console page"
                  if options.console else f"task {options.task}, seed {options.seed}")
        length = "until Ctrl-C" if math.isinf(duration_s) else f"{duration_s:g} s"
        say(f"telesurg demo: {driver}, {length}, DDS domains {domains}, links "
            f"{networks}, logs in {out / 'logs'}")
        outages = OutageSchedule(links, options.outages, say)
        groups = [site.group for site in sites]
        replay_go, stop_replay = threading.Event(), threading.Event()
        try:
            for site in sites:
                site.group.start_program(RECORDER, [
                    "record", "--site", site.name, "--out", str(bag_root / BAG_DIRS[site.name]),
                    "--storage", options.storage, *(["--video"] if options.video else [])])
                for planned in site.processes:
                    site.group.start_planned(planned)
            if replay:  # the recorded surgeon's device, held still until the arm is enabled
                player, replayer = replay.start_player(sites[0].node, replay_go, stop_replay, say)
                sites[0].loop.refresh()
            _wait_until_ready(sites)
            operator = ScriptedOperator(sites[0].node, say,
                                        sites[1].group.log_of("safety_supervisor"))
            sites[0].loop.refresh()
            if options.console:  # the person enables the arm, with the page's buttons
                say(f"graph up: {'; '.join(_processes_of(site) for site in sites)}\n"
                    f"console page: {console_url(out, options.console_port)}\n"
                    "  there: Enable, then P (operator present) and the keys to move; "
                    f"Ctrl-C here ends the session ({length})")
            else:
                operator.enable(STARTUP_TIMEOUT_S)
                say(f"graph up: {'; '.join(_processes_of(site) for site in sites)}; "
                    "arm ENABLED; running the task")
            replay_go.set()
            started = time.monotonic()
            started_ns = time.time_ns()
            outages.start()
            cpu_at_start = {id(n): n.cpu_seconds() for g in groups for n in g.nodes}
            helpers_at_start = _helper_cpu_seconds(links)
            try:
                while time.monotonic() - started < duration_s:
                    if replay and not player.is_alive():
                        break  # the recording has been played to its end
                    _raise_if_dead(sites, "during the session")
                    if not options.console:  # a person resumes, or not, as they judge
                        operator.resume_if_paused(outages.down == set(DEFAULT_LINKS))
                    time.sleep(0.1)
            except KeyboardInterrupt:
                if not options.console:
                    raise
                say("Ctrl-C: ending the session")
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
            # The end of the procedure: the links back, the arm disabled (the console stops
            # streaming once it hears so), what is in flight drained, the final counters.
            for link in DEFAULT_LINKS:
                links.set_down(link, False)
            operator.disable(FINISH_TIMEOUT_S)
            _wait_for_final_counters(sites, options)
            # The figures end here: stopping the sites takes the links down.
            counted_until_ns = time.time_ns()
        finally:
            outages.cancelled.set()
            stop_replay.set()
            codes = {_node_label(site, n): code for site in sites
                     for n, code in zip(site.group.nodes, site.group.stop().values(),
                                        strict=True)}
        failed = {name: code for name, code in codes.items() if code not in CLEAN_STOP_CODES}
        if failed:
            raise DemoError(f"nodes did not shut down cleanly: {failed} (see {out / 'logs'})")
        # Stopped, their work done and said, but the middleware's node destroy did not return.
        overran = sorted(name for name, code in codes.items() if code == -TEARDOWN_ALARM)
        if overran:
            say(f"note: {', '.join(overran)} stopped, but the teardown (rcl's node destroy) "
                f"hung and ended itself after {TEARDOWN_LIMIT_S:g} s; stacks in the logs under "
                f"{out / 'logs'} (README, Known defects)")
        messages = {site.name: _read_bag(bag_root / BAG_DIRS[site.name], task_ended_ns)
                    for site in sites}
    driver = "replay" if options.replay else "console" if options.console else options.task
    summary = summarize(messages, driver, options.seed, recorded_s)
    try:
        summary.update(network_summary(
            *([report for report in site.link_states if report[0] <= counted_until_ns]
              for site in sites)))
    except SummaryError as error:
        raise DemoError(str(error)) from None
    summary.update(safety_summary(messages, sites[1].link_states, started_ns, task_ended_ns))
    if replay:
        summary["replay_of"] = str(options.replay)
        summary.update(replay.reference.deviation(messages, replayer.played_at_ns))
    if options.video:
        try:
            summary["video"] = video_summary(
                messages, [r for r in sites[1].link_states
                           if started_ns <= r[0] <= counted_until_ns],
                min(PROFILES[profile].delay_ms for profile in options.link_profiles), started_ns)
        except VideoSummaryError as error:
            raise DemoError(str(error)) from None
    if options.console:  # what the pages measured, if a page was open
        figures = out / CONSOLE_FIGURES
        if figures.exists():
            summary["console"] = json.loads(figures.read_text())
        else:
            summary["console"] = None
            say(f"note: the web console wrote no {figures} (see its log)")
    summary["cpu_percent"] = cpu_percent
    summary["teardown_overruns"] = overran
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not summary["engagements"] and not options.console:
        raise DemoError(f"the arm never followed the surgeon (see "
                        f"{sites[0].group.log_of('master_console')})")
    if options.report and options.record:
        from telesurg.analysis.report import write_report

        write_report(out, out)
    return summary


def _close_watch(site: Site, context, spinner: threading.Thread) -> None:
    """Stop the demo's own node of a site and wait for its loop's thread: one left running in
    rclpy while Python exits aborts the process ("terminate called without an active
    exception")."""
    import rclpy

    site.loop.stop()
    spinner.join(timeout=5.0)
    site.node.destroy_node()
    rclpy.try_shutdown(context=context)


def _read_bag(path: Path, until_ns: int) -> dict[str, list[tuple[int, bytes]]]:
    """A site's recording up to the end of the task (stopping the nodes is not the session)."""
    with BagReader(path) as bag:
        return {topic: [(t, data) for t, data in messages if t <= until_ns]
                for topic, messages in bag.read_all().items()}


#: What a run leaves in its directory, all of which an earlier run's must not mix with.
RUN_OUTPUTS = (*BAG_DIRS.values(), "summary.json", "report.html", "figures", "logs",
               CONSOLE_FIGURES)


def _clear_previous_run(out: Path, say) -> None:
    """A run directory holds one run: everything an earlier one left goes first, so that a run
    that fails leaves no earlier summary or report beside its own bags and logs."""
    previous = [out / name for name in RUN_OUTPUTS if (out / name).exists()]
    if previous:
        say(f"replacing the earlier run in {out}: {', '.join(p.name for p in previous)}")
    for path in previous:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _helper_cpu_seconds(links) -> dict[str, float]:
    """CPU time of the processes that emulate the network and record the sites."""
    return {"emulated_links": cpu_seconds(links.process.pid),
            "demo": time.process_time()}


def _processes_of(site: Site) -> str:
    return f"{site.name} " + ", ".join([RECORDER.name] + [planned.label()
                                                          for planned in site.processes])


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


def _raise_if_dead(sites: list[Site], when: str) -> None:
    for site in sites:
        dead = site.group.first_dead()
        if dead:
            raise DemoError(f"node {_node_label(site, dead)} exited {when} "
                            f"(code {dead.process.poll()}):\n{dead.log_tail()}")


def _wait_until_ready(sites: list[Site]) -> None:
    """Wait until the arm reports its pose, the console is ready to engage and both sites are
    being recorded."""
    wanted = {(site.name, topic.name) for site in sites for topic in site.ready_topics()}
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        _raise_if_dead(sites, "at start-up")
        heard = {(site.name, topic) for site in sites for topic in site.heard}
        if wanted <= heard and all(site.recording() for site in sites):
            for site in sites:
                site.stop_watching_readiness()
            return
        time.sleep(0.05)
    missing = [f"nothing on {site}'s {topic}" for site, topic in sorted(wanted - heard)]
    missing += [f"the {site.name} recorder did not join" for site in sites
                if not site.recording()]
    raise DemoError(f"the node graph did not come up within {STARTUP_TIMEOUT_S:.0f} s "
                    f"({'; '.join(missing)}); see the logs")
