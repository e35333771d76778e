"""The package's layering, read from its source: the pure parts never import ROS (rclpy, the
message packages, launch), directly or through another telesurg module, and no telesurg module
is imported back by what it imports (no import cycle).

Every import statement counts, at module level or inside a function: a function's import runs
when the function does, and a pure module's functions run without ROS too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "telesurg"
#: Subpackages whose every module runs without ROS.
PURE_PACKAGES = ("contract", "arm", "master", "patient", "bridge", "linkem", "analysis",
                 "video")
#: Modules without ROS inside packages that also hold ROS code.
PURE_MODULES = ("bags.storage", "session.processes")
#: ROS at run time, by top-level module: the client library and middleware, the generated
#: interfaces (messages, services) and their tools, launch.
ROS_NAMES = frozenset({"rclpy", "launch", "launch_ros", "builtin_interfaces"})
ROS_PREFIXES = ("rosidl_", "rcl_", "rmw")
ROS_SUFFIXES = ("_msgs", "_srvs", "_interfaces")


def is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_NAMES or top.startswith(ROS_PREFIXES) or top.endswith(ROS_SUFFIXES)


@dataclass
class Module:
    name: str
    path: Path
    #: The package's modules it imports, each by the module it names.
    internal: set[str] = field(default_factory=set)
    #: Everything else it imports, as written.
    external: set[str] = field(default_factory=set)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_modules(root: Path, package: str) -> dict[str, Module]:
    """Every module of the package below root with what its import statements import."""
    modules = {module_name(path, root): Module(module_name(path, root), path)
               for path in sorted((root / package).rglob("*.py"))}
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), filename=str(module.path))
        is_package = module.path.name == "__init__.py"
        for node in ast.walk(tree):
            for imported in _imported(node, module.name, is_package, modules):
                if imported == package or imported.startswith(f"{package}."):
                    if imported in modules and imported != module.name:
                        module.internal.add(imported)
                else:
                    module.external.add(imported)
    return modules


def _imported(node: ast.AST, name: str, is_package: bool, modules: dict) -> list[str]:
    """The modules one statement imports: `from a import b` imports the module a.b if there
    is one, else names from a."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's package (an __init__ is its own package)
        base = name.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
            for alias in node.names]


def parents(name: str) -> list[str]:
    """The packages whose __init__ runs before a module: telesurg, telesurg.analysis, ..."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def is_pure(name: str, package: str, pure_packages, pure_modules) -> bool:
    inner = name[len(package) + 1:] if name.startswith(f"{package}.") else ""
    return (inner in pure_modules
            or any(inner == sub or inner.startswith(f"{sub}.") for sub in pure_packages))


def ros_imports(modules: dict[str, Module], start: str) -> list[str]:
    """How start comes to import ROS: for every module it imports (itself included, by the
    shortest chain) that imports ROS itself, `start -> ... -> that module: its ROS imports`."""
    found, chains, frontier = [], {start: [start]}, [start]
    while frontier:
        following = []
        for name in frontier:
            module = modules[name]
            ros = sorted(external for external in module.external if is_ros(external))
            if ros:
                found.append(f"{' -> '.join(chains[name])}: {', '.join(ros)}")
            for step in sorted(module.internal | set(parents(name))):
                if step in modules and step not in chains:
                    chains[step] = chains[name] + [step]
                    following.append(step)
        frontier = following
    return found


def impurities(modules: dict[str, Module], package: str, pure_packages=PURE_PACKAGES,
               pure_modules=PURE_MODULES) -> list[str]:
    """Every way a pure module comes to import ROS (ros_imports)."""
    return [line for name in sorted(modules)
            if is_pure(name, package, pure_packages, pure_modules)
            for line in ros_imports(modules, name)]


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """A cycle, [a, b, ..., a], through each set of modules that import each other (the
    strongly connected components of the import graph, by Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for step in sorted(modules[name].internal):
            if step not in index:
                visit(step)
                low[name] = min(low[name], low[step])
            elif step in on_stack:
                low[name] = min(low[name], index[step])
        if low[name] == index[name]:  # name roots a component: the stack above it
            component = set()
            while name not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                cycles.append(_cycle_through(modules, component))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return cycles


def _cycle_through(modules: dict[str, Module], component: set[str]) -> list[str]:
    """A shortest cycle from the first module of a strongly connected set back to it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            for step in sorted(modules[name].internal & component):
                if step == start:
                    return paths[name] + [start]
                if step not in paths:
                    paths[step] = paths[name] + [step]
                    following.append(step)
        frontier = following
    raise AssertionError(f"no cycle through {sorted(component)}")


# -- the package ---------------------------------------------------------------------------


def test_the_pure_parts_never_import_ros():
    modules = read_modules(ROOT, PACKAGE)
    pure = [name for name in modules if is_pure(name, PACKAGE, PURE_PACKAGES, PURE_MODULES)]
    assert len(pure) > 20  # the scan sees the subpackages
    found = impurities(modules, PACKAGE)
    assert not found, "pure modules that import ROS:\n" + "\n".join(found)


def test_the_package_has_no_import_cycle():
    modules = read_modules(ROOT, PACKAGE)
    assert sum(len(module.internal) for module in modules.values()) > 100  # the scan sees them
    cycles = import_cycles(modules)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# -- the checks themselves, on a planted violation -----------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


PLANTED = {
    "pkg/__init__.py": "",
    "pkg/pure/__init__.py": "",
    # A module of the pure package: imports the module b (not a name from the package).
    "pkg/pure/a.py": "import json\nfrom pkg.pure import b\n",
    # ... whose function imports a ROS-side module, which imports rclpy.
    "pkg/pure/b.py": "def f():\n    from pkg.ros_side import c\n    return c\n",
    "pkg/ros_side/c.py": "import numpy\n\n\ndef g():\n    from rclpy.node import Node\n",
    # A cycle through every form of import: the package's __init__ imports d relatively, d
    # a name from e, e the module f in a function, f the package.
    "pkg/ros_side/__init__.py": "from . import d\n",
    "pkg/ros_side/d.py": "from pkg.ros_side.e import thing\n",
    "pkg/ros_side/e.py": "thing = 1\n\n\ndef h():\n    from pkg.ros_side import f\n",
    "pkg/ros_side/f.py": "from pkg import ros_side\n",
    # A pure module that imports a message package through its package's __init__.
    "pkg/other/__init__.py": "from std_msgs.msg import Bool\n",
    "pkg/other/pure.py": "import os\n",
}


def test_a_pure_module_importing_ros_through_another_module_is_named(tmp_path):
    write_tree(tmp_path, PLANTED)
    modules = read_modules(tmp_path, "pkg")
    assert modules["pkg.pure.a"].internal == {"pkg.pure.b"}
    assert modules["pkg.pure.a"].external == {"json"}
    assert impurities(modules, "pkg", ("pure",), ("other.pure",)) == [
        "pkg.other.pure -> pkg.other: std_msgs.msg",
        "pkg.pure.a -> pkg.pure.b -> pkg.ros_side.c: rclpy.node",
        "pkg.pure.b -> pkg.ros_side.c: rclpy.node",
    ]
    # Without the ROS imports: nothing to name.
    write_tree(tmp_path / "clean", {**PLANTED, "pkg/ros_side/c.py": "import numpy\n",
                                    "pkg/other/__init__.py": ""})
    assert impurities(read_modules(tmp_path / "clean", "pkg"), "pkg", ("pure",),
                      ("other.pure",)) == []


def test_an_import_cycle_is_named(tmp_path):
    write_tree(tmp_path, PLANTED)
    modules = read_modules(tmp_path, "pkg")
    assert [modules[f"pkg.ros_side{name}"].internal for name in ("", ".d", ".e", ".f")] == [
        {"pkg.ros_side.d"}, {"pkg.ros_side.e"}, {"pkg.ros_side.f"}, {"pkg.ros_side"}]
    assert import_cycles(modules) == [["pkg.ros_side", "pkg.ros_side.d", "pkg.ros_side.e",
                                       "pkg.ros_side.f", "pkg.ros_side"]]
    write_tree(tmp_path, {"pkg/ros_side/f.py": "import os\n"})
    assert import_cycles(read_modules(tmp_path, "pkg")) == []
