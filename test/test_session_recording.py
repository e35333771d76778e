"""Multi-process: a demo session is recorded as one rosbag2 bag per site that an independent
MCAP reader accepts, reported, and replayed: a new session driven by the recorded surgeon
moves the arm along the recorded path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from telesurg.contract.topics import SITE_TOPICS

# Whole sessions on a shared 2-core machine (see test_session.py).
# Tier (setup.cfg markers): whole two-site `telesurg demo` sessions.
pytestmark = pytest.mark.multiprocess


def run_demo(env, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "telesurg.cli", "demo", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, ros_env_module):
    out = tmp_path_factory.mktemp("run")
    result = run_demo(ros_env_module, "--duration", "15", "--seed", "4", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def mcap_messages(bag_dir: Path) -> dict[str, list]:
    """Every message of a bag's MCAP file by topic, decoded by the mcap packages."""
    (path,) = bag_dir.glob("*.mcap")
    found: dict[str, list] = {}
    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for schema, channel, _, message in reader.iter_decoded_messages():
            found.setdefault(channel.topic, []).append((schema.name, message))
    return found


def test_a_session_leaves_bags_an_independent_reader_accepts_and_a_report(recorded_run):
    summary = json.loads((recorded_run / "summary.json").read_text())
    master = mcap_messages(recorded_run / "master_bag")
    patient = mcap_messages(recorded_run / "patient_bag")
    for site, found in (("master", master), ("patient", patient)):
        metadata = (recorded_run / f"{site}_bag" / "metadata.yaml").read_text()
        for topic, messages in found.items():
            assert topic in SITE_TOPICS[site]
            assert {name for name, _ in messages} == {SITE_TOPICS[site][topic]}
            assert f"name: {topic}" in metadata
    # The streams of the session are there, as many as the session's own figures say.
    assert len(patient["/forward_position_controller/commands"]) >= summary["controller_ticks"]
    assert len(master["/psm/servo_cp"]) >= 0.9 * summary["command_rate_hz"] * 10
    states = {message.state for _, message in master["/psm/operating_state"]}
    assert "ENABLED" in states
    following = [message.data for _, message in master["/console/following"]]
    assert following.count(True) >= summary["engagements"]
    tip = patient["/psm/measured_cp"][-1][1].pose.position
    assert -0.3 < tip.z < 0.0  # the tool tip below the remote center, in metres
    report = (recorded_run / "report.html").read_text()
    figures = sorted((recorded_run / "figures").glob("*.png"))
    assert len(figures) >= 5
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{figure.name}" in report


def test_a_replay_of_the_recorded_surgeon_moves_the_arm_along_the_recorded_path(
        recorded_run, ros_env_module, tmp_path):
    result = run_demo(ros_env_module, "--replay", str(recorded_run), "--out", str(tmp_path),
                      "--no-report")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    deviation = summary["replay_deviation_mm"]
    # On failure, the replay's figures and what it said (pauses, re-presses of the pedal with
    # their reason), whole: the summary's repr would be cut short.
    said = "\n".join([*(f"{key}: {value}" for key, value in summary.items()
                         if key.startswith(("replay", "pause", "engagements", "transitions"))),
                       *(line for line in result.stdout.splitlines()
                         if "replay" in line or "safety" in line or "operator" in line)])
    # The design figure is p99 <= 0.5 mm (0.31-0.35 mm seen here, with and without a stall
    # of either session); the test's bound is wider, for a machine busier still. A replay
    # that engaged at another moment, or played another timing, is off by 5-20 mm.
    assert deviation["p50"] <= 0.5, said
    assert deviation["p99"] <= 1.0, said
    # Compared wherever both consoles followed: a stall's pause in one session takes out
    # about a second around it, a replay that stopped following for good most of the run.
    assert summary["replay_compared_s"] >= 0.6 * summary["replay_following_s"], summary
    assert summary["replay_following_s"] >= 10.0, summary
