"""ament_python package definition for telesurg (colcon and pip alike)."""

from glob import glob
from os.path import isfile

from setuptools import find_packages, setup

PACKAGE = "telesurg"
#: Installed whole under share/telesurg: every file in them, whatever its kind.
SHARE_FOLDERS = ("launch", "config", "worlds", "description")


def share(folder: str) -> tuple[str, list[str]]:
    return f"share/{PACKAGE}/{folder}", sorted(path for path in glob(f"{folder}/*")
                                               if isfile(path))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *(share(folder) for folder in SHARE_FOLDERS),
    ],
    install_requires=["setuptools"],
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
            "site_container = telesurg.nodes.site_container:main",
        ],
    },
)
