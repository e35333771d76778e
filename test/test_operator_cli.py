"""Operator commands: `telesurg state` and `telesurg status`.

The pure parts (domain ids, matching the supervisor's answer, reading the link report,
formatting the status line) without ROS; then the commands as subprocesses against a real
safety_supervisor process on the test's DDS domain, with this test process playing the patient
bridge's /bridge/link_state and the arm's /psm/measured_js where the arm must be enabled."""

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from telesurg.cli import main
from telesurg.contract.resources import default_config
from telesurg.patient.safety import Command
from telesurg.session import operator_cli as operator
from telesurg.session.demo import session_environment
from telesurg.session.operator_cli import (
    LINK_STATE_TOPIC,
    OPERATING_STATE_TOPIC,
    STATUS_TOPIC,
    Picture,
    Throttle,
    command_answer,
    commands_counted,
    format_answer,
    format_links,
    format_picture,
    link_report,
    parse_domain,
    parse_status,
    resolve_domain,
)

CLI_TIMEOUT_S = 20.0  # the command's own wait for the site: discovery takes 0.5-3.5 s here
DISCOVERY_TIMEOUT_S = 20.0


# -- pure parts ----------------------------------------------------------------------------


def test_state_commands_are_the_supervisors():
    assert operator.STATE_COMMANDS == tuple(str(command) for command in Command)


@pytest.mark.parametrize("text, value", [("0", 0), ("42", 42), ("232", 232), (" 7 ", 7)])
def test_parse_domain_accepts_fast_dds_domain_ids(text, value):
    assert parse_domain(text) == value


@pytest.mark.parametrize("text, says", [("233", "[0, 232]"), ("-1", "[0, 232]"),
                                        ("five", "not a DDS domain id")])
def test_parse_domain_refuses_others_saying_why(text, says):
    with pytest.raises(ValueError) as error:
        parse_domain(text)
    assert says in str(error.value)


def test_resolve_domain_prefers_the_option_then_the_environment_then_zero():
    assert resolve_domain(5, {"ROS_DOMAIN_ID": "9"}) == 5
    assert resolve_domain(None, {"ROS_DOMAIN_ID": "9"}) == 9
    assert resolve_domain(None, {}) == 0
    assert resolve_domain(None, {"ROS_DOMAIN_ID": ""}) == 0
    with pytest.raises(ValueError, match="ROS_DOMAIN_ID.*--domain"):
        resolve_domain(None, {"ROS_DOMAIN_ID": "300"})


def status_json(state="DISABLED", cause="", persisting=(), warnings=(), last=None) -> str:
    return json.dumps({"state": state, "cause": cause, "persisting": list(persisting),
                       "faults": [], "warnings": list(warnings), "last_command": last})


def test_parse_status_takes_json_objects_only():
    assert parse_status(status_json())["state"] == "DISABLED"
    assert parse_status("not json") is None
    assert parse_status("[1, 2]") is None


def test_the_answer_is_the_first_status_counting_a_later_command_of_the_same_name():
    before = parse_status(status_json(last={"command": "enable", "accepted": False,
                                            "reason": "x", "number": 3}))
    assert commands_counted(before) == 3
    assert commands_counted(parse_status(status_json())) == 0  # no command yet
    assert command_answer(before, "enable", 3) is None  # the answer to an earlier command
    later = {"command": "enable", "accepted": True, "reason": "DISABLED -> ENABLED",
             "number": 4}
    assert command_answer({"last_command": later}, "enable", 3) == later
    assert command_answer({"last_command": later}, "pause", 3) is None  # someone else's
    assert command_answer({"last_command": None}, "enable", 0) is None
    assert command_answer({}, "enable", 0) is None


def test_answers_are_printed_with_the_reason_and_the_resulting_state():
    assert format_answer("resume", {"accepted": True, "reason": "PAUSED -> ENABLED"},
                         "ENABLED") == "resume: accepted (PAUSED -> ENABLED); state ENABLED"
    assert format_answer("resume", {"accepted": False,
                                    "reason": "resume refused: link lost (overall LOST)"},
                         "PAUSED") == ("resume: refused: resume refused: link lost (overall "
                                       "LOST); state PAUSED")


def link_statuses(overall="REDUNDANT", a="UP", b="UP", b_rtt="0.912") -> list:
    def link(name, state, rtt, age):
        return DiagnosticStatus(hardware_id=name, message=state, values=[
            KeyValue(key="last_heard_age_ms", value=age), KeyValue(key="rtt_ms", value=rtt),
            KeyValue(key="loss_percent", value="0.000")])

    return [link("a", a, "0.812", "3.000"), link("b", b, b_rtt, "412.400"),
            DiagnosticStatus(hardware_id="overall", message=overall,
                             values=[KeyValue(key="sent", value="12")])]


def test_link_report_reads_each_link_and_the_overall_state():
    report = link_report(link_statuses(b_rtt=""))
    assert report["overall"] == "REDUNDANT"
    assert report["links"]["a"] == {"state": "UP", "last_heard_age_ms": 3.0, "rtt_ms": 0.812,
                                    "loss_percent": 0.0}
    assert report["links"]["b"]["rtt_ms"] is None  # no round trip measured yet


def test_links_are_formatted_compactly_with_the_age_of_a_link_not_up():
    assert format_links(link_report(link_statuses())) == (
        "REDUNDANT: a UP rtt 0.8 ms loss 0.0%, b UP rtt 0.9 ms loss 0.0%")
    assert format_links(link_report(link_statuses("SINGLE", b="DOWN", b_rtt="nan"))) == (
        "SINGLE: a UP rtt 0.8 ms loss 0.0%, b DOWN heard 412 ms ago rtt ? ms loss 0.0%")
    assert format_links({"overall": None, "links": {}}) == "overall unknown"


def test_a_picture_says_what_is_not_known_yet():
    picture = Picture()
    assert not picture.anything() and not picture.complete()
    assert format_picture(picture, 0.0) == ("state: no report yet | following: no report yet "
                                            "| link state: no report yet")
    picture.on_status(1.0, "garbage")  # not a status: ignored
    assert not picture.anything()
    picture.on_status(1.0, status_json("DISABLED", persisting=["link lost (none yet)"]))
    assert format_picture(picture, 1.0).startswith(
        "DISABLED (persisting: link lost (none yet)) | following: no report yet")
    assert picture.missing() == [OPERATING_STATE_TOPIC, "/console/following", LINK_STATE_TOPIC]


def test_a_complete_picture_is_one_line_with_state_cause_following_and_links():
    picture = Picture()
    picture.on_state(10.0, "PAUSED", True)
    picture.on_status(10.0, status_json("PAUSED", "link lost", ["link lost (overall LOST)"],
                                        ["link SINGLE: no redundancy left"]))
    picture.on_following(10.0, False)
    picture.on_link_state(10.0, link_statuses("LOST", a="DOWN", b="DOWN"))
    assert picture.complete()
    assert format_picture(picture, 10.2) == (
        "PAUSED (cause: link lost; persisting: link lost (overall LOST); warnings: link "
        "SINGLE: no redundancy left) | following no | links LOST: a DOWN heard 3.0 ms ago "
        "rtt 0.8 ms loss 0.0%, b DOWN heard 412 ms ago rtt 0.9 ms loss 0.0%")
    picture.on_state(10.3, "ENABLED", True)  # the 20 Hz state is fresher than the 2 Hz status
    picture.on_following(10.3, True)
    assert format_picture(picture, 10.4).startswith("ENABLED (cause: link lost")
    assert "| following yes |" in format_picture(picture, 10.4)
    picture.on_state(10.5, "DISABLED", False)  # after unhome
    assert format_picture(picture, 10.6).startswith("DISABLED (not homed; cause: link lost")


def test_reports_that_stopped_coming_are_shown_stale():
    picture = Picture()
    picture.on_state(0.0, "ENABLED", True)
    picture.on_status(0.0, status_json("ENABLED"))
    picture.on_link_state(0.0, link_statuses())
    assert "stale" not in format_picture(picture, 0.9)
    line = format_picture(picture, 5.0)
    assert f"[stale: no {OPERATING_STATE_TOPIC} for 5 s]" in line
    assert f"[stale: no {STATUS_TOPIC} for 5 s]" in line
    assert f"[stale: no {LINK_STATE_TOPIC} for 5 s]" in line


def test_throttle_passes_changes_at_most_once_per_interval():
    throttle = Throttle(0.5)
    assert throttle.ready("a", 0.0)
    assert not throttle.ready("a", 1.0)  # unchanged
    assert not throttle.ready("b", 0.2)  # too soon
    assert throttle.ready("b", 0.6)
    assert not throttle.ready("c", 0.7)
    assert throttle.ready("c", 1.1)  # the pending change goes out once the interval is over


def argparse_exit(argv) -> int:
    """The status argparse exits with (help, a usage error): it must exit, not return."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code


def test_cli_lists_the_commands_and_refuses_bad_commands_and_domains(capsys):
    assert argparse_exit(["--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ {4}state ", out, re.MULTILINE)
    assert re.search(r"^ {4}status ", out, re.MULTILINE)
    assert argparse_exit(["state", "engage"]) == 2
    assert "invalid choice: 'engage'" in capsys.readouterr().err
    for argv in (["state", "enable", "--domain", "233"], ["status", "--domain", "-3"]):
        assert argparse_exit(argv) == 2
        assert "[0, 232]" in capsys.readouterr().err


def test_state_with_a_bad_ros_domain_id_says_so(monkeypatch, capsys):
    monkeypatch.setenv("ROS_DOMAIN_ID", "999")
    assert main(["state", "enable"]) == 2  # not argparse's: the command's own check
    assert "ROS_DOMAIN_ID" in capsys.readouterr().err


# -- against a real safety_supervisor ------------------------------------------------------


def run_cli(args, domain: int, env_domain: int, timeout_s: float = CLI_TIMEOUT_S):
    """`python -m telesurg.cli ARGS --domain DOMAIN` in an environment set for env_domain (a
    domain with nothing in it), so only --domain can bring it to the supervisor."""
    return subprocess.run([sys.executable, "-m", "telesurg.cli", *args, "--domain", str(domain)],
                          env=session_environment(env_domain), capture_output=True, text=True,
                          timeout=timeout_s + 30)


def start_cli(args, domain: int, env_domain: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "telesurg.cli", *args, "--domain",
                             str(domain)], env=session_environment(env_domain),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def supervisor(tmp_path, env, ros_args=()):
    from telesurg.contract.graph import NodeSpec
    from telesurg.session.processes import CLEAN_STOP_CODES, NodeGroup

    group = NodeGroup(env, tmp_path / "logs")
    node = group.start(NodeSpec("safety_supervisor", "safety_supervisor",
                                "telesurg.nodes.safety_supervisor", "patient", "supervisor"),
                       ["--params-file", str(default_config()), *ros_args])
    try:
        yield node
    finally:
        codes = group.stop()
        assert set(codes.values()) <= CLEAN_STOP_CODES, node.log_tail()


@pytest.mark.multiprocess
def test_enable_and_pause_are_refused_with_the_reason_while_nothing_is_heard(
        tmp_path, ros_env, second_domain_id):
    domain = int(ros_env["ROS_DOMAIN_ID"])
    with supervisor(tmp_path, ros_env) as node:
        # Both status forms run meanwhile: --once (incomplete: no console, no bridge here) and
        # the live one, stopped with Ctrl-C below.
        once = start_cli(["status", "--once", "--timeout", "6"], domain, second_domain_id)
        live = start_cli(["status"], domain, second_domain_id)
        try:
            enable = run_cli(["state", "enable", "--timeout", str(CLI_TIMEOUT_S)], domain,
                             second_domain_id)
            assert enable.returncode == 1, (enable.stdout, enable.stderr, node.log_tail())
            assert enable.stdout.startswith("enable: refused: enable refused: link lost")
            assert "arm joint states stopped" in enable.stdout
            assert enable.stdout.rstrip().endswith("state DISABLED")
            pause = run_cli(["state", "pause"], domain, second_domain_id)
            assert pause.returncode == 1, (pause.stdout, pause.stderr)
            assert pause.stdout == ("pause: refused: pause refused in DISABLED: only ENABLED "
                                    "pauses; state DISABLED\n")

            out, err = once.communicate(timeout=40)
            assert once.returncode == 1, (out, err)  # printed, but not everything is known
            assert out.startswith("DISABLED (persisting: link lost")
            assert "following: no report yet" in out and "link state: no report yet" in out
            assert "still no report yet on /console/following, /bridge/link_state" in err

            lines = []
            reader = threading.Thread(target=lambda: lines.extend(live.stdout), daemon=True)
            reader.start()
            deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
            while not any(line.startswith("DISABLED") for line in lines):
                assert time.monotonic() < deadline and live.poll() is None, lines
                time.sleep(0.05)
            live.send_signal(signal.SIGINT)
            assert live.wait(timeout=20) == 0
            reader.join(timeout=5)
            assert "Traceback" not in live.stderr.read()
        finally:
            for process in (once, live):
                if process.poll() is None:
                    process.kill()
                    process.wait()


@pytest.mark.multiprocess
def test_state_without_a_site_says_no_subscriber(ros_env):
    started = time.monotonic()
    result = run_cli(["state", "enable", "--timeout", "3"], int(ros_env["ROS_DOMAIN_ID"]),
                     int(ros_env["ROS_DOMAIN_ID"]))
    assert result.returncode == 2
    assert result.stdout == ""
    assert (f"no subscriber for /psm/state_command in domain {ros_env['ROS_DOMAIN_ID']} "
            "within 3 s") in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


class FakePatientSite:
    """This process as the patient bridge (/bridge/link_state) and the arm (/psm/measured_js),
    both at 20 Hz from a thread, and the console (/console/following, not following)."""

    def __init__(self, domain: int):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, String

        from telesurg.arm.kinematics import HOME_POSITIONS, JOINT_NAMES
        from telesurg.contract.topics import Qos
        from telesurg.ros.qos import qos_profile

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("fake_patient_site", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.overall = "REDUNDANT"
        self.status = None
        self.node.create_subscription(
            String, STATUS_TOPIC, lambda m: setattr(self, "status", json.loads(m.data)),
            qos_profile(Qos.STATE))
        self._link_pub = self.node.create_publisher(DiagnosticArray, LINK_STATE_TOPIC,
                                                    qos_profile(Qos.STATE))
        self._joints_pub = self.node.create_publisher(JointState, "/psm/measured_js",
                                                      qos_profile(Qos.COMMAND))
        self.node.create_publisher(Bool, "/console/following", qos_profile(Qos.STATE)).publish(
            Bool(data=False))
        self._array = DiagnosticArray
        self._joints = JointState(name=list(JOINT_NAMES), position=HOME_POSITIONS.tolist())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self):
        while not self._stop.wait(0.05):
            self._link_pub.publish(self._array(status=link_statuses(self.overall)))
            self._joints.header.stamp = self.node.get_clock().now().to_msg()
            self._joints_pub.publish(self._joints)

    def spin_until(self, condition, what: str, timeout_s: float = DISCOVERY_TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.status}"
            self.executor.spin_once(timeout_sec=0.05)

    def close(self):
        import rclpy

        self._stop.set()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.mark.multiprocess
def test_enable_pause_resume_are_accepted_when_link_and_arm_are_heard(
        tmp_path, ros_env, second_domain_id):
    domain = int(ros_env["ROS_DOMAIN_ID"])
    # Generous timeouts: this test is about the commands, not the supervisor's deadlines, and
    # a process on this 2-core machine is sometimes kept from a core for 300 ms. A parameter
    # file after the configuration (a -p override loses to the configuration's node section).
    generous = tmp_path / "generous.yaml"
    generous.write_text(yaml.safe_dump({"safety_supervisor": {"ros__parameters": {
        "link_state_timeout_ms": 3000.0, "arm_timeout_ms": 3000.0}}}))
    with supervisor(tmp_path, ros_env, ["--params-file", str(generous)]) as node:
        site = FakePatientSite(domain)
        try:
            site.spin_until(lambda: site.status is not None and not site.status["persisting"],
                            "the supervisor to hear the link and the arm")

            status = run_cli(["status", "--once", "--timeout", str(CLI_TIMEOUT_S)], domain,
                             second_domain_id)
            assert status.returncode == 0, (status.stdout, status.stderr)
            assert status.stdout == ("DISABLED | following no | links REDUNDANT: a UP rtt 0.8 "
                                     "ms loss 0.0%, b UP rtt 0.9 ms loss 0.0%\n")

            for command, says in (("enable", "enable: accepted (DISABLED -> ENABLED); "
                                             "state ENABLED"),
                                  ("pause", "pause: accepted (ENABLED -> PAUSED); "
                                            "state PAUSED"),
                                  ("resume", "resume: accepted (PAUSED -> ENABLED); "
                                             "state ENABLED")):
                result = run_cli(["state", command], domain, second_domain_id)
                assert (result.returncode, result.stdout) == (0, says + "\n"), (
                    result.stderr, node.log_tail())

            site.overall = "LOST"  # both links down, as the patient bridge reports it
            site.spin_until(lambda: site.status["state"] == "PAUSED", "the link-lost pause")
            result = run_cli(["state", "resume"], domain, second_domain_id)
            assert result.returncode == 1, (result.stdout, result.stderr)
            assert result.stdout == ("resume: refused: resume refused: link lost (overall "
                                     "LOST); state PAUSED\n")
        finally:
            site.close()
