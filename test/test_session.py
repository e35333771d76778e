"""Multi-process: the demo graph as real node processes over DDS. The arm tracks the surgeon,
holds during a clutch, does not jump on re-engage, and nothing is left running."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from telesurg.contract.resources import default_config

# Whole sessions on a shared 2-core machine: a stalled process now and then stretches a tail
# figure past its bound. A case that fails runs once more; one that fails twice is a defect.
# Tier (setup.cfg markers): whole two-site `telesurg demo` sessions.
pytestmark = pytest.mark.multiprocess


def run_demo(env, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", "telesurg.cli", "demo", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def processes_in_domain(domain_id: str) -> list[int]:
    """PIDs of processes (other than this one) running with this ROS_DOMAIN_ID."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ROS_DOMAIN_ID={domain_id}".encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("task, duration, seed, layout", [
    ("suturing", "15", "3", ()), ("figure8", "10", "7", ("--process-per-node",))])
def test_session_tracks_holds_on_clutch_and_never_jumps(ros_env, tmp_path, task, duration,
                                                        seed, layout):
    """In the site containers (the default) and with a process per node."""
    result = run_demo(ros_env, "--task", task, "--duration", duration, "--seed", seed,
                      "--out", str(tmp_path), *layout)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == task
    processes = {"master/virtual_surgeon", "master/bridge"} if layout else {
        "master/site_container", "patient/site_container"}
    assert processes <= set(summary["cpu_percent"])
    assert summary["tracking_error_mm"]["p99"] <= 1.0
    assert summary["joint_limit_violations"] == 0
    assert summary["jump_max_mm"] <= 0.5
    # The surgeon clutched at least once and the console re-engaged after it.
    assert summary["clutch_presses"] >= 1 and summary["engagements"] >= 2
    # Motion the console commanded before it stopped, arriving late: 0.0 mm on a quiet machine;
    # commands held up by a stalled process reach the arm after the console stopped (0.2 mm
    # seen once on this 2-core machine).
    assert summary["motion_while_not_following_mm"] <= 0.25
    # Re-engaging starts from where the arm is held (0.0 on a quiet machine; under heavy load
    # up to 0.1 mm has been seen), well inside the 0.5 mm jump bound.
    assert summary["engage_offset_mm"] <= 0.25
    # Commands per second of following from the 250 Hz master device: 248-250 in the site
    # containers, alone; 194 once with a process per node in a full test run on a noisy host.
    # Breakage (a console that falls behind its device) is far below.
    assert summary["command_rate_hz"] > 175
    assert summary["commands_lost"] == 0 and summary["rejected_datagrams"] == 0
    assert domains_are_clean(ros_env)


def domains_are_clean(env) -> bool:
    """No process left in the master site's domain nor in the patient site's (the next one)."""
    domain = int(env["ROS_DOMAIN_ID"])
    return not processes_in_domain(str(domain)) and not processes_in_domain(str(domain + 1))


def test_losing_one_link_over_a_transcontinental_network_loses_no_command(ros_env, tmp_path):
    """The issue's acceptance run, shortened: fiber profile on both links, link a cut for 4 s
    mid-task. Both bridges and the link process run; every command still arrives."""
    result = run_demo(ros_env, "--duration", "12", "--seed", "5", "--profile",
                      "fiber_transcontinental", "--outage", "a@4+4", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 s: link a cut" in result.stdout and "8 s: link a restored" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["commands_sent"] > 1000
    assert summary["commands_lost"] == 0
    assert summary["commands_delivered"] == summary["commands_sent"]
    assert summary["rejected_datagrams"] == 0
    assert summary["links"]["a"]["down_events"] >= 1
    assert summary["tracking_error_mm"]["p99"] <= 1.0
    # 60 ms one way: every command is at least that old at the patient bridge.
    assert 55.0 <= summary["command_age_ms"]["p50"] <= 200.0
    for link in summary["links"].values():
        assert 110.0 <= link["rtt_ms_p50"] <= 300.0
    assert {"master/site_container", "patient/site_container", "patient/arm_controller",
            "emulated_links"} <= set(summary["cpu_percent"])
    assert domains_are_clean(ros_env)


def test_losing_every_link_pauses_the_arm_until_the_operator_resumes(ros_env, tmp_path):
    """The safety issue's acceptance run, shortened: both links cut for 3 s mid-task. The arm
    is held within the link timeout, does not move while paused, and follows again only after
    the operator's resume and a fresh engage, without a jump."""
    result = run_demo(ros_env, "--duration", "16", "--seed", "2", "--outage", "all@6+3",
                      "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    lost_pauses = [t for t in summary["transitions"]
                   if t["to"] == "PAUSED" and "link lost" in t["cause"]]
    assert any(6.0 <= t["t_s"] <= 6.5 for t in lost_pauses), summary["transitions"]
    # Design: held within the link timeout + 20 ms of the last datagram. On this shared
    # machine a stalled process can add more: a generous bound that still catches breakage.
    assert summary["pause_reaction_ms"]["max"] <= 500.0
    assert summary["motion_while_paused_mm"] <= 0.1
    assert summary["resume_jump_mm"] <= 0.5
    assert summary["following_after_resume"]
    assert summary["motion_while_not_following_mm"] <= 0.25  # see the test above
    assert domains_are_clean(ros_env)


def test_demo_refuses_a_bad_config_naming_key_and_file(ros_env, tmp_path):
    config = yaml.safe_load(default_config().read_text())
    config["master_console"]["ros__parameters"]["scale"] = 5.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_demo(ros_env, "--config", str(path), "--out", str(tmp_path / "run"),
                      timeout=60)
    assert result.returncode == 2  # bad input, as every other
    assert "'scale' = 5.0 is out of range" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
