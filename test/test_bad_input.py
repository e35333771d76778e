"""Bad input to the command line and the nodes: each is refused with exit status 2 and one line
naming the problem, with no traceback, no process left behind and nothing written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess  # starts `telesurg` and node processes

TELESURG = [sys.executable, "-m", "telesurg.cli"]


def bridge(*parameters: str) -> list[str]:
    return [sys.executable, "-m", "telesurg.nodes.bridge", "--ros-args",
            *(arg for parameter in parameters for arg in ("-p", parameter))]


def not_utf8(tmp: Path) -> Path:
    path = tmp / "latin1.yaml"
    path.write_bytes("safety_supervisor:\n  ros__parameters:\n    # caf\xe9\n".encode("latin-1"))
    return path


def fifo(tmp: Path) -> Path:
    path = tmp / "key.fifo"
    os.mkfifo(path)
    return path


def warn_above_max(tmp: Path) -> Path:
    path = tmp / "warn.yaml"
    path.write_text("safety_supervisor:\n  ros__parameters:\n    warn_command_age_ms: 300.0\n")
    return path


def regular_file(tmp: Path) -> Path:
    path = tmp / "a_file"
    path.write_text("not a directory")
    return path


def bridge_config_not_utf8(tmp: Path) -> Path:
    path = tmp / "bridge.yaml"
    path.write_bytes(b"key_file: k\xff\n")
    return path


#: (case, command given tmp, environment changes given tmp, what the line must say)
CASES = [
    ("negative seed", lambda tmp: [*TELESURG, "demo", "--seed", "-1", "--out", str(tmp / "run")],
     {}, "--seed: -1 is out of range: must be in [0, 2147483647]"),
    ("huge seed", lambda tmp: [*TELESURG, "demo", "--seed", "99999999999",
                               "--out", str(tmp / "run")],
     {}, "--seed: 99999999999 is out of range"),
    ("duration not a number", lambda tmp: [*TELESURG, "demo", "--duration", "ten",
                                           "--out", str(tmp / "run")],
     {}, "--duration: 'ten' is not a number"),
    ("outage of no link", lambda tmp: [*TELESURG, "demo", "--outage", "c@1+1",
                                       "--out", str(tmp / "run")],
     {}, "unknown link 'c': one of a, b or all"),
    ("outage before the start", lambda tmp: [*TELESURG, "demo", "--outage", "a@-1+2",
                                             "--out", str(tmp / "run")],
     {}, "START -1 s is negative"),
    ("outage after the end", lambda tmp: [*TELESURG, "demo", "--outage", "all@100+5",
                                          "--duration", "3", "--out", str(tmp / "run")],
     {}, "starts after the 3 s task has ended"),
    ("out below a file", lambda tmp: [*TELESURG, "demo", "--out",
                                      str(regular_file(tmp) / "run")],
     {}, "cannot write a run there: Not a directory"),
    ("out on a file", lambda tmp: [*TELESURG, "demo", "--out", str(regular_file(tmp))],
     {}, "exists and is not a directory"),
    ("out not writable", lambda tmp: [*TELESURG, "demo", "--out", "/proc/sys"],
     {}, "--out /proc/sys: cannot write a run there"),
    ("domain id not a number", lambda tmp: [*TELESURG, "demo", "--out", str(tmp / "run")],
     {"ROS_DOMAIN_ID": "abc"}, "ROS_DOMAIN_ID: 'abc' is not a DDS domain id"),
    ("config not UTF-8", lambda tmp: [*TELESURG, "demo", "--config", str(not_utf8(tmp)),
                                      "--out", str(tmp / "run")],
     {}, "latin1.yaml: parameter file is not UTF-8 text"),
    ("warning above the limit", lambda tmp: [*TELESURG, "demo", "--config",
                                             str(warn_above_max(tmp)),
                                             "--out", str(tmp / "run")],
     {}, "'warn_command_age_ms' = 300.0 must be below 'max_command_age_ms' = 200.0"),
    ("warning above the limit, -p", lambda tmp: [
        sys.executable, "-m", "telesurg.nodes.safety_supervisor", "--ros-args",
        "-p", "warn_command_age_ms:=300.0"],
     {}, "'warn_command_age_ms' = 300.0 must be below 'max_command_age_ms' = 200.0"),
    ("bridge configuration not UTF-8", lambda tmp: bridge(
        f"config_file:={bridge_config_not_utf8(tmp)}"),
     {}, "bridge.yaml: bridge configuration is not UTF-8 text"),
    ("key file a FIFO", lambda tmp: bridge(f"key_file:={fifo(tmp)}"),
     {}, "key.fifo is not a regular file"),
]


def processes_of_session(session_id: int) -> list[int]:
    """Processes still running in a session (those a command started and left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session_id:
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return found


@pytest.mark.parametrize("command, environment, expected",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, ros_env, command,
                                                         environment, expected):
    tmp = tmp_path / "given"
    tmp.mkdir()
    argv = command(tmp)
    before = sorted(path.name for path in tmp.iterdir())
    process = subprocess.Popen(argv, env={**ros_env, **environment}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert lines[-1:] and expected in lines[-1], err
    # Argparse prints its usage first; everything else says it in exactly one line.
    assert len([line for line in lines if not line.startswith(("usage:", " "))]) == 1, err
    deadline = time.monotonic() + 5.0
    while processes_of_session(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of_session(process.pid) == []
    assert sorted(path.name for path in tmp.iterdir()) == before  # nothing written
