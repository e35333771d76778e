"""site_container: several telesurg nodes in one process, served from one thread.

    ros2 run telesurg site_container virtual_surgeon master_console bridge \
        --ros-args --params-file config/telesurg.yaml --params-file my_site.yaml

As a ROS 2 component container does for C++ nodes: the nodes are created in the order given and
served together (telesurg.ros.loop.serve), so a message from one to another never leaves the
process and what arrives together costs one wake-up. The ROS arguments apply to every node, so
give a node's own values (the bridge's role and config_file, say) in its section of a parameter
file: a -p override reaches every node, and loses to a section of config/telesurg.yaml that
names the parameter. Ctrl-C or SIGTERM stops them all; a node that fails stops the process.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from telesurg.contract.graph import COMPOSABLE_NODES
from telesurg.ros.node import run_nodes


def parse_node_names(argv: list[str]) -> list[str]:
    """The node names before --ros-args (SystemExit 2 with a usage message if they are bad)."""
    ours = argv[:argv.index("--ros-args")] if "--ros-args" in argv else argv
    parser = argparse.ArgumentParser(
        prog="site_container",
        description="Run several telesurg nodes in one process, served from one thread; ROS "
                    "arguments after --ros-args apply to each node.")
    parser.add_argument("nodes", nargs="+", choices=sorted(COMPOSABLE_NODES), metavar="NODE",
                        help=f"node to create, in order; one of {', '.join(COMPOSABLE_NODES)}")
    names = parser.parse_args(ours).nodes
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        parser.error(f"a node may be given once, got {', '.join(repeated)} more than once")
    return names


def main(args: list[str] | None = None) -> None:
    args = sys.argv if args is None else args
    names = parse_node_names(args[1:])
    creators = [getattr(importlib.import_module(COMPOSABLE_NODES[name].module),
                        COMPOSABLE_NODES[name].node_class) for name in names]
    run_nodes("site_container", creators, args)


if __name__ == "__main__":
    main()
