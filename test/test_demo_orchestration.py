"""The demo's orchestration without running a session: the scripted operator resumes a pause
it did not cause (telling why the arm paused) instead of repeating a command the supervisor
refuses, stops at once on a FAULT and disables the arm at the end; a run directory holds one
run; a dead node is named with its site; the sites' processes as planned (site containers, or a
process per node) with the session's own parameters."""

from __future__ import annotations

import contextlib
import importlib
import json
import threading

import numpy as np
import pytest
import yaml
from crtk_msgs.msg import OperatingState
from rclpy.clock import Clock
from rclpy.node import Node
from std_msgs.msg import String

from telesurg.contract import topics
from telesurg.contract.graph import BRIDGE, COMPOSABLE_NODES, SITE_CONTAINER
from telesurg.nodes.site_container import parse_node_names
from telesurg.session import demo
from telesurg.session.demo import DemoError, DemoOptions, ScriptedOperator, plan_sites


class FakeNode:
    """What ScriptedOperator uses of an rclpy node: its clock, publishers and subscriptions."""

    def __init__(self):
        self.sent: dict[str, list[str]] = {}
        self.callbacks = {}

    def create_publisher(self, _type, name, _qos):
        sent = self.sent.setdefault(name, [])
        return type("Publisher", (), {"publish": lambda _self, message: sent.append(
            message.string)})()

    def get_clock(self):
        return Clock()

    def create_subscription(self, _type, name, callback, _qos, raw=False):
        self.callbacks[name] = callback

    def hear(self, topic, text):
        message = (OperatingState(state=text) if topic is topics.PSM_OPERATING_STATE
                   else String(data=text))
        self.callbacks[topic.name](message)


def operator_on(node, said):
    operator = ScriptedOperator(node, said.append)
    operator.RETRY_S = 0.01
    return operator


@contextlib.contextmanager
def supervisor_answers(node, answer):
    """Within it, a supervisor thread calls answer(commands so far) on every command sent."""
    commands = node.sent[topics.PSM_STATE_COMMAND.name]
    stop = threading.Event()

    def run():
        handled = 0
        while not stop.wait(0.002):
            while handled < len(commands):
                handled += 1
                answer(commands[:handled])
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def test_a_pause_during_bring_up_is_resumed_and_said_not_enabled_for_ever():
    node, said = FakeNode(), []
    operator = operator_on(node, said)

    def supervisor(commands):
        if commands == ["enable"]:  # enabled, then paused at once by a start-up race
            node.hear(topics.SAFETY_STATUS, json.dumps(
                {"state": "PAUSED", "cause": "operator presence lost while following"}))
            node.hear(topics.PSM_OPERATING_STATE, "PAUSED")
        elif commands[-1] == "resume":
            node.hear(topics.PSM_OPERATING_STATE, "ENABLED")
    with supervisor_answers(node, supervisor):
        operator.enable(timeout_s=5.0)
    commands = node.sent[topics.PSM_STATE_COMMAND.name]
    assert commands[0] == "enable" and "resume" in commands
    assert "enable" not in commands[1:], "enable repeated though the supervisor refuses it"
    assert said == ["  operator: resume (the arm paused: operator presence lost while "
                    "following)"]


def test_a_fault_before_the_task_stops_at_once_naming_the_cause():
    node, said = FakeNode(), []
    operator = operator_on(node, said)
    node.hear(topics.SAFETY_STATUS, json.dumps({"state": "FAULT",
                                                 "cause": "arm joint states stopped"}))
    node.hear(topics.PSM_OPERATING_STATE, "FAULT")
    with pytest.raises(DemoError, match=r"FAULT \(arm joint states stopped\)"):
        operator.enable(timeout_s=5.0)
    assert node.sent[topics.PSM_STATE_COMMAND.name] == []


def test_each_pause_in_the_task_is_said_once_with_its_cause():
    node, said = FakeNode(), []
    operator = operator_on(node, said)
    operator.RETRY_S = 0.0  # every call may retry
    for cause in ("link lost", "command stream stale"):
        node.hear(topics.SAFETY_STATUS, json.dumps({"state": "PAUSED", "cause": cause}))
        node.hear(topics.PSM_OPERATING_STATE, "PAUSED")
        operator.resume_if_paused(links_all_cut=True)  # nothing while every link is cut
        for _ in range(3):
            operator.resume_if_paused(links_all_cut=False)
        node.hear(topics.PSM_OPERATING_STATE, "ENABLED")
    assert node.sent[topics.PSM_STATE_COMMAND.name] == ["resume"] * 6
    assert said == ["  operator: resume (the arm paused: link lost)",
                    "  operator: resume (the arm paused: command stream stale)"]


def test_the_pause_is_said_with_its_own_cause_not_the_one_before():
    """The state and the status (which names the cause) cross the bridge apart: the pause is
    said once the status that goes with it has come."""
    node, said = FakeNode(), []
    operator = operator_on(node, said)
    operator.RETRY_S = 0.0
    node.hear(topics.SAFETY_STATUS, json.dumps({"state": "ENABLED", "cause": "enable command"}))
    node.hear(topics.PSM_OPERATING_STATE, "PAUSED")
    operator.resume_if_paused(links_all_cut=False)
    assert said == []
    node.hear(topics.SAFETY_STATUS, json.dumps({"state": "PAUSED", "cause": "link lost"}))
    operator.resume_if_paused(links_all_cut=False)
    assert said == ["  operator: resume (the arm paused: link lost)"]


def test_at_the_end_the_arm_is_disabled_until_it_says_so():
    node, said = FakeNode(), []
    operator = operator_on(node, said)
    node.hear(topics.PSM_OPERATING_STATE, "ENABLED")

    def supervisor(commands):
        if commands.count("disable") == 2:  # the first one lost on the way
            node.hear(topics.PSM_OPERATING_STATE, "DISABLED")
    with supervisor_answers(node, supervisor):
        operator.disable(timeout_s=5.0)
    assert node.sent[topics.PSM_STATE_COMMAND.name] == ["disable", "disable"]
    operator.state = None
    with pytest.raises(DemoError, match=r"not DISABLED within 0 s .*see the safety "):
        operator.disable(timeout_s=0.05)


def plan(tmp_path, **options):
    sites = plan_sites(DemoOptions(out=tmp_path, task="figure8", seed=7, **options),
                       tmp_path / "telesurg.yaml", 40, tmp_path / "bridge.yaml")
    return {site.name: site for site in sites}


def layout(site):
    return [(planned.spec.name, planned.nodes) for planned in site.processes]


def test_each_site_runs_its_container_beside_the_arm_controller(tmp_path):
    sites = plan(tmp_path)
    assert layout(sites["master"]) == [
        ("site_container", ("virtual_surgeon", "master_console", "bridge"))]
    assert layout(sites["patient"]) == [("site_container", ("bridge", "safety_supervisor")),
                                        ("arm_controller", ("arm_controller",))]
    assert (sites["master"].domain_id, sites["patient"].domain_id) == (40, 41)
    container = sites["master"].processes[0]
    assert container.spec is SITE_CONTAINER and container.arguments == [
        "virtual_surgeon", "master_console", "bridge", "--ros-args",
        "--params-file", str(tmp_path / "telesurg.yaml"),
        "--params-file", str(tmp_path / "master_params.yaml")]
    # The session's own values in each node's section, where the configuration cannot
    # override them (a -p override would lose to it).
    assert yaml.safe_load((tmp_path / "master_params.yaml").read_text()) == {
        "virtual_surgeon": {"ros__parameters": {"task": "figure8", "seed": 7}},
        "bridge": {"ros__parameters": {"role": "master", "video": False,
                                       "config_file": str(tmp_path / "bridge.yaml")}}}
    assert yaml.safe_load((tmp_path / "patient_params.yaml").read_text()) == {
        "arm_controller": {"ros__parameters": {"hardware": "mujoco"}},
        "bridge": {"ros__parameters": {"role": "patient", "video": False,
                                       "config_file": str(tmp_path / "bridge.yaml")}}}


def test_video_adds_the_endoscope_at_the_patient_site_and_turns_the_bridges_video_on(tmp_path):
    sites = plan(tmp_path, video=True)
    assert layout(sites["patient"])[-1] == ("endoscope", ("endoscope",))
    assert "endoscope" not in [name for name, _ in layout(sites["master"])]
    for site in ("master", "patient"):
        assert sites[site].video
        params = yaml.safe_load((tmp_path / f"{site}_params.yaml").read_text())
        assert params["bridge"]["ros__parameters"]["video"] is True


def test_a_process_per_node_on_request_and_the_simulator_with_ros2_control(tmp_path):
    sites = plan(tmp_path, compose=False, arm_hardware="ros2_control")
    assert layout(sites["master"]) == [(name, (name,)) for name in
                                       ("master_console", "virtual_surgeon", "bridge")]
    assert layout(sites["patient"]) == [(name, (name,)) for name in
                                        ("safety_supervisor", "arm_controller", "simulator",
                                         "bridge")]
    supervisor = sites["patient"].processes[0]
    assert supervisor.arguments[:3] == ["--ros-args", "-r", "__node:=safety_supervisor"]


def test_a_replay_has_no_virtual_surgeon(tmp_path):
    sites = plan_sites(DemoOptions(out=tmp_path), tmp_path / "telesurg.yaml", 40,
                       tmp_path / "bridge.yaml", replay=True)
    assert layout(sites[0]) == [("site_container", ("master_console", "bridge"))]
    assert "virtual_surgeon" not in yaml.safe_load((tmp_path / "master_params.yaml")
                                                   .read_text())


@pytest.mark.parametrize("argv, error", [
    (["master_console", "no_such_node"], "invalid choice: 'no_such_node'"),
    (["bridge", "bridge", "--ros-args"], "given once, got bridge more than once"),
    (["--ros-args", "-p", "x:=1"], "the following arguments are required: NODE"),
])
def test_the_site_container_refuses_bad_node_lists(argv, error, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_node_names(argv)
    assert stopped.value.code == 2 and error in capsys.readouterr().err


def test_the_site_container_can_create_every_composable_node():
    assert parse_node_names(["bridge", "safety_supervisor", "--ros-args", "-p", "x:=1"]) == [
        "bridge", "safety_supervisor"]
    for name, spec in COMPOSABLE_NODES.items():
        node_class = getattr(importlib.import_module(spec.module), spec.node_class)
        assert issubclass(node_class, Node), name


def test_a_new_run_clears_everything_an_earlier_run_left(tmp_path):
    """A failed rerun used to leave the earlier summary.json beside its own bags and logs."""
    for name in ("master_bag", "patient_bag", "figures", "logs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "old").write_text("earlier run")
    for name in ("summary.json", "report.html"):
        (tmp_path / name).write_text("earlier run")
    (tmp_path / "notes.txt").write_text("the user's own")
    said = []
    demo._clear_previous_run(tmp_path, said.append)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    assert said and "summary.json" in said[0]


class DeadNode:
    spec = BRIDGE
    process = type("Process", (), {"poll": lambda self: 1})()

    def log_tail(self):
        return "Traceback ..."


def test_a_dead_node_is_named_with_its_site():
    site = demo.Site("patient", 12, [])
    site.group = type("Group", (), {"first_dead": lambda self: DeadNode()})()
    with pytest.raises(DemoError, match=r"^node patient/bridge exited during the session "
                                        r"\(code 1\)"):
        demo._raise_if_dead([site], "during the session")


def test_with_video_the_task_waits_for_both_eyes_at_the_master_site(tmp_path):
    eyes = {topics.ENDOSCOPE_LEFT_COMPRESSED, topics.ENDOSCOPE_RIGHT_COMPRESSED}
    (tmp_path / "plain").mkdir()
    with_video, without = plan(tmp_path, video=True), plan(tmp_path / "plain", video=False)
    assert eyes <= set(with_video["master"].ready_topics())
    assert not eyes & set(with_video["patient"].ready_topics())
    assert not eyes & set(without["master"].ready_topics())


def test_an_eye_is_heard_at_its_first_keyframe_other_topics_at_any_message():
    from sensor_msgs.msg import CompressedImage

    from telesurg.video.codec import H264Encoder

    encoder = H264Encoder(64, 48, 30.0)
    picture = np.zeros((48, 64, 3), np.uint8)
    keyframe, delta = (encoder.encode(picture + i, i) for i in range(2))
    assert keyframe.keyframe and not delta.keyframe
    site = demo.Site("master", 12, [], video=True)
    hear_left = site._hearing(topics.ENDOSCOPE_LEFT_COMPRESSED)
    hear_left(CompressedImage(format="h264", data=delta.data))
    assert site.heard == set()
    hear_left(CompressedImage(format="h264", data=keyframe.data))
    assert site.heard == {topics.ENDOSCOPE_LEFT_COMPRESSED.name}
    site._hearing(topics.CONSOLE_FOLLOWING)(object())
    assert topics.CONSOLE_FOLLOWING.name in site.heard
