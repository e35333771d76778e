"""package.xml is a valid format 3 manifest (catkin_pkg, as colcon and rosdep read it) and names,
by its rosdep key, every package that telesurg's Python imports: a new import without a
declared dependency fails here, naming it."""

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "telesurg"

#: Top-level Python module -> the rosdep key that provides it on a ROS 2 install.
ROSDEP_KEYS = {
    "rclpy": "rclpy",
    "std_msgs": "std_msgs",
    "std_srvs": "std_srvs",
    "geometry_msgs": "geometry_msgs",
    "sensor_msgs": "sensor_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "crtk_msgs": "crtk_msgs",
    "trajectory_msgs": "trajectory_msgs",
    "builtin_interfaces": "builtin_interfaces",
    "rosgraph_msgs": "rosgraph_msgs",
    "rcl_interfaces": "rcl_interfaces",
    "rosidl_parser": "rosidl_parser",
    "rosidl_runtime_py": "rosidl_runtime_py",
    "ament_index_python": "ament_index_python",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "numpy": "python3-numpy",
    "scipy": "python3-scipy",
    "transforms3d": "python3-transforms3d",
    "yaml": "python3-yaml",
    "cryptography": "python3-cryptography",
    "matplotlib": "python3-matplotlib",
    "aiohttp": "python3-aiohttp",
    "selenium": "python3-selenium",
    "psutil": "python3-psutil",
}
#: Top-level module -> the pip package that provides it where rosdep has no key: package.xml
#: must say so in a comment (`pip install NAME`) and requirements.txt must pin it.
PIP_ONLY = {"mujoco": "mujoco", "rosbags": "rosbags", "zenoh": "eclipse-zenoh", "av": "av",
            "zfec": "zfec"}
#: Test-only imports -> their rosdep keys (test_depend).
TEST_KEYS = {"pytest": "python3-pytest", "hypothesis": "python3-hypothesis"}


def imported_modules(paths) -> dict[str, set[str]]:
    """{top-level module: files importing it} over the files, standard library, relative
    imports and telesurg itself left out."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("__future__", PACKAGE):
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def package_sources() -> list[Path]:
    """The package's Python at run time: the telesurg modules and the launch files."""
    return [*sorted((ROOT / PACKAGE).rglob("*.py")), *sorted((ROOT / "launch").glob("*.py"))]


@pytest.fixture(scope="module")
def manifest():
    package = pytest.importorskip(
        "catkin_pkg.package",
        reason="catkin_pkg is not installed (pip install catkin_pkg, as requirements.txt does)")
    return package.parse_package(str(ROOT / "package.xml"))


def comments(path: Path) -> list[str]:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.fromstring(path.read_text(), parser=parser)
    return [element.text or "" for element in root.iter() if element.tag is ET.Comment]


def test_package_xml_is_a_valid_format_3_ament_python_manifest(manifest):
    manifest.validate()  # raises InvalidPackage, saying what is wrong
    assert manifest.package_format == 3
    assert manifest.name == PACKAGE
    assert [export.content for export in manifest.exports
            if export.tagname == "build_type"] == ["ament_python"]
    setup_text = (ROOT / "setup.py").read_text()
    assert f'version="{manifest.version}"' in setup_text  # one version for colcon and pip
    for kind in ("exec_depends", "test_depends"):
        names = [dependency.name for dependency in getattr(manifest, kind)]
        assert len(names) == len(set(names)), f"{kind} lists a key twice: {names}"


def test_every_import_of_the_package_is_a_declared_dependency(manifest):
    runtime = {dependency.name for dependency in manifest.exec_depends}
    pip_notes = " ".join(comments(ROOT / "package.xml"))
    requirements = (ROOT / "requirements.txt").read_text().lower()
    imports = imported_modules(package_sources())
    assert {"rclpy", "numpy", "launch", "launch_ros"} <= set(imports)  # the scan sees imports
    unknown = {module: sorted(files) for module, files in imports.items()
               if module not in ROSDEP_KEYS and module not in PIP_ONLY}
    assert not unknown, (f"imports with no rosdep key in test/test_package.py's table: {unknown}"
                         "; add the key to package.xml and the table")
    undeclared = {module: ROSDEP_KEYS[module] for module in imports
                  if module in ROSDEP_KEYS and ROSDEP_KEYS[module] not in runtime}
    assert not undeclared, f"imported but no exec_depend in package.xml: {undeclared}"
    for module in imports.keys() & PIP_ONLY.keys():
        assert f"pip install {PIP_ONLY[module]}" in pip_notes, (
            f"{module} has no rosdep key: package.xml must say `pip install {PIP_ONLY[module]}`")
        assert f"\n{PIP_ONLY[module]}==" in f"\n{requirements}", (
            f"{PIP_ONLY[module]} is not pinned in requirements.txt")


def test_setup_py_imports_are_build_dependencies(manifest):
    declared = {dependency.name for dependency in manifest.build_depends}
    imports = imported_modules([ROOT / "setup.py"])
    assert set(imports) == {"setuptools"}, imports
    assert "python3-setuptools" in declared


def test_pip_only_packages_really_have_no_rosdep_dependency(manifest):
    declared = {dependency.name for dependency in (*manifest.exec_depends,
                                                   *manifest.test_depends)}
    for name in PIP_ONLY.values():
        assert not declared & {name, f"python3-{name}"}, name


def test_test_imports_are_test_dependencies(manifest):
    declared = {dependency.name for dependency in manifest.test_depends}
    imports = imported_modules(sorted((ROOT / "test").glob("*.py")))
    assert "pytest" in imports
    missing = {module: key for module, key in TEST_KEYS.items()
               if module in imports and key not in declared}
    assert not missing, f"test imports without a test_depend: {missing}"


def test_import_scan_names_a_module_it_cannot_map(tmp_path, monkeypatch):
    """The scan itself: a third-party import is found, the standard library and the package
    are not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    source = tmp_path / "module.py"
    source.write_text("import os\nimport numpy.linalg\nfrom telesurg import graph\n"
                      "from . import sibling\nfrom somewhere_new.sub import thing\n"
                      "def f():\n    import yaml\n")
    assert imported_modules([source]) == {"numpy": {"module.py"}, "somewhere_new": {"module.py"},
                                          "yaml": {"module.py"}}
