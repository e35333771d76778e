"""Parameter table and parameter files: the session config is valid, bad files are refused
with the key and the file named, by the checker and by a real node process."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest
import yaml

from telesurg.contract.params import (
    MAX_TIP_SPEED,
    NODE_PARAMETERS,
    SHARED_PARAMETERS,
    ConfigError,
    default_parameter_file,
    defaults,
    load_parameter_file,
)
from telesurg.contract.resources import default_config
from telesurg.master.teleop import TeleopConfig
from telesurg.patient.arm_control import ArmControllerConfig
from telesurg.patient.safety import SafetyConfig


def write(tmp_path, text, name="params.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_session_config_sets_every_declared_parameter_to_a_valid_value():
    loaded = load_parameter_file(default_config())
    assert set(loaded) == set(NODE_PARAMETERS)
    for node, params in NODE_PARAMETERS.items():
        assert set(loaded[node]) == {p.name for p in params}, node


def test_session_config_is_the_generated_file():
    """config/telesurg.yaml is what `python -m telesurg.contract.params` prints: regenerate it
    after changing the table."""
    assert default_config().read_text() == default_parameter_file()


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
    ("arm_controller", MAX_TIP_SPEED.name, 0.05, "must be the same"),
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
    path = write(tmp_path, default_parameter_file())
    loaded = load_parameter_file(path)
    assert loaded == {node: defaults(node) for node in NODE_PARAMETERS}


# -- parameters of several nodes -------------------------------------------------------------


def test_the_supervisor_and_the_arm_controller_share_one_tip_speed_limit():
    assert SHARED_PARAMETERS[MAX_TIP_SPEED] == ("safety_supervisor", "arm_controller")
    text = default_parameter_file()
    assert text.count(f"{MAX_TIP_SPEED.name}:") == 1  # given once, under /**
    assert text.index(f"{MAX_TIP_SPEED.name}:") < text.index("virtual_surgeon:")


def test_no_other_parameter_has_the_name_of_a_shared_one():
    """A /** section sets the parameter of that name of every node."""
    for shared in SHARED_PARAMETERS:
        namesakes = [node for node, params in NODE_PARAMETERS.items() for param in params
                     if param.name == shared.name and param != shared]
        assert namesakes == [], shared.name


def tip_speed_sections(*sections):
    """A parameter file setting the tip speed limit in each (section, value)."""
    return "".join(f"{section}:\n  ros__parameters:\n    {MAX_TIP_SPEED.name}: {value}\n"
                   for section, value in sections)


@pytest.mark.parametrize("sections, got", [
    ((("arm_controller", 0.05),), "safety_supervisor 0.1 (default), arm_controller 0.05"),
    ((("arm_controller", 0.05), ("safety_supervisor", 0.2)),
     "safety_supervisor 0.2, arm_controller 0.05"),
    ((("/**", 0.05), ("/site/safety_supervisor", 0.2)),
     "safety_supervisor 0.2, arm_controller 0.05"),
])
def test_a_shared_parameter_left_different_for_two_nodes_is_refused(tmp_path, sections, got):
    path = write(tmp_path, tip_speed_sections(*sections))
    with pytest.raises(ConfigError) as error:
        load_parameter_file(path)
    assert str(error.value) == (
        f"{path}: '{MAX_TIP_SPEED.name}' is one parameter of safety_supervisor and "
        f"arm_controller and must be the same for all of them (set it once under /**), got {got}")


@pytest.mark.parametrize("sections", [
    (("/**", 0.05),),
    (("arm_controller", 0.05), ("safety_supervisor", 0.05)),
    (("safety_supervisor", 0.2), ("/**", 0.05)),  # later sections win, as in rclpy
])
def test_a_shared_parameter_alike_for_its_nodes_is_accepted(tmp_path, sections):
    loaded = load_parameter_file(write(tmp_path, tip_speed_sections(*sections)))
    assert {node: loaded[node][MAX_TIP_SPEED.name] for node in SHARED_PARAMETERS[MAX_TIP_SPEED]} \
        == {"safety_supervisor": 0.05, "arm_controller": 0.05}


# -- the core configs are built from the table -----------------------------------------------

# Each core config and the node whose parameters it is made of.
CONFIGS = [(SafetyConfig, "safety_supervisor"), (TeleopConfig, "master_console"),
           (ArmControllerConfig, "arm_controller")]


def parameter_of(field, values):
    """The value of the node parameter a config field is: the one of the same name, or (in
    seconds) the *_ms one of a *_s field."""
    if field in values:
        return values[field]
    return values[field.removesuffix("_s") + "_ms"] / 1000.0


def moved(param):
    """A valid value of param other than its default."""
    if param.kind is bool:
        return not param.default
    if param.choices:
        return next(choice for choice in param.choices if choice != param.default)
    if param.kind is str:
        return param.default + "/other"
    return (param.low + param.default) / 2


@pytest.mark.parametrize("config_class, node", CONFIGS)
def test_core_configs_are_made_of_their_node_parameters(config_class, node):
    """defaults() is what the node runs with, and from_parameters() takes each field from its
    parameter (any one moved shows up); only fields that are no node parameter have a default
    in code, so that there is no second set of defaults."""
    table = {param.name: param for param in NODE_PARAMETERS[node]}
    cases = [(config_class.defaults(), defaults(node))]
    for name, param in table.items():
        values = {**defaults(node), name: moved(param)}
        cases.append((config_class.from_parameters(values), values))
    for config, values in cases:
        for field in dataclasses.fields(config_class):
            if field.default is dataclasses.MISSING:
                assert getattr(config, field.name) == parameter_of(field.name, values), (
                    field.name, values)
            else:
                assert not {field.name, field.name.removesuffix("_s") + "_ms"} & set(table), (
                    field.name)
