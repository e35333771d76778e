"""`telesurg console` and `telesurg demo --console` refuse what they cannot use, saying what and
where: a short or missing token file, a taken port, --console with --replay."""

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from telesurg.bench.console import free_tcp_port
from telesurg.cli import main
from telesurg.contract.graph import WEB_CONSOLE
from telesurg.contract.resources import default_config
from telesurg.nodes.web_console import parse_options
from telesurg.session.processes import CLEAN_STOP_CODES, node_arguments


def test_a_token_file_must_exist_and_hold_a_long_enough_token(tmp_path, capsys):
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    for path, complaint in ((short, "at least 16 characters"),
                            (tmp_path / "missing.token", "No such file")):
        with pytest.raises(SystemExit) as exit_:
            parse_options(["--token-file", str(path)])
        assert exit_.value.code == 2
        error = capsys.readouterr().err
        assert str(path) in error and complaint in error
    good = tmp_path / "good.token"
    good.write_text("k" * 20 + "\n")
    assert parse_options(["--token-file", str(good), "--ros-args", "-p", "x:=1"]).token == "k" * 20


def test_without_a_token_file_each_start_makes_a_new_random_token():
    first, second = parse_options([]).token, parse_options([]).token
    assert first != second and len(first) >= 16


def test_console_refuses_a_port_out_of_range(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["console", "--port", "70000"])
    assert exit_.value.code == 2
    assert "70000 is not in [0, 65535]" in capsys.readouterr().err


def test_demo_refuses_console_with_replay(tmp_path, capsys):
    assert main(["demo", "--console", "--replay", str(tmp_path), "--out",
                 str(tmp_path / "run")]) == 2
    assert "--console and --replay" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_a_taken_port_is_refused_naming_the_address(ros_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", WEB_CONSOLE.module, "--port", str(port),
             *node_arguments(WEB_CONSOLE, ["--params-file", str(default_config())])],
            env=ros_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr


def _page_states(url: str, wanted, timeout_s: float) -> dict:
    """The first state message of the page's websocket at url for which wanted(message)."""
    import asyncio

    import aiohttp

    async def read() -> dict:
        base, _, query = url.partition("/?")
        async with aiohttp.ClientSession() as client, client.ws_connect(
                f"{base.replace('http', 'ws', 1)}/ws?{query}") as socket:
            async for message in socket:
                state = message.json()
                if state.get("type") == "state" and wanted(state):
                    return state
        raise AssertionError("the page's websocket closed")

    return asyncio.run(asyncio.wait_for(read(), timeout_s))


def _url_in(path, process, timeout_s: float = 60.0) -> str:
    """The console page's URL, once the log at path prints it (the server is then up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, path.read_text()
        found = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", path.read_text())
        if found:
            return found.group(0)
        time.sleep(0.1)
    raise AssertionError(f"no URL in {path} within {timeout_s:g} s:\n{path.read_text()}")


@pytest.mark.multiprocess
def test_console_only_watches_while_another_master_device_publishes(ros_env, tmp_path):
    """Started beside another master device, the console never publishes a pedal (a released
    operator-present pedal would stop that surgeon following); once it is gone, it drives."""
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from telesurg.contract.topics import CONSOLE_OPERATOR_PRESENT, MTM_MEASURED_CP
    from telesurg.ros.qos import publisher, subscription

    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("another_master_device", context=context)
    device = publisher(node, MTM_MEASURED_CP)
    pedals = []
    subscription(node, CONSOLE_OPERATOR_PRESENT, lambda message: pedals.append(message.data))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    log = tmp_path / "console.log"
    port = free_tcp_port()
    with open(log, "w") as output:
        console = subprocess.Popen([sys.executable, "-m", "telesurg.cli", "console", "--port",
                                    str(port)], env=ros_env, stdout=output, stderr=output)
    try:
        url = _url_in(log, console)
        state = _page_states(url, lambda s: "publishes" in s["console"]["hands_blocked"], 30.0)
        assert "another_master_device" in state["console"]["hands_blocked"]
        assert pedals == [] and node.count_publishers(CONSOLE_OPERATOR_PRESENT.name) == 0
        node.destroy_publisher(device)
        _page_states(url, lambda s: s["console"]["hands_blocked"] == "", 30.0)
        deadline = time.monotonic() + 10.0
        while not pedals and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pedals[:1] == [False]  # the page's pedal, up until a person presses it
    finally:
        console.send_signal(signal.SIGINT)
        code = console.wait(timeout=30)
        executor.shutdown()
        spinner.join(timeout=5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert code in CLEAN_STOP_CODES, log.read_text()
    assert "another master device publishes /mtm/measured_cp" in log.read_text()


@pytest.mark.multiprocess
def test_demo_console_serves_the_page_and_moves_nothing_without_a_person(ros_env, tmp_path):
    port = free_tcp_port()
    log = tmp_path / "demo.log"
    with open(log, "w") as output:
        demo = subprocess.Popen(
            [sys.executable, "-m", "telesurg.cli", "demo", "--console", "--console-port",
             str(port), "--duration", "6", "--no-report", "--out", str(tmp_path / "run")],
            env=ros_env, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = _url_in(log, demo)
        state = _page_states(url, lambda s: s["arm"]["state"] is not None, 30.0)
        assert state["arm"]["state"] == "DISABLED"  # nobody pressed Enable
        # A session without video: the page is told there is none (and says so).
        _page_states(url, lambda s: s["video_sources"] == 0, 10.0)
        assert demo.wait(timeout=120) == 0, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "console"
    assert summary["engagements"] == 0 and summary["following_s"] == 0
    # No page drew a picture or saw a key press: nothing measured, and said so.
    assert summary["console"] == {"capture_to_display_ms": None, "key_to_motion_ms": None}
    assert "capture to display not measured" in log.read_text()
