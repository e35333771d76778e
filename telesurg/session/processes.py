"""Start telesurg node processes and stop them cleanly: no orphans, logs kept. Pure Python."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from telesurg.contract.graph import NodeSpec

_PR_SET_PDEATHSIG = 1
#: A node process whose teardown (its nodes' destroy in the middleware, once their work is done
#: and said) has not returned within TEARDOWN_LIMIT_S ends itself by this signal's default
#: action, which the kernel carries out even while a native call holds the interpreter (a
#: SIGTERM handler written in Python never runs then). Its exit status says so: -TEARDOWN_ALARM.
#: Its threads' stacks go to its log first, at TEARDOWN_STACKS_AFTER_S (telesurg demo and the
#: tests send SIGTERM 5 s after SIGINT, then SIGKILL).
TEARDOWN_ALARM = signal.SIGALRM
TEARDOWN_STACKS_AFTER_S = 4.0
TEARDOWN_LIMIT_S = 4.5
#: The exit statuses of a node process stopped by Ctrl-C that did its work: its own clean exit,
#: the signal's, or its teardown alarm's.
CLEAN_STOP_CODES = frozenset({0, -signal.SIGINT, -TEARDOWN_ALARM})


def die_with_parent(parent_pid: int | None = None) -> None:
    """If the parent process dies, even by SIGKILL, this process gets SIGTERM instead of living
    on as an orphan (run in a child before exec, or by the child itself). parent_pid: the
    parent this process had at its start, when it asks later: if that one has died already,
    SIGTERM comes at once."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def teardown_limit():
    """Around a process's teardown, after its work is done: its stacks in its log at
    TEARDOWN_STACKS_AFTER_S, its end by TEARDOWN_ALARM at TEARDOWN_LIMIT_S."""
    faulthandler.dump_traceback_later(TEARDOWN_STACKS_AFTER_S)
    signal.signal(TEARDOWN_ALARM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, TEARDOWN_LIMIT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process pid used so far (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prepare_child(niceness: int) -> None:
    """Runs in the child before exec: dies with the session, at the node's niceness (a lower
    priority needs no privilege; a higher one is kept where the user may not raise it)."""
    die_with_parent()
    if niceness:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
        except PermissionError:
            pass


def node_arguments(spec: NodeSpec, ros_args: list[str]) -> list[str]:
    """The arguments that start spec's module as the node spec.name."""
    return ["--ros-args", "-r", f"__node:={spec.name}", *ros_args]


def container_arguments(node_names: list[str], ros_args: list[str]) -> list[str]:
    """The arguments that start a site container (telesurg.nodes.site_container) holding the
    named nodes; the ROS arguments apply to each of them."""
    return [*node_names, "--ros-args", *ros_args]


@dataclass(frozen=True)
class PlannedProcess:
    """A process to start: `python -m spec.module ARGUMENTS`, running the ROS nodes named."""

    spec: NodeSpec
    arguments: list[str]
    nodes: tuple[str, ...]

    @classmethod
    def node(cls, spec: NodeSpec, ros_args: list[str]) -> PlannedProcess:
        return cls(spec, node_arguments(spec, ros_args), (spec.name,))

    def label(self) -> str:
        """Its name, with the nodes it holds if they are not just itself."""
        return (self.spec.name if self.nodes in ((), (self.spec.name,))
                else f"{self.spec.name} ({', '.join(self.nodes)})")


@dataclass
class NodeProcess:
    spec: NodeSpec
    process: subprocess.Popen
    log_path: Path
    nodes: tuple[str, ...] = ()  # the ROS nodes it runs
    exit_code: int | None = field(default=None)

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class NodeGroup:
    """Node processes of one session, started as `python -m module --ros-args ...`."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.nodes: list[NodeProcess] = []

    def start(self, spec: NodeSpec, ros_args: list[str]) -> NodeProcess:
        return self.start_planned(PlannedProcess.node(spec, ros_args))

    def start_planned(self, planned: PlannedProcess, prefix: tuple[str, ...] = ()) -> NodeProcess:
        """Start a planned process (behind the command prefix, e.g. `ip netns exec NS`)."""
        node = self.start_program(planned.spec, planned.arguments, prefix)
        node.nodes = planned.nodes
        return node

    def log_of(self, node_name: str) -> Path:
        """The log of the process that runs the named node (its own log if none is known)."""
        return next((node.log_path for node in self.nodes if node_name in node.nodes),
                    self.log_dir / f"{node_name}.log")

    def start_program(self, spec: NodeSpec, arguments: list[str],
                      prefix: tuple[str, ...] = ()) -> NodeProcess:
        """Start `python -m spec.module ARGUMENTS` (a node, or a command of its own)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        command = [*prefix, sys.executable, "-m", spec.module, *arguments]
        # A process group of its own (a terminal's Ctrl-C reaches the demo, which stops the
        # nodes in order), in the demo's session: Linux schedules each session as one group
        # (autogroup), within which the nodes' niceness counts; in sessions of their own it
        # would not count between them.
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, process_group=0,
                preexec_fn=lambda: _prepare_child(spec.niceness))
        node = NodeProcess(spec, process, log_path)
        self.nodes.append(node)
        return node

    def first_dead(self) -> NodeProcess | None:
        return next((node for node in self.nodes if not node.alive()), None)

    def stop(self, grace_s: float = 5.0, names=None) -> dict[str, int]:
        """Ctrl-C every node (or those named; their clean shutdown path), then SIGTERM, then
        SIGKILL whatever is still running. Returns each stopped node's exit code."""
        chosen = [node for node in self.nodes if names is None or node.spec.name in names]
        for escalation in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            running = [node for node in chosen if node.alive()]
            if not running:
                break
            for node in running:
                try:
                    os.killpg(node.process.pid, escalation)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(node.alive() for node in running):
                time.sleep(0.05)
        codes = {}
        for node in chosen:
            node.exit_code = node.process.wait()
            codes[node.spec.name] = node.exit_code
        return codes
