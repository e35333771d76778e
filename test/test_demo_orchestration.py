"""The demo's orchestration without running a session: the scripted operator resumes a pause
it did not cause (telling why the arm paused) instead of repeating a command the supervisor
refuses and stops at once on a FAULT; a run directory holds one run; a dead node is named with
its site."""

from __future__ import annotations

import json
import threading

import pytest
from std_msgs.msg import String

from telesurg.contract import topics
from telesurg.contract.graph import BRIDGE
from telesurg.session import demo
from telesurg.session.demo import DemoError, ScriptedOperator


class FakeNode:
    """What ScriptedOperator uses of an rclpy node: its publishers and subscriptions."""

    def __init__(self):
        self.sent: dict[str, list[str]] = {}
        self.callbacks = {}

    def create_publisher(self, _type, name, _qos):
        sent = self.sent.setdefault(name, [])
        return type("Publisher", (), {"publish": lambda _self, message: sent.append(
            message.data)})()

    def create_subscription(self, _type, name, callback, _qos, raw=False):
        self.callbacks[name] = callback

    def hear(self, topic, text):
        self.callbacks[topic.name](String(data=text))


def operator_on(node, said):
    operator = ScriptedOperator(node, said.append)
    operator.RETRY_S = 0.01
    return operator


def supervisor_answers(node, answer):
    """A supervisor thread that calls answer(commands so far) on every command sent."""
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
    return stop


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
    stop = supervisor_answers(node, supervisor)
    try:
        operator.enable(timeout_s=5.0)
    finally:
        stop.set()
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
