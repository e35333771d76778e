"""The launch files start exactly the package's nodes and named dependencies, with installed
files. `launch` and `launch_ros` are not on PyPI, so most checks read the sources (AST) and the
pure telesurg.bringup.plan; where `launch` and `launch_ros` import (a full ROS 2 install with
telesurg built), each LaunchDescription is also built and visited."""

import ast
import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from telesurg.arm.kinematics import JOINT_NAMES
from telesurg.bridge.config import LINK_OVERRIDES, parse_link_overrides
from telesurg.bringup import plan as support
from telesurg.contract import topics
from telesurg.contract.graph import (
    BRIDGE,
    ENDOSCOPE,
    ENDOSCOPE_DECODER,
    ENDOSCOPE_ENCODER,
    SESSION_NODES,
    VIRTUAL_SURGEON,
    WEB_CONSOLE,
    nodes_of_site,
)
from telesurg.contract.params import NODE_PARAMETERS, ROS_BUILTIN_PARAMETERS
from telesurg.contract.topics import SITE_TOPICS, SITES

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_DIR = ROOT / "launch"
SITE_LAUNCH = ROOT / "telesurg" / "bringup" / "descriptions.py"
LAUNCH_FILES = sorted(LAUNCH_DIR.glob("*.launch.py"))
#: Where launch files are built: site_launch.py, and the launch files that call it.
SOURCES = [SITE_LAUNCH, *LAUNCH_FILES]
#: Which site_launch function each launch file returns (the issue's four launch files).
ENTRY_POINTS = {
    "master_site.launch.py": "site_launch_description('master')",
    "patient_site.launch.py": "site_launch_description('patient')",
    "telesurg.launch.py": "session_launch_description()",
    "gazebo.launch.py": "gazebo_launch_description()",
}
#: Executables of other packages that the launch files start.
FOREIGN_EXECUTABLES = {
    ("robot_state_publisher", "robot_state_publisher"),
    ("ros_gz_sim", "create"),
    ("ros_gz_bridge", "parameter_bridge"),
    ("controller_manager", "spawner"),
    ("rviz2", "rviz2"),
}
#: Launch arguments of each launch file.
LINK_ARGUMENTS = {f"link_{link}_{part}" for link in ("a", "b") for part in LINK_OVERRIDES.values()}
BRIDGE_ARGUMENTS = {"bridge_config", "key_file", "video", *LINK_ARGUMENTS}
EXPECTED_ARGUMENTS = {
    "master_site.launch.py": {"config", "console", "record", "record_dir", *BRIDGE_ARGUMENTS},
    "patient_site.launch.py": {"config", "sim", "rviz", "record", "record_dir",
                               *BRIDGE_ARGUMENTS},
    "telesurg.launch.py": {"config", "sim", "rviz", "console", "record", "record_dir",
                           "patient_domain", *BRIDGE_ARGUMENTS},
    "gazebo.launch.py": {"config", "world", *BRIDGE_ARGUMENTS},
}
FILE_SUFFIXES = (".yaml", ".yml", ".xml", ".sdf", ".urdf", ".xacro", ".rviz", ".launch.py")


# Helpers ------------------------------------------------------------------------------------

def console_scripts() -> dict[str, str]:
    """Console scripts declared in setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = ast.literal_eval(value)
                    return dict(entry.replace(" ", "").split("=") for entry in entries)
    raise AssertionError("setup.py declares no console_scripts")


def exec_depends() -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return {element.text.strip() for element in root.iter()
            if element.tag in ("exec_depend", "depend")}


def tree_of(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def calls(path: Path, *names: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree_of(path))
            if isinstance(node, ast.Call) and callee(node) in names]


def keyword(call: ast.Call, name: str):
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def constant(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def function_def(name: str) -> ast.FunctionDef:
    """A function of site_launch.py."""
    (function,) = [node for node in ast.walk(tree_of(SITE_LAUNCH))
                   if isinstance(node, ast.FunctionDef) and node.name == name]
    return function


def declared_arguments(path: Path) -> dict[str, ast.AST | None]:
    """{argument name (f-strings unparsed): its description node} for DeclareLaunchArgument
    calls and the _flag(name, default, description) shorthand."""
    declared = {}
    for call in calls(path, "DeclareLaunchArgument", "_flag"):
        name = call.args[0]
        if isinstance(name, ast.Name):  # inside _flag itself: the name is its parameter
            continue
        description = keyword(call, "description")
        if callee(call) == "_flag":
            description = call.args[2] if len(call.args) > 2 else description
        declared[constant(name) or ast.unparse(name)] = description
    return declared


# The node graph and console scripts ---------------------------------------------------------

def test_every_graph_node_is_a_console_script_with_a_main():
    scripts = console_scripts()
    for spec in (*SESSION_NODES, BRIDGE):
        assert scripts.get(spec.executable) == f"{spec.module}:main", spec.name
        module = importlib.import_module(spec.module)
        assert callable(module.main)


def test_colcon_installs_scripts_where_ros2_run_looks():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["install"]["install_scripts"] == "$base/lib/telesurg"
    assert config["develop"]["script_dir"] == "$base/lib/telesurg"


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda path: path.name)
def test_every_launch_file_compiles_and_returns_a_site_launch_description(launch_file):
    tree = tree_of(launch_file)
    compile(tree, str(launch_file), "exec")
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef)
                   and node.name == "generate_launch_description"]
    (statement,) = function.body
    assert isinstance(statement, ast.Return)
    assert ast.unparse(statement.value) == ENTRY_POINTS[launch_file.name]
    imports = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imports == {"telesurg.bringup.descriptions"}


def test_the_four_launch_files_exist():
    assert {path.name for path in LAUNCH_FILES} == set(ENTRY_POINTS)


def test_site_launch_takes_node_lists_from_the_graph_and_copies_no_executable():
    """Every telesurg Node's executable and name come from a graph NodeSpec (never a string
    copied into the launch code), and its node lists from nodes_of_site."""
    telesurg_nodes = [call for call in calls(SITE_LAUNCH, "Node")
                      if constant(keyword(call, "package")) == "telesurg"]
    assert telesurg_nodes
    for call in telesurg_nodes:
        for field in ("executable", "name"):
            value = keyword(call, field)
            assert isinstance(value, ast.Attribute) and value.attr == field, ast.unparse(call)
    used = {callee(call) for call in calls(SITE_LAUNCH, "nodes_of_site", "split_arm_controller")}
    assert used == {"nodes_of_site", "split_arm_controller"}
    controller, others = support.split_arm_controller(nodes_of_site("patient"))
    assert controller.name == support.ARM_CONTROLLER_NODE and others
    assert {spec.site for spec in SESSION_NODES} == set(SITES)
    with pytest.raises(ValueError):
        support.split_arm_controller(nodes_of_site("master"))
    # The arm controller runs the MuJoCo arm itself with sim:=mujoco, else ros2_control's.
    assert set(support.ARM_HARDWARE_OF_SIM) == set(support.SIMULATORS)
    hardware = next(p for p in NODE_PARAMETERS["arm_controller"] if p.name == "hardware")
    assert set(support.ARM_HARDWARE_OF_SIM.values()) == set(hardware.choices)


def test_every_executable_is_a_console_script_or_of_a_declared_dependency():
    scripts = console_scripts()
    depends = exec_depends()
    started = set()
    for path in SOURCES:
        for call in calls(path, "Node"):
            package = constant(keyword(call, "package"))
            executable_node = keyword(call, "executable")
            assert package, f"{path.name}: Node without a literal package: {ast.unparse(call)}"
            executable = constant(executable_node)
            if package == "telesurg":
                if executable is not None:
                    assert executable in scripts, executable
                continue
            assert executable, f"{path.name}: {ast.unparse(call)}"
            assert package in depends, f"{package} ({executable}) is not an exec_depend"
            started.add((package, executable))
    assert started == FOREIGN_EXECUTABLES
    # The one other process: ros2 bag record, built by launch_support.record_command.
    processes = calls(SITE_LAUNCH, "ExecuteProcess")
    assert len(processes) == 1
    assert any(isinstance(node, ast.Call) and callee(node) == "record_command"
               for node in ast.walk(function_def("recorder")))
    command = support.record_command(["/x"], "out")
    assert command[:3] == ["ros2", "bag", "record"]
    assert {"ros2bag", "rosbag2_storage_mcap"} <= depends  # the bag verb and -s mcap


def test_record_command_records_exactly_each_sites_contract_topics():
    for site in SITES:
        command = support.record_command(support.contract_topics([site]), "DIR")
        assert command[command.index("-o") + 1] == "DIR"
        assert command[command.index("-s") + 1] == "mcap"
        topics = command[command.index("--topics") + 1:]
        assert sorted(topics) == sorted(SITE_TOPICS[site]) and len(topics) == len(set(topics))
    both = support.contract_topics(SITES)
    assert set(both) == set(SITE_TOPICS["master"]) | set(SITE_TOPICS["patient"])
    # With video, the endoscope's compressed frames at both sites, not the raw images.
    video = set(support.contract_topics(SITES, video=True)) - set(both)
    assert {"/endoscope/left/image_raw/compressed", "/endoscope/keyframe_request"} <= video
    assert not any(topic.endswith("/image_raw") for topic in video)
    with pytest.raises(ValueError):
        support.contract_topics(["operating_room"])
    with pytest.raises(ValueError):
        support.record_command([], "DIR")
    recorded = {ast.unparse(call.args[0]) for call in calls(SITE_LAUNCH, "recorder")}
    assert recorded == {"[site]", "['master']", "['patient']"}  # each site its own recording


def test_record_directory_is_new_at_each_launch():
    first = support.default_record_dir("patient", datetime(2026, 1, 2, 3, 4, 5))
    second = support.default_record_dir("patient", datetime(2026, 1, 2, 3, 4, 6))
    assert first != second and "patient" in first and os.sep not in first


def test_launch_arguments_are_declared_with_descriptions_and_used_as_declared():
    declared = declared_arguments(SITE_LAUNCH)
    names = set(declared)
    constant_names = {name for name in names if "{" not in name}
    expected = set().union(*EXPECTED_ARGUMENTS.values())
    assert constant_names == {name for name in expected if not name.startswith("link_")}
    assert "f'link_{link}_{part}'" in names
    for name, description in declared.items():
        assert description is not None, f"launch argument {name} has no description"
        text = constant(description)
        if text is not None:
            assert len(text.strip()) > 10, f"launch argument {name}: {text!r}"
    for call in calls(SITE_LAUNCH, "LaunchConfiguration"):
        name = constant(call.args[0])
        if name is not None:
            assert name in constant_names, f"LaunchConfiguration({name!r}) is never declared"
        else:  # the link arguments, or the names passed on to gazebo.launch.py
            assert ast.unparse(call.args[0]) in ("f'link_{link}_{field}'", "name"), call.args[0]
    (passed,) = [node.value for node in tree_of(SITE_LAUNCH).body if isinstance(node, ast.Assign)
                 and ast.unparse(node.targets[0]) == "BRIDGE_ARGUMENTS"]
    assert {constant(element) for element in passed.elts if constant(element)} == {
        "bridge_config", "key_file", "video"}
    assert ast.unparse(passed.elts[-1]).startswith("*(f'link_{link}_{part}'")


def test_sim_argument_offers_mujoco_gazebo_none_and_conditions_use_only_those():
    assert support.SIMULATORS == ("mujoco", "gazebo", "none")
    assert support.DEFAULT_SIMULATOR in support.SIMULATORS
    (sim,) = [call for call in calls(SITE_LAUNCH, "DeclareLaunchArgument")
              if constant(call.args[0]) == "sim"]
    assert ast.unparse(keyword(sim, "choices")) == "list(support.SIMULATORS)"
    assert ast.unparse(keyword(sim, "default_value")) == "support.DEFAULT_SIMULATOR"
    compared = [constant(call.args[0]) for call in calls(SITE_LAUNCH, "_sim_is")]
    compared += [constant(call.args[1])
                 for call in calls(SITE_LAUNCH, "EqualsSubstitution", "NotEqualsSubstitution")
                 if ast.unparse(call.args[0]) == "LaunchConfiguration('sim')"
                 and ast.unparse(call.args[1]) != "value"]  # _sim_is(value) itself
    assert compared and set(compared) <= set(support.SIMULATORS), compared
    assert {"mujoco", "gazebo"} <= set(compared)
    for flag in calls(SITE_LAUNCH, "_flag"):
        assert constant(flag.args[1]) in ("true", "false")


def test_site_launch_sets_only_declared_bridge_parameters_and_composes_overrides():
    declared = {param.name for param in NODE_PARAMETERS["bridge"]} | ROS_BUILTIN_PARAMETERS
    function = function_def("bridge_node")
    keys = {constant(key) for node in ast.walk(function) if isinstance(node, ast.Dict)
            for key in node.keys if constant(key)}
    assert {"role", "config_file", "key_file"} <= keys <= declared | {"bind", "peer", "interface"}
    assert set(LINK_OVERRIDES) <= declared
    # With no launch argument given, each override reads 'a= b=': nothing is overridden.
    for parameter in LINK_OVERRIDES:
        assert parse_link_overrides(parameter, "a= b=") == {}


# Files --------------------------------------------------------------------------------------

def test_every_file_the_launch_files_name_is_in_the_package_or_a_dependency():
    depends = exec_depends()
    for file in support.SHARE_FILES:
        if file.package == support.PACKAGE:
            assert (ROOT / file.folder / file.name).is_file(), f"{file.folder}/{file.name}"
        else:
            assert file.package in depends, file
    # No path is named outside that table: no file-like string in the launch code.
    for path in [*SOURCES]:
        strings = {node.value for node in ast.walk(tree_of(path))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        named = {text for text in strings if text.endswith(FILE_SUFFIXES) and " " not in text}
        assert not named, f"{path.name} names files itself: {named}"
    # Included launch files come from the table: gazebo.launch.py and ros_gz_sim's.
    sources = {ast.unparse(call.args[0])
               for call in calls(SITE_LAUNCH, "PythonLaunchDescriptionSource")}
    assert sources == {"share_file(support.GAZEBO_LAUNCH)", "share_file(support.GZ_SIM_LAUNCH)"}
    assert support.GAZEBO_LAUNCH.name in ENTRY_POINTS


def test_share_token_resolves_to_the_installed_share_directory(tmp_path):
    urdf = (f"<robot><gazebo><plugin><parameters>{support.SHARE_TOKEN}/config/controllers.yaml"
            "</parameters></plugin></gazebo></robot>")
    assert support.share_references(urdf) == ["config/controllers.yaml"]
    resolved = support.resolve_share_token(urdf, tmp_path)
    assert support.SHARE_TOKEN not in resolved
    assert f"<parameters>{tmp_path}/config/controllers.yaml</parameters>" in resolved
    assert support.resolve_share_token(urdf, f"{tmp_path}/") == resolved
    assert support.resolve_share_token("<robot/>", tmp_path) == "<robot/>"
    with pytest.raises(ValueError):
        support.resolve_share_token(urdf, "relative/share")


def test_urdf_points_gz_ros2_control_at_the_installed_controllers_file(tmp_path):
    urdf = (ROOT / support.URDF.folder / support.URDF.name).read_text()
    plugins = [plugin for plugin in ET.fromstring(urdf).iter("plugin")
               if "gz_ros2_control" in plugin.get("filename", "")]
    assert len(plugins) == 1, "description/psm.urdf has no gz_ros2_control plugin"
    parameters = [element.text.strip() for element in plugins[0].iter("parameters")]
    assert parameters == [f"{support.SHARE_TOKEN}/config/controllers.yaml"]
    for reference in support.share_references(urdf):
        assert (ROOT / reference).is_file(), reference
    # As robot_state_publisher gets it from an installed share directory:
    for folder in ("description", "config"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    description = support.robot_description(tmp_path)
    assert support.SHARE_TOKEN not in description
    (resolved,) = [element.text.strip() for element in ET.fromstring(description).iter()
                   if element.tag == "parameters"]
    assert Path(resolved) == tmp_path / "config" / "controllers.yaml" and Path(resolved).is_file()


def test_controllers_file_declares_the_spawned_controllers_on_the_arm_controllers_topics():
    """The arm controller runs unchanged against Gazebo and MuJoCo: both take
    /forward_position_controller/commands in JOINT_NAMES order and publish /joint_states."""
    controllers = yaml.safe_load((ROOT / "config" / "controllers.yaml").read_text())
    manager = controllers[support.CONTROLLER_MANAGER.strip("/")]["ros__parameters"]
    types = {name: manager[name]["type"] for name in support.CONTROLLERS}
    assert types == {"joint_state_broadcaster": "joint_state_broadcaster/JointStateBroadcaster",
                     "forward_position_controller":
                         "position_controllers/JointGroupPositionController"}
    depends = exec_depends()
    for kind in types.values():
        assert kind.split("/")[0] in depends, kind
    forward = controllers["forward_position_controller"]["ros__parameters"]
    assert tuple(forward["joints"]) == JOINT_NAMES
    command_topic = f"/{support.CONTROLLERS[-1]}/commands"
    assert command_topic in SITE_TOPICS["patient"] and "/joint_states" in SITE_TOPICS["patient"]
    for node in ("arm_controller", "simulator"):
        assert "topics.FORWARD_POSITION_COMMANDS" in (
            ROOT / "telesurg" / "nodes" / f"{node}.py").read_text()
    assert topics.FORWARD_POSITION_COMMANDS.name == command_topic


def test_gazebo_spawn_clock_bridge_and_spawners():
    arguments = support.spawn_arguments()
    assert arguments[:4] == ["-topic", "robot_description", "-name", support.MODEL_NAME]
    pose = {arguments[i][1:]: float(arguments[i + 1]) for i in range(4, len(arguments), 2)}
    assert pose == support.SPAWN_POSE
    # Where the world wants the arm: its frame psm_spawn (position only, no rotation).
    world = ET.parse(ROOT / support.WORLD.folder / support.WORLD.name).getroot()
    assert world.tag == "sdf"
    (frame,) = [frame for frame in world.iter("frame") if frame.get("name") == "psm_spawn"]
    values = [float(value) for value in frame.find("pose").text.split()]
    assert values[3:] == [0.0, 0.0, 0.0]
    assert dict(zip("xyz", values[:3], strict=True)) == pytest.approx(support.SPAWN_POSE)
    assert support.CLOCK_BRIDGE == "/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock"
    assert "rosgraph_msgs" in exec_depends()
    for name in support.CONTROLLERS:
        assert support.spawner_arguments(name) == [name, "--controller-manager",
                                                   support.CONTROLLER_MANAGER]
    with pytest.raises(ValueError):
        support.spawner_arguments("effort_controller")
    assert support.CONTROLLERS[0] == "joint_state_broadcaster"  # /joint_states first


def test_gazebo_chain_starts_the_patient_site_after_the_last_spawner():
    """Statically: each spawner, then the site's nodes, on OnProcessExit of the step before;
    the site's nodes on sim time; handlers registered before the spawn runs."""
    function = function_def("gazebo_launch_description")
    source = ast.unparse(function)
    assert "session_nodes(others, use_sim_time=True)" in source
    assert "bridge_node('patient', use_sim_time=True" in source
    assert any(isinstance(node, ast.Call) and callee(node) == "OnProcessExit"
               for node in ast.walk(function))
    (returned,) = [node for node in ast.walk(function) if isinstance(node, ast.Return)]
    entries = [ast.unparse(element) for element in returned.value.args[0].elts]
    assert entries.index("*chain") < entries.index("spawn")


# Installation -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install` of the package into a temporary prefix (this environment left alone)."""
    prefix = tmp_path_factory.mktemp("prefix")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--ignore-installed", "--no-compile", "--no-warn-script-location", "--prefix",
         str(prefix), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return prefix


def test_installed_copy_has_every_share_file(installed):
    share = installed / "share" / support.PACKAGE
    assert (installed / "share/ament_index/resource_index/packages/telesurg").is_file()
    assert (share / "package.xml").read_bytes() == (ROOT / "package.xml").read_bytes()
    expected = [path for folder in ("launch", "config", "worlds", "description")
                for path in sorted((ROOT / folder).glob("*")) if path.is_file()]
    assert {path.parent.name for path in expected} == {"launch", "config", "worlds",
                                                       "description"}
    missing = [str(path.relative_to(ROOT)) for path in expected
               if not (share / path.relative_to(ROOT)).is_file()]
    assert not missing, f"not installed under share/telesurg: {missing}"
    for path in expected:
        assert (share / path.relative_to(ROOT)).read_bytes() == path.read_bytes()
    for file in support.SHARE_FILES:
        if file.package == support.PACKAGE:
            assert Path(file.path(share)).is_file(), file
    # The installed URDF, resolved as the launch files do, names an installed file.
    description = support.robot_description(share)
    assert not support.share_references(description)
    for element in ET.fromstring(description).iter("parameters"):
        assert Path(element.text.strip()).is_file(), element.text


def test_installed_copy_has_every_node_executable(installed):
    scripts = {path.name for path in (installed / "bin").iterdir()}
    for spec in (*SESSION_NODES, BRIDGE):
        assert spec.executable in scripts
    assert "telesurg" in scripts


# With stand-ins for launch and launch_ros ---------------------------------------------------

class StandIn:
    """Records how it was made: stands in for every launch and launch_ros class."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


STAND_INS = {
    "launch": ["LaunchDescription"],
    "launch.actions": ["DeclareLaunchArgument", "EmitEvent", "ExecuteProcess", "GroupAction",
                       "IncludeLaunchDescription", "LogInfo", "OpaqueFunction",
                       "RegisterEventHandler", "SetEnvironmentVariable",
                       "SetLaunchConfiguration"],
    "launch.conditions": ["IfCondition", "UnlessCondition"],
    "launch.event_handlers": ["OnProcessExit"],
    "launch.events": ["Shutdown"],
    "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
    "launch.substitutions": ["EnvironmentVariable", "EqualsSubstitution", "LaunchConfiguration",
                             "NotEqualsSubstitution", "TextSubstitution"],
    "launch_ros": [],
    "launch_ros.actions": ["Node"],
    "launch_ros.parameter_descriptions": ["ParameterValue"],
}


@pytest.fixture
def stand_in_launch(monkeypatch, tmp_path):
    """site_launch.py run over recording stand-ins for launch and launch_ros, with an
    installed-like share directory: this checks that its code runs and what it builds on any
    machine (the real API is checked where launch imports, below)."""
    for module_name, class_names in STAND_INS.items():
        module = type(sys)(module_name)
        for class_name in class_names:
            setattr(module, class_name, type(class_name, (StandIn,), {}))
        monkeypatch.setitem(sys.modules, module_name, module)
    share = tmp_path / "share"
    for folder in ("launch", "config", "worlds", "description"):
        shutil.copytree(ROOT / folder, share / "telesurg" / folder)
    import ament_index_python.packages
    monkeypatch.setattr(ament_index_python.packages, "get_package_share_directory",
                        lambda package: str(share / package))
    monkeypatch.delitem(sys.modules, "telesurg.bringup.descriptions", raising=False)
    yield share
    # Forget the module built over the stand-ins (and the package's attribute naming it).
    sys.modules.pop("telesurg.bringup.descriptions", None)
    vars(sys.modules["telesurg.bringup"]).pop("descriptions", None)


def _kind(entity) -> str:
    return type(entity).__name__


def _flattened(entities) -> list:
    """The entities, with those of groups in place of the groups (stand-ins)."""
    return [inner for entity in entities for inner in (
        _flattened(entity.args[0]) if _kind(entity) == "GroupAction" else [entity])]


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGUMENTS))
def test_launch_file_builds_over_stand_ins(stand_in_launch, name):
    description = _built(name)
    (entities,) = description.args
    arguments = [entity for entity in entities if _kind(entity) == "DeclareLaunchArgument"]
    assert {argument.args[0] for argument in arguments} == EXPECTED_ARGUMENTS[name]
    for argument in arguments:
        assert argument.kwargs["description"].strip(), argument.args[0]
        assert "default_value" in argument.kwargs, argument.args[0]
    # Arguments first: a launch configuration is declared before anything uses it.
    kinds = [_kind(entity) for entity in entities]
    assert kinds.index("DeclareLaunchArgument") == 0
    assert len(arguments) == max(i for i, kind in enumerate(kinds)
                                 if kind == "DeclareLaunchArgument") + 1
    # Then telesurg's Fast DDS profile, before any process starts, unless one is set already.
    profile = entities[len(arguments)]
    assert _kind(profile) == "SetEnvironmentVariable"
    assert profile.args[0] == "FASTDDS_DEFAULT_PROFILES_FILE"
    assert profile.args[1].args[0] == "FASTDDS_DEFAULT_PROFILES_FILE"
    assert Path(profile.args[1].kwargs["default_value"]).is_file()
    site = {"master_site.launch.py": ["master"], "patient_site.launch.py": ["patient"],
            "telesurg.launch.py": list(SITES)}.get(name)
    processes = [entity for entity in _flattened(entities) if _kind(entity) == "ExecuteProcess"]
    if site is None:
        assert not processes
    else:  # one recording per site, in record_dir (the session's: in a folder per site)
        assert len(processes) == len(site)
        for recorder, recorded in zip(processes, site, strict=True):
            command = recorder.kwargs["cmd"]
            assert command[:7] == ["ros2", "bag", "record", "-s", "mcap", "-o", command[6]]
            assert command[6][0].args == ("record_dir",)
            assert command[6][1:] == ([f"/{recorded}"] if len(site) > 1 else [])
            assert command[8:] == support.contract_topics([recorded], video=True)
            assert recorder.kwargs["condition"].args[0].args == ("record",)
    for argument in arguments:
        default = argument.kwargs["default_value"]
        if default.startswith(str(stand_in_launch)):
            assert Path(default).is_file(), default  # an installed file
    # With video:=true, the master site's decoder; every bridge carries video as video says.
    nodes = [entity for entity in _flattened(entities) if _kind(entity) == "Node"]
    decoders = [node for node in nodes
                if node.kwargs["executable"] == ENDOSCOPE_DECODER.executable]
    assert len(decoders) == (1 if "master" in (site or ()) else 0)
    for decoder in decoders:
        assert decoder.kwargs["condition"].args[0].args == ("video",)
    for bridge in (node for node in nodes if node.kwargs["executable"] == BRIDGE.executable):
        assert bridge.kwargs["parameters"][0]["video"].args[0].args == ("video",)
    # With console:=true, the console page in place of the virtual surgeon.
    drivers = {node.kwargs["executable"]: node.kwargs["condition"] for node in nodes
               if node.kwargs.get("name") in (VIRTUAL_SURGEON, WEB_CONSOLE.name)}
    if "master" in (site or ()):
        assert {name: (_kind(condition), condition.args[0].args)
                for name, condition in drivers.items()} == {
            "virtual_surgeon": ("UnlessCondition", ("console",)),
            WEB_CONSOLE.executable: ("IfCondition", ("console",))}
    else:
        assert not drivers


def _hardware(node) -> str | None:
    """The hardware parameter a Node action gives, if any."""
    return next((parameters["hardware"] for parameters in node.kwargs.get("parameters", ())
                 if isinstance(parameters, dict) and "hardware" in parameters), None)


def test_patient_site_over_stand_ins_starts_the_arm_for_each_sim(stand_in_launch):
    (entities,) = _built("patient_site.launch.py").args

    def sim_condition(entity):
        condition = entity.kwargs.get("condition")
        if condition is None:
            return None
        (test,) = condition.args
        if _kind(test) == "LaunchConfiguration":
            return ("flag", test.args[0])
        assert test.args[0].args == ("sim",)
        return (_kind(test), test.args[1])

    nodes = sorted((entity.kwargs["executable"], sim_condition(entity),
                    _hardware(entity)) for entity in entities if _kind(entity) == "Node")
    assert nodes == [("arm_controller", ("EqualsSubstitution", "mujoco"), "mujoco"),
                     ("arm_controller", ("EqualsSubstitution", "none"), "ros2_control"),
                     ("robot_state_publisher", ("EqualsSubstitution", "mujoco"), None),
                     ("rviz2", ("flag", "rviz"), None)]
    (group,) = [entity for entity in entities if _kind(entity) == "GroupAction"]
    assert sim_condition(group) == ("NotEqualsSubstitution", "gazebo")
    _, others = support.split_arm_controller(nodes_of_site("patient"))
    grouped = [(node.kwargs["executable"], sim_condition(node)) for node in group.args[0]]
    # The endoscope renders the MuJoCo arm, with video:=true; with Gazebo, its cameras.
    assert grouped == [(spec.executable, None) for spec in others] + [
        (BRIDGE.executable, None), (ENDOSCOPE.executable, ("flag", "video"))]
    (include,) = [entity for entity in entities if _kind(entity) == "IncludeLaunchDescription"]
    assert sim_condition(include) == ("EqualsSubstitution", "gazebo")
    (source,) = include.args
    assert Path(source.args[0]) == stand_in_launch / "telesurg" / "launch" / "gazebo.launch.py"
    passed = dict(include.kwargs["launch_arguments"])
    assert set(passed) == {"config", *BRIDGE_ARGUMENTS}
    assert all(passed[name].args == (name,) for name in passed)


def test_gazebo_over_stand_ins_chains_spawners_then_the_site_on_sim_time(stand_in_launch):
    (entities,) = _built("gazebo.launch.py").args
    nodes = [entity for entity in entities if _kind(entity) == "Node"]
    (state_publisher,) = [node for node in nodes
                          if node.kwargs["package"] == "robot_state_publisher"]
    parameters = state_publisher.kwargs["parameters"][0]
    assert parameters["use_sim_time"] is True
    (urdf,) = parameters["robot_description"].args
    (controllers,) = [element.text for element in ET.fromstring(urdf).iter("parameters")]
    assert Path(controllers) == stand_in_launch / "telesurg" / "config" / "controllers.yaml"
    assert Path(controllers).is_file()
    (gz,) = [entity for entity in entities if _kind(entity) == "IncludeLaunchDescription"]
    gz_args = dict(gz.kwargs["launch_arguments"])["gz_args"]
    assert gz_args[0] == "-r " and gz_args[1].args == ("world",)
    handlers = [entity.args[0] for entity in entities if _kind(entity) == "RegisterEventHandler"]
    (spawn,) = [node for node in nodes if node.kwargs["executable"] == "create"]
    assert spawn.kwargs["arguments"] == support.spawn_arguments()
    # Follow the chain: each step's successful exit starts the next.
    step, started = spawn, []
    for handler in handlers:
        assert handler.kwargs["target_action"] is step
        then = handler.kwargs["on_exit"](SimpleNamespace(returncode=0), None)
        failed = handler.kwargs["on_exit"](SimpleNamespace(returncode=1), None)
        assert [_kind(action) for action in failed] == ["LogInfo", "EmitEvent"]
        if then[0].kwargs["package"] == "controller_manager":
            (step,) = then
            started.append(step.kwargs["arguments"][0])
    assert started == list(support.CONTROLLERS)
    controller, others = support.split_arm_controller(nodes_of_site("patient"))
    assert [node.kwargs["executable"] for node in then] == [
        *(spec.executable for spec in others), controller.executable, BRIDGE.executable,
        ENDOSCOPE_ENCODER.executable]
    assert _hardware(then[-3]) == "ros2_control"  # Gazebo's arm, over ros2_control's topics
    for node in then:
        assert {"use_sim_time": True} in node.kwargs["parameters"], node.kwargs["executable"]
    assert "condition" not in then[-2].kwargs  # the patient site's bridge, always
    # The cameras' pictures become video with video:=true only.
    (flag,) = then[-1].kwargs["condition"].args
    assert _kind(flag) == "LaunchConfiguration" and flag.args == ("video",)
    assert entities.index(spawn) > max(entities.index(entity) for entity in entities
                                       if _kind(entity) == "RegisterEventHandler")


# Where launch and launch_ros import ---------------------------------------------------------

def _installed(name: str) -> bool:
    """A real package: this repository's launch/ folder imports as a namespace package
    `launch` (no origin) wherever the repository root is on sys.path."""
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None


def _launch_or_skip(*packages: str) -> None:
    """Skip, saying why, unless launch and launch_ros import and telesurg (and the packages
    named) are installed in an ament index."""
    missing = [name for name in ("launch", "launch_ros") if not _installed(name)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed here (no ROS 2 launch on PyPI); "
                    "the static checks above cover the launch files")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    for package in ("telesurg", *packages):
        try:
            get_package_share_directory(package)
        except PackageNotFoundError:
            pytest.skip(f"{package} is not in an ament index here (for telesurg: colcon build, "
                        "then source install/setup.bash)")


def _visit(entities, context, found):
    """Walk a launch description as launching would decide it, without starting anything:
    arguments set their defaults, conditions are evaluated, groups are entered; Nodes,
    processes, includes and event handlers are collected."""
    from launch.actions import (
        DeclareLaunchArgument,
        ExecuteProcess,
        GroupAction,
        IncludeLaunchDescription,
        PopLaunchConfigurations,
        PushLaunchConfigurations,
        RegisterEventHandler,
    )
    from launch.utilities import perform_substitutions
    from launch_ros.actions import Node

    for entity in entities:
        condition = getattr(entity, "condition", None)
        if condition is not None and not condition.evaluate(context):
            continue
        if isinstance(entity, (DeclareLaunchArgument, PushLaunchConfigurations,
                               PopLaunchConfigurations)):
            entity.visit(context)
        elif isinstance(entity, GroupAction):
            _visit(entity.get_sub_entities(), context, found)
        elif isinstance(entity, Node):
            found["nodes"].append((entity.node_package, entity.node_executable))
        elif isinstance(entity, ExecuteProcess):
            found["processes"].append([perform_substitutions(context, part)
                                       for part in entity.cmd])
        elif isinstance(entity, IncludeLaunchDescription):
            # The path, expanded as including would (its `location` property describes the
            # substitutions until the source is loaded, and loading runs the file).
            source = entity.launch_description_source
            location = perform_substitutions(context, source._LaunchDescriptionSource__location)
            found["includes"].append(os.path.basename(location))
        elif isinstance(entity, RegisterEventHandler):
            found["handlers"].append(entity)


def _built(name):
    spec = importlib.util.spec_from_file_location(name, LAUNCH_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGUMENTS))
def test_launch_description_builds_and_visits_where_launch_imports(name):
    _launch_or_skip(*((support.GZ_SIM_LAUNCH.package,) if name == "gazebo.launch.py" else ()))
    from launch import LaunchContext, LaunchDescription

    description = _built(name)
    assert isinstance(description, LaunchDescription)
    arguments = {argument.name: argument for argument in description.get_launch_arguments()}
    assert EXPECTED_ARGUMENTS[name] <= set(arguments)
    for argument in arguments.values():
        assert argument.description.strip(), argument.name
    site = {"master_site.launch.py": ["master"], "patient_site.launch.py": ["patient"],
            "telesurg.launch.py": list(SITES)}.get(name)
    has_ros2_bag = support.installed(support.ROS2_BAG_PACKAGE)
    for sim in (support.SIMULATORS if "sim" in arguments else [None]):
        context = LaunchContext()
        if sim is not None:
            context.launch_configurations["sim"] = sim
        context.launch_configurations["record"] = "true"
        found = {"nodes": [], "processes": [], "includes": [], "handlers": []}
        _visit(description.entities, context, found)
        nodes = found["nodes"]
        if site is not None and has_ros2_bag:
            record_dir = context.launch_configurations["record_dir"]
            assert found["processes"] == [support.record_command(
                support.contract_topics([recorded], video=True),
                record_dir + (f"/{recorded}" if len(site) > 1 else "")) for recorded in site]
        else:  # without rosbag2, record:=true is a log line naming telesurg's recorder
            assert not found["processes"]
        if name == "gazebo.launch.py":
            assert found["includes"] == [support.GZ_SIM_LAUNCH.name]
            assert len(found["handlers"]) == len(support.CONTROLLERS) + 1
            assert ("telesurg", "arm_controller") not in nodes  # only once controllers are up
            assert {("ros_gz_sim", "create"), ("ros_gz_bridge", "parameter_bridge"),
                    ("robot_state_publisher", "robot_state_publisher")} <= set(nodes)
            continue
        patient = "patient" in (site or [])
        # The MuJoCo arm runs inside the arm controller: no launch starts the simulator node.
        assert ("telesurg", "simulator") not in nodes
        assert (support.GAZEBO_LAUNCH.name in found["includes"]) == (patient and sim == "gazebo")
        assert (("telesurg", "arm_controller") in nodes) == (patient and sim != "gazebo")
        # Every site its bridge; the patient site's comes with Gazebo's chain under gazebo.
        assert (("telesurg", "bridge") in nodes) == (site != ["patient"] or sim != "gazebo")
        for spec in nodes_of_site("master"):
            assert (("telesurg", spec.executable) in nodes) == ("master" in (site or []))


def test_gazebo_chain_needs_each_step_to_succeed_where_launch_imports():
    _launch_or_skip()
    from launch.actions import EmitEvent, LogInfo

    from telesurg.bringup import descriptions as site_launch

    on_exit = site_launch._after_success("spawning x", ["next"])
    assert on_exit(SimpleNamespace(returncode=0), None) == ["next"]
    failed = on_exit(SimpleNamespace(returncode=1), None)
    assert [type(action) for action in failed] == [LogInfo, EmitEvent]
