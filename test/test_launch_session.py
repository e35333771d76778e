"""telesurg.launch.py under launch_pytest, ROS 2's own launch test tool: the launch runs in this
process's launch service, as `ros2 launch` would run it, and the test talks to its sites over
DDS. The two sites come up in their two domains, a CRTK client at the master site reads the arm
DISABLED and enables it, the arm then follows the virtual surgeon, and once the launch has shut
down no node it started is left running. (test_ros2_launch.py drives the `ros2` command line.)"""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest
from crtk_client import CrtkClient

from telesurg.contract import topics
from telesurg.contract.fields import tip_position

launch_pytest = pytest.importorskip(
    "launch_pytest", reason="ROS 2's launch_pytest is not on PyPI (make setup installs it from "
                            "ROS2_BUNDLE, ../shared/ros2)")

pytestmark = pytest.mark.multiprocess

FOLLOW_TIMEOUT_S = 30.0
#: The surgeon's hand moves the tip by millimetres within a second; a held arm by far less.
MOVED_MM = 1.0


def telesurg_nodes() -> list[psutil.Process]:
    """This process's descendants that run a telesurg node."""
    return [child for child in psutil.Process().children(recursive=True)
            if any("telesurg" in part for part in _cmdline(child))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # gone meanwhile
        return []


@pytest.fixture
def patient_domain(second_domain_id) -> int:
    return second_domain_id


@launch_pytest.fixture
def session_launch(ros_env, patient_domain):
    """telesurg.launch.py with its defaults, the patient site in a fresh domain."""
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchDescription

    source = PythonLaunchDescriptionSource(os.path.join(
        get_package_share_directory("telesurg"), "launch", "telesurg.launch.py"))
    return LaunchDescription([
        IncludeLaunchDescription(source, launch_arguments=[
            ("patient_domain", str(patient_domain))]),
        launch_pytest.actions.ReadyToTest()])


class ArmWatch:
    """The patient site's /psm/measured_cp, as the arm controller reports it."""

    def __init__(self, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from telesurg.ros.qos import subscription

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("arm_watch", context=self.context)
        self.tips: list[np.ndarray] = []
        subscription(self.node, topics.PSM_MEASURED_CP,
                     lambda message: self.tips.append(tip_position(message)))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def travel_mm(self, seconds: float) -> float:
        """How far the tip goes from where it is, over the next `seconds` (waiting first for a
        sample: discovery may take seconds)."""
        self.tips.clear()
        deadline = time.monotonic() + FOLLOW_TIMEOUT_S
        while not self.tips:
            assert time.monotonic() < deadline, f"no {topics.PSM_MEASURED_CP.name} at the " \
                                                "patient site"
            self.executor.spin_once(timeout_sec=0.05)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        return max(float(np.linalg.norm(tip - self.tips[0])) for tip in self.tips) * 1e3

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.mark.launch(fixture=session_launch)
def test_the_one_machine_launch_follows_the_surgeon_once_enabled(ros_env, patient_domain):
    client = CrtkClient(int(ros_env["ROS_DOMAIN_ID"]))
    arm = ArmWatch(patient_domain)
    try:
        client.spin_until(lambda: any(state[1:] == ("DISABLED", True, False)
                                      for state in client.states), "DISABLED, homed, not busy")
        held = arm.travel_mm(1.0)
        assert held < MOVED_MM, f"the DISABLED arm moved {held:.3f} mm"
        client.command("enable", lambda state: state[1] == "ENABLED")
        deadline = time.monotonic() + FOLLOW_TIMEOUT_S
        moved = 0.0
        while moved < MOVED_MM and time.monotonic() < deadline:
            moved = arm.travel_mm(1.0)
        assert moved >= MOVED_MM, f"the ENABLED arm moved only {moved:.3f} mm in a second"
        started = telesurg_nodes()
        assert len(started) >= 6, [_cmdline(process) for process in started]
    finally:
        client.close()
        arm.close()
    yield  # the launch shuts down here
    _, alive = psutil.wait_procs(started, timeout=15.0)
    assert not alive, [_cmdline(process) for process in alive]
