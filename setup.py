"""ament_python package definition for telesurg (colcon and pip alike)."""

from glob import glob
from os.path import isfile
from pathlib import Path

from setuptools import Command, find_packages, setup

PACKAGE = "telesurg"
#: Installed whole under share/telesurg: every file in them, whatever its kind.
SHARE_FOLDERS = ("launch", "config", "worlds", "description")


def share(folder: str) -> tuple[str, list[str]]:
    return f"share/{PACKAGE}/{folder}", sorted(path for path in glob(f"{folder}/*")
                                               if isfile(path))


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


class AmentLayout(Command):
    """`setup.py ament_layout --prefix PREFIX` after an editable install into PREFIX (a venv):
    what colcon's --symlink-install adds, so that `ros2 launch telesurg ...`, `ros2 run
    telesurg ...` and get_package_share_directory work: every data file (share/telesurg, the
    ament index entry) linked to its source, and every console script linked into
    PREFIX/lib/telesurg, where ros2 run and launch_ros look."""

    description = "link the data files and executables into PREFIX as colcon lays them out"
    user_options = [("prefix=", None, "the prefix the package is installed in (a venv)")]

    def initialize_options(self):
        self.prefix = None

    def finalize_options(self):
        if not self.prefix:
            raise SystemExit("ament_layout: --prefix PREFIX is required")

    def run(self):
        prefix = Path(self.prefix).resolve()
        for folder, files in self.distribution.data_files:
            for file in files:
                _link(prefix / folder / Path(file).name, Path(file).resolve())
        for script in self.distribution.entry_points["console_scripts"]:
            name = script.split("=")[0].strip()
            if not (prefix / "bin" / name).is_file():
                raise SystemExit(f"ament_layout: {prefix}/bin/{name} is missing: install the "
                                 "package into PREFIX first (pip install -e .)")
            _link(prefix / "lib" / PACKAGE / name, prefix / "bin" / name)


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={"telesurg.console": ["static/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *(share(folder) for folder in SHARE_FOLDERS),
    ],
    install_requires=["setuptools"],
    cmdclass={"ament_layout": AmentLayout},
    zip_safe=True,
    maintainer="telesurg developers",
    maintainer_email="dev@telesurg.org",
    description="Remote robotic surgery over two parallel network links, on ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "telesurg = telesurg.cli:main",
            "virtual_surgeon = telesurg.nodes.virtual_surgeon:main",
            "master_console = telesurg.nodes.master_console:main",
            "arm_controller = telesurg.nodes.arm_controller:main",
            "simulator = telesurg.nodes.simulator:main",
            "bridge = telesurg.nodes.bridge:main",
            "safety_supervisor = telesurg.nodes.safety_supervisor:main",
            "web_console = telesurg.nodes.web_console:main",
            "endoscope = telesurg.nodes.endoscope:main",
            "endoscope_decoder = telesurg.nodes.endoscope_decoder:main",
            "endoscope_encoder = telesurg.nodes.endoscope_encoder:main",
            "site_container = telesurg.nodes.site_container:main",
        ],
    },
)
