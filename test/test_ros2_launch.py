"""The launch files really launched, and the `ros2` command line on telesurg, where ROS 2's
launch system and command line are installed (`make setup` installs them from the bundle in
../shared/ros2 when it is there; elsewhere these tests skip, naming what is missing).

Each launch runs as `ros2 launch` would from a terminal, on a DDS domain of its own; the tests
read the graph with `ros2 topic echo`, the way a user checks a launch."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crtk_client import CrtkClient

from telesurg.bridge.wire import write_key
from telesurg.bringup import plan as support
from telesurg.contract.graph import BRIDGE, SESSION_NODES
from telesurg.session.processes import die_with_parent

pytestmark = pytest.mark.multiprocess

ROS2 = Path(sys.prefix) / "bin" / "ros2"
STARTED = re.compile(r"process started with pid \[(\d+)\]")
UP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@pytest.fixture
def launch_env(ros_env):
    """ros_env (the venv its ament prefix, conftest.py): skip unless ros2 and telesurg are
    there."""
    env = dict(ros_env)
    if not ROS2.is_file():
        pytest.skip(f"{ROS2} is not installed: ROS 2's launch system and command line are not "
                    "on PyPI (make setup installs them from ROS2_BUNDLE, ../shared/ros2)")
    prefix = subprocess.run([ROS2, "pkg", "prefix", "telesurg"], env=env, capture_output=True,
                            text=True, timeout=30)
    if prefix.returncode != 0:
        pytest.skip(f"telesurg is not in the ament index of {env['AMENT_PREFIX_PATH']} "
                    f"({prefix.stderr.strip()}): make setup lays it out in .venv")
    return env


class Launch:
    """One `ros2 launch` process, its output in a log file."""

    def __init__(self, arguments: list[str], env: dict, log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [ROS2, "launch", "telesurg", *arguments], env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def node_pids(self) -> list[int]:
        return [int(pid) for pid in STARTED.findall(self.output())]

    def wait_nodes_started(self, names, timeout_s: float = UP_TIMEOUT_S) -> None:
        """Until every named node has logged, a name named twice by two nodes (it is past its
        imports: a signal before that interrupts the import, which launch reports as a
        process that died)."""
        deadline = time.monotonic() + timeout_s
        while missing := [name for name in set(names)
                          if self.output().count(f"[{name}]: ") < names.count(name)]:
            assert time.monotonic() < deadline, f"{missing} never logged: {self.output()}"
            time.sleep(0.1)

    def stop(self, signum: int) -> int:
        """Stop the launch as a user would and return its exit status: SIGINT to its whole
        process group, as a terminal's Ctrl-C does (the nodes get it too, then launch's own);
        SIGTERM to ros2 launch alone, as `kill PID` does."""
        if signum == signal.SIGINT:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def kill_all(self) -> None:
        """Teardown: whatever is left of the launch and its nodes."""
        for pid in [self.process.pid, *self.node_pids()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def launches(tmp_path):
    started = []

    def launch(arguments: list[str], env: dict) -> Launch:
        started.append(Launch(arguments, env, tmp_path / f"launch_{len(started)}.log"))
        return started[-1]

    yield launch
    for item in started:
        item.kill_all()


def ros2(arguments: list[str], env: dict) -> subprocess.CompletedProcess:
    """A `ros2` command without the daemon, repeated while it fails for up to UP_TIMEOUT_S
    (a node it names may not be discovered yet)."""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while True:
        result = subprocess.run([ROS2, *arguments, "--no-daemon"], env=env,
                                capture_output=True, text=True, timeout=60)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result


def echo_once(topic: str, env: dict, until: str, timeout_s: float = UP_TIMEOUT_S) -> str:
    """`ros2 topic echo --once topic`, repeated until its output contains `until`."""
    deadline = time.monotonic() + timeout_s
    output = ""
    while time.monotonic() < deadline:
        try:
            output = subprocess.run(
                [ROS2, "topic", "echo", "--once", "--no-daemon", topic], env=env,
                capture_output=True, text=True,
                timeout=max(1.0, deadline - time.monotonic())).stdout
        except subprocess.TimeoutExpired:
            break
        if until in output:
            return output
    raise AssertionError(f"no {until!r} on {topic} within {timeout_s} s; last: {output[-300:]}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """The pids still running after timeout_s (none, once all have exited)."""
    deadline = time.monotonic() + timeout_s
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_ros2_knows_the_package_and_runs_its_executables(launch_env):
    prefix = subprocess.run([ROS2, "pkg", "prefix", "telesurg"], env=launch_env,
                            capture_output=True, text=True, timeout=30).stdout.strip()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()
    listed = subprocess.run([ROS2, "pkg", "executables", "telesurg"], env=launch_env,
                            capture_output=True, text=True, timeout=30).stdout.split()
    for executable in ("arm_controller", "bridge", "safety_supervisor", "master_console",
                       "virtual_surgeon", "site_container", "telesurg"):
        assert executable in listed
    run = subprocess.run([ROS2, "run", "telesurg", "telesurg", "--help"], env=launch_env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "demo" in run.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_default_launch_comes_up_and_stops_with_its_nodes(
        launch_env, launches, signum, second_domain_id):
    """telesurg.launch.py with its defaults (sim:=mujoco), where robot_state_publisher is not
    installed: both sites come up in their two domains, joined by their bridges, the arm
    DISABLED (a crtk_msgs/OperatingState); stopping ros2 launch stops every node. (That the arm
    then follows once enabled: test_launch_session.py.)"""
    patient_env = dict(launch_env, ROS_DOMAIN_ID=str(second_domain_id))
    launch = launches(["telesurg.launch.py", f"patient_domain:={second_domain_id}"],
                      launch_env)
    state = echo_once("/psm/operating_state", launch_env, "DISABLED")
    for field in ("header:", "stamp:", "state: DISABLED", "is_homed: true", "is_busy: false"):
        assert field in state, state
    launch.wait_nodes_started([spec.name for spec in SESSION_NODES] + [BRIDGE.name] * 2)
    pids = launch.node_pids()
    assert len(pids) == 6, launch.output()[-2000:]  # two nodes and a bridge at each site
    assert all(alive(pid) for pid in pids)
    rate = ros2(["param", "get", "/arm_controller", "rate_hz"], patient_env)
    assert rate.stdout.strip() == "Double value is: 500.0", rate
    status = launch.stop(signum)
    assert not wait_gone(pids), f"nodes left running after {signum.name}: {launch.output()}"
    if signum == signal.SIGINT:  # every node stopped cleanly, none "died"
        assert status == 0, launch.output()[-2000:]
        assert launch.output().count("process has finished cleanly") == 6, launch.output()[-2000:]


def test_two_sites_on_two_domains_join_over_the_bridge(launch_env, launches, tmp_path,
                                                       second_domain_id):
    """master_site.launch.py and patient_site.launch.py in two DDS domains, the default
    bridge configuration (both links on loopback): both sites see both links up."""
    key = tmp_path / "bridge.key"
    write_key(key)
    patient_env = dict(launch_env, ROS_DOMAIN_ID=str(second_domain_id))
    key_argument = f"key_file:={key}"
    master = launches(["master_site.launch.py", key_argument], launch_env)
    # RViz and recording asked for where neither is installed: a line each, the site runs.
    patient = launches(["patient_site.launch.py", key_argument, "rviz:=true", "record:=true"],
                       patient_env)
    for env in (launch_env, patient_env):
        echo_once("/bridge/link_state", env, "REDUNDANT")
    assert "DISABLED" in echo_once("/psm/operating_state", launch_env, "DISABLED")
    for program, package in (("rviz2", "rviz2"), ("ros2 bag", support.ROS2_BAG_PACKAGE)):
        assert f"but {program} " in patient.output() or support.installed(package)
    # A CRTK client at the master site: the state repeats (it subscribes volatile), each
    # command brings a newer state saying what it did, and homing works as CRTK says.
    client = CrtkClient(int(launch_env["ROS_DOMAIN_ID"]))
    try:
        client.spin_until(lambda: len(client.states) >= 3, "repeated state")
        client.command("unhome", lambda state: state[1:] == ("DISABLED", False, False))
        refused = client.command("enable", lambda state: True)  # refused: not homed
        client.command("home", lambda state: state[1:] == ("DISABLED", True, False))
        assert {state for _, state, _, _ in client.states[refused:]} == {"DISABLED"}
        client.spin_until(lambda: len(client.states) >= 20, "more states")
        stamps = [stamp for stamp, *_ in client.states]
        assert stamps[0] > 0 and all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), \
            str([(s - stamps[0]) // 1000 for s in stamps])
    finally:
        client.close()
    # Enabled from the master site, the virtual surgeon's commands reach the patient site.
    enable = subprocess.run([ROS2, "run", "telesurg", "telesurg", "state", "enable"],
                            env=launch_env, capture_output=True, text=True, timeout=60)
    assert enable.returncode == 0, (enable.stdout, enable.stderr)
    assert "position" in echo_once("/psm/servo_cp", patient_env, "position")
    for site in (master, patient):
        pids = site.node_pids()
        assert site.stop(signal.SIGINT) == 0, site.output()[-2000:]
        assert not wait_gone(pids)


@pytest.mark.parametrize(("parent", "survives"), [("the same", True), ("another", False)])
def test_a_process_whose_parent_died_while_it_started_stops_at_once(parent, survives):
    """A node asks to die with its parent only after its slow imports: if the parent it
    started with is gone by then, it stops at once instead of running on as an orphan."""
    started_with = "os.getppid()" if parent == "the same" else "os.getppid() + 1"
    child = subprocess.run(
        [sys.executable, "-c", "import os; from telesurg.session.processes import "
         f"die_with_parent; die_with_parent({started_with}); print('running')"],
        capture_output=True, text=True, timeout=60)
    assert (child.returncode, child.stdout) == ((0, "running\n") if survives
                                                else (-signal.SIGTERM, ""))


def test_gazebo_asked_for_where_it_is_missing_fails_naming_it(launch_env, launches):
    if support.installed(support.GZ_SIM_LAUNCH.package):
        pytest.skip("Gazebo (ros_gz_sim) is installed here")
    launch = launches(["patient_site.launch.py", "sim:=gazebo"], launch_env)
    assert launch.process.wait(timeout=60) != 0
    assert f"package '{support.GZ_SIM_LAUNCH.package}' not found" in launch.output()
    assert not launch.node_pids()
