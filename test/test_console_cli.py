"""`telesurg console` and `telesurg demo --console` refuse what they cannot use, saying what and
where: a short or missing token file, a taken port, --console with --replay."""

import socket
import subprocess
import sys

import pytest

from telesurg.cli import main
from telesurg.contract.graph import WEB_CONSOLE
from telesurg.contract.resources import default_config
from telesurg.nodes.web_console import parse_options
from telesurg.session.processes import node_arguments


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
