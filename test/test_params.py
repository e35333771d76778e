"""Parameter table and parameter files: the session config is valid, bad files are refused
with the key and the file named, by the checker and by a real node process."""

import subprocess
import sys
import textwrap

import pytest
import yaml

from telesurg.contract.params import NODE_PARAMETERS, ConfigError, defaults, load_parameter_file
from telesurg.contract.resources import default_config


def write(tmp_path, text, name="params.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_session_config_sets_every_declared_parameter_to_a_valid_value():
    loaded = load_parameter_file(default_config())
    assert set(loaded) == set(NODE_PARAMETERS)
    for node, params in NODE_PARAMETERS.items():
        assert set(loaded[node]) == {p.name for p in params}, node


def test_every_parameter_has_a_description_and_a_valid_default():
    for node, params in NODE_PARAMETERS.items():
        for param in params:
            assert len(param.description) > 10, (node, param.name)
            assert param.check(param.default, "table") == param.default


@pytest.mark.parametrize("body, expected", [
    ("master_console:\n  ros__parameters:\n    scael: 0.2\n", "unknown parameter 'scael'"),
    ("master_console:\n  ros__parameters:\n    scale: fast\n", "'scale' must be float"),
    ("master_console:\n  ros__parameters:\n    scale: 1\n", "decimal point"),
    ("master_console:\n  ros__parameters:\n    scale: 7.0\n", "'scale' = 7.0 is out of range"),
    ("master_console:\n  ros__parameters:\n    tremor_filter: 1\n", "must be bool"),
    ("virtual_surgeon:\n  ros__parameters:\n    task: knitting\n", "must be one of"),
    ("master_consol:\n  ros__parameters: {}\n", "unknown node 'master_consol'"),
    ("master_console:\n  scale: 0.2\n", "exactly one key, ros__parameters"),
    ("/**:\n  ros__parameters:\n    rate_hz: 5.0\n", "'rate_hz' = 5.0 is out of range"),
    ("/**:\n  ros__parameters:\n    colour: red\n", "unknown parameter 'colour'"),
    ("master_console: [1, 2\n", "not valid YAML"),
])
def test_bad_parameter_files_are_refused_naming_key_and_file(tmp_path, body, expected):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as error:
        load_parameter_file(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_namespaced_and_wildcard_sections_are_understood(tmp_path):
    path = write(tmp_path, """\
        /**:
          ros__parameters:
            use_sim_time: false
            rate_hz: 500.0
        /site/master_console:
          ros__parameters:
            scale: 0.4
        """)
    loaded = load_parameter_file(path)
    assert loaded["master_console"] == {"rate_hz": 500.0, "scale": 0.4}
    assert loaded["arm_controller"] == {"rate_hz": 500.0}
    assert "rate_hz" not in loaded["simulator"]  # the simulator has no rate_hz


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_parameter_file(tmp_path / "absent.yaml")


def test_defaults_match_table():
    assert defaults("master_console")["scale"] == 0.2


@pytest.mark.multiprocess
@pytest.mark.parametrize("node, key, value, expected", [
    ("arm_controller", "command_timeout_ms", 5000.0, "out of range"),
    ("master_console", "scael", 0.2, "unknown parameter 'scael'"),
    ("simulator", "physics_rate_hz", "fast", "must be float"),
])
def test_node_process_exits_naming_bad_key_and_file(tmp_path, node, key, value, expected):
    config = yaml.safe_load(default_config().read_text())
    config[node]["ros__parameters"][key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", f"telesurg.nodes.{node}", "--ros-args",
         "--params-file", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert expected in result.stderr and key in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_generated_default_file_round_trips_to_the_defaults(tmp_path):
    from telesurg.contract.params import default_parameter_file

    path = write(tmp_path, default_parameter_file())
    loaded = load_parameter_file(path)
    assert loaded == {node: defaults(node) for node in NODE_PARAMETERS}
