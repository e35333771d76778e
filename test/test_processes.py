"""Node processes as the demo starts them: each in a process group of its own (stopped as a
whole, out of reach of a terminal's Ctrl-C) but in the demo's session, so that Linux schedules
them in one group (autogroup) where their niceness counts: the video yields to the command path
only if it does. A node process whose teardown hangs leaves its stacks and ends itself."""

from __future__ import annotations

import os
import signal
import time

import pytest

from telesurg.contract.graph import (
    BRIDGE,
    COMPOSABLE_NODES,
    ENDOSCOPE,
    ENDOSCOPE_DECODER,
    SITE_CONTAINER,
    NodeSpec,
)
from telesurg.session.demo import RECORDER
from telesurg.session.processes import TEARDOWN_ALARM, NodeGroup

SLEEPER = "import time\ntime.sleep(60)\n"


def test_a_node_process_shares_the_session_in_a_group_of_its_own_at_its_niceness(tmp_path):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    group = NodeGroup({**os.environ, "PYTHONPATH": str(tmp_path)}, tmp_path / "logs")
    spec = NodeSpec("sleeper", "sleeper", "sleeper", "patient", "Sleeps.", niceness=7)
    node = group.start_program(spec, [])
    try:
        pid = node.process.pid
        assert os.getsid(pid) == os.getsid(0)
        assert os.getpgid(pid) == pid != os.getpgid(0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
        # Kernels with CONFIG_SCHED_AUTOGROUP name a task's autogroup; a task in a cpu cgroup of
        # its own (some CI runners) is in none and the file reads empty for it and its children.
        if os.path.exists(f"/proc/{pid}/autogroup"):
            with open(f"/proc/{pid}/autogroup") as theirs, open("/proc/self/autogroup") as ours:
                assert theirs.read().split()[:1] == ours.read().split()[:1]
    finally:
        codes = group.stop(grace_s=5.0)
    assert codes == {"sleeper": -signal.SIGINT}
    assert not node.alive()


def test_the_video_yields_to_every_other_process_of_a_session():
    command_path = [*COMPOSABLE_NODES.values(), BRIDGE, SITE_CONTAINER, RECORDER]
    highest_video = min(ENDOSCOPE.niceness, ENDOSCOPE_DECODER.niceness)
    assert all(spec.niceness < highest_video for spec in command_path)


STUCK_NODE = """
import time

from rclpy.node import Node

from telesurg.ros.loop import NodeLoop
from telesurg.ros.node import run_node


class StuckNode(Node):
    def __init__(self):
        super().__init__("stuck")
        self.loop = NodeLoop(self)
        print("serving", flush=True)

    def destroy_node(self):
        time.sleep(60)  # as rcl's node destroy has now and then


run_node("stuck", StuckNode)
"""


@pytest.mark.multiprocess
def test_a_node_whose_teardown_hangs_leaves_its_stacks_and_ends_itself(tmp_path, ros_env):
    (tmp_path / "stuck_node.py").write_text(STUCK_NODE)
    group = NodeGroup({**ros_env, "PYTHONPATH": str(tmp_path)}, tmp_path / "logs")
    node = group.start_program(NodeSpec("stuck", "stuck", "stuck_node", "patient", "Hangs."), [])
    deadline = time.monotonic() + 30.0
    while "serving" not in node.log_path.read_text():
        assert node.alive() and time.monotonic() < deadline, node.log_tail()
        time.sleep(0.05)
    started = time.monotonic()
    codes = group.stop(grace_s=10.0)  # no SIGTERM: it ends by itself
    assert codes == {"stuck": -TEARDOWN_ALARM}
    assert time.monotonic() - started < 8.0
    log = node.log_path.read_text()
    assert "Timeout (0:00:04)!" in log and "in destroy_node" in log, log
