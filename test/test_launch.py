"""The launch file starts exactly the package's nodes with installed files; where `launch`
and `launch_ros` import, the LaunchDescription is built."""

import ast
import configparser
import importlib.util
import re
from pathlib import Path

import pytest

from telesurg.bridge_config import LINK_OVERRIDES, parse_link_overrides
from telesurg.graph import BRIDGE, SESSION_NODES, SITES, nodes_of_site
from telesurg.params import NODE_PARAMETERS

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILE = ROOT / "launch" / "telesurg.launch.py"


def console_scripts() -> dict[str, str]:
    """Console scripts declared in setup.py, read without running it."""
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"(\w+) = ([\w.]+:main)"', text))


def test_every_graph_node_is_a_console_script_with_a_main():
    scripts = console_scripts()
    for spec in (*SESSION_NODES, BRIDGE):
        assert scripts.get(spec.executable) == f"{spec.module}:main", spec.name
        module = importlib.import_module(spec.module)
        assert callable(module.main)


def test_launch_file_takes_its_nodes_from_the_graph_and_names_installed_files():
    tree = ast.parse(LAUNCH_FILE.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "telesurg.graph" for alias in node.names}
    assert "SESSION_NODES" in imported
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and isinstance(node.value, str)}
    assert {"config", "telesurg.yaml"} <= strings
    assert (ROOT / "config" / "telesurg.yaml").is_file()
    setup_text = (ROOT / "setup.py").read_text()
    assert 'glob("config/*.yaml")' in setup_text and 'glob("launch/*.launch.py")' in setup_text


@pytest.mark.parametrize("launch_file", sorted((ROOT / "launch").glob("*.launch.py")),
                         ids=lambda path: path.name)
def test_every_launch_file_compiles_and_defines_a_description(launch_file):
    tree = ast.parse(launch_file.read_text(), filename=str(launch_file))
    compile(tree, str(launch_file), "exec")
    functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def test_site_launch_files_start_their_site_and_a_bridge_with_installed_configs():
    for site in SITES:
        text = (ROOT / "launch" / f"{site}_site.launch.py").read_text()
        assert f'site_launch_description("{site}")' in text
        assert nodes_of_site(site)  # each site runs nodes of its own
    shared = ast.parse((ROOT / "telesurg" / "site_launch.py").read_text())
    names = {node.id for node in ast.walk(shared) if isinstance(node, ast.Name)}
    assert {"nodes_of_site", "BRIDGE"} <= names
    strings = {node.value for node in ast.walk(shared) if isinstance(node, ast.Constant)}
    assert {"telesurg.yaml", "bridge.yaml"} <= strings
    assert (ROOT / "config" / "telesurg.yaml").is_file()
    assert (ROOT / "config" / "bridge.yaml").is_file()
    assert {spec.site for spec in SESSION_NODES} == set(SITES)


def test_colcon_installs_scripts_where_ros2_run_looks():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["install"]["install_scripts"] == "$base/lib/telesurg"
    assert config["develop"]["script_dir"] == "$base/lib/telesurg"


def test_launch_description_builds_where_launch_ros_imports():
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installed here (no ROS 2 launch on PyPI); "
                    "the static checks above cover the launch file")
    from launch_ros.actions import Node

    from launch import LaunchDescription

    expected = {"telesurg.launch.py": len(SESSION_NODES),
                **{f"{site}_site.launch.py": len(nodes_of_site(site)) + 1 for site in SITES}}
    for name, count in expected.items():
        spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
        assert isinstance(description, LaunchDescription)
        nodes = [entity for entity in description.entities if isinstance(entity, Node)]
        assert len(nodes) == count, name


def test_built_package_installs_every_share_file_and_node(tmp_path):
    """The wheel pip builds installs what ament_python/colcon installs: the package marker,
    package.xml, launch, config and description under share/telesurg, and the node
    executables. (Building a wheel, not installing it, leaves this environment alone.)"""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("telesurg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = next(name.split("/")[0] for name in names if ".data/" in name)
    expected = ["share/ament_index/resource_index/packages/telesurg",
                "share/telesurg/package.xml"]
    for folder, pattern in (("launch", "*.launch.py"), ("config", "*.yaml"),
                            ("config", "*.xml"), ("description", "*.urdf")):
        files = sorted((ROOT / folder).glob(pattern))
        assert files, f"no {folder}/{pattern} in the source tree"
        expected += [f"share/telesurg/{folder}/{f.name}" for f in files]
    missing = [path for path in expected if f"{data}/data/{path}" not in names]
    assert not missing
    entry_points = zipfile.ZipFile(wheel).read(
        next(name for name in names if name.endswith("entry_points.txt"))).decode()
    for spec in (*SESSION_NODES, BRIDGE):
        assert f"{spec.executable} = {spec.module}:main" in entry_points


def test_site_launch_sets_only_declared_bridge_parameters_and_composes_overrides():
    declared = {param.name for param in NODE_PARAMETERS["bridge"]}
    tree = ast.parse((ROOT / "telesurg" / "site_launch.py").read_text())
    keys = {key.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for key in node.keys if isinstance(key, ast.Constant)}
    assert {"role", "config_file", "key_file"} <= keys <= declared | {"bind", "peer", "interface"}
    assert set(LINK_OVERRIDES) <= declared
    # With no launch argument given, each override reads 'a= b=': nothing is overridden.
    for parameter in LINK_OVERRIDES:
        assert parse_link_overrides(parameter, "a= b=") == {}
