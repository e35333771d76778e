"""ament_python package definition for telesurg (colcon and pip alike)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "telesurg"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/description", glob("description/*.urdf")),
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
        ],
    },
)
