"""What every telesurg node shares: parameter declaration from the one table, and a main that
serves the nodes (telesurg.ros.loop) and exits cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import faulthandler
import gc
import signal
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from telesurg import STARTED_BY_PID
from telesurg.contract.params import (
    NODE_PARAMETERS,
    ConfigError,
    check_node_rules,
    load_parameter_file,
)
from telesurg.ros.loop import serve
from telesurg.session.processes import die_with_parent, teardown_limit

#: How long a thread holding the interpreter lock keeps a waiting one waiting (Python's default
#: is 5 ms): a bridge's receive thread, woken by a datagram or a link deadline, must not wait
#: out its node loop's work, nor the loop wait out the receive thread's.
THREAD_SWITCH_INTERVAL_S = 0.0005


def declare_parameters(node: Node, table_name: str) -> SimpleNamespace:
    """Declare the node's parameters from telesurg.contract.params with descriptions and ranges."""
    values = {}
    for param in NODE_PARAMETERS[table_name]:
        descriptor = ParameterDescriptor(description=param.description, read_only=True)
        if param.kind is float and param.low is not None:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=param.low, to_value=param.high, step=0.0)]
        elif param.kind is int and param.low is not None:
            descriptor.integer_range = [
                IntegerRange(from_value=int(param.low), to_value=int(param.high), step=1)]
        if param.choices:
            descriptor.additional_constraints = param.range_text()
        value = node.declare_parameter(param.name, param.default, descriptor).value
        # Catches what rclpy does not check itself (choices) for -p overrides too.
        values[param.name] = param.check(value, f"node '{node.get_name()}'")
    check_node_rules(table_name, values, f"node '{node.get_name()}'")
    return SimpleNamespace(**values)


def parameter_files(args: list[str]) -> list[str]:
    """The --params-file paths among ROS arguments."""
    files = []
    in_ros_args = False
    for index, arg in enumerate(args):
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg == "--params-file" and index + 1 < len(args):
            files.append(args[index + 1])
    return files


def run_node(node_name: str, create: Callable[[], Node], args: list[str] | None = None) -> None:
    """Check parameter files, create the node, serve it (its NodeLoop, node.loop) until
    Ctrl-C/SIGTERM, shut down cleanly.

    A configuration error exits with status 2 and a one-line message naming key and file.
    """
    run_nodes(node_name, [create], args)


def run_nodes(process_name: str, creators: list[Callable[[], Node]],
              args: list[str] | None = None) -> None:
    """run_node for several nodes in one process (a composition): created in order, served
    together from one thread (telesurg.ros.loop.serve), destroyed in reverse order. The ROS
    arguments apply to each of them, as in a ROS 2 container: a parameter file gives each node
    its own section."""
    args = sys.argv if args is None else args
    # Whatever started this process (ros2 launch, ros2 run, telesurg demo) may die without
    # stopping it, even by SIGKILL, or may have died while this one imported: then it stops
    # too, never running on as an orphan.
    die_with_parent(STARTED_BY_PID)
    # A crash in native code (rclpy, the middleware, MuJoCo) leaves the Python stacks of every
    # thread in the node's log, not just a signal number.
    faulthandler.enable()
    try:
        for path in parameter_files(args):
            load_parameter_file(path)
    except ConfigError as error:
        _exit_config_error(process_name, error)
    rclpy.init(args=args)
    nodes = []
    try:
        for create in creators:
            nodes.append(create())
        freeze_start_up_objects()
        default_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(THREAD_SWITCH_INTERVAL_S)
        try:
            serve([node.loop for node in nodes])
        finally:
            # Only serving needs it; the teardown runs as rclpy's own does.
            sys.setswitchinterval(default_switch_interval)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as error:
        _exit_config_error(process_name, error)
    except RuntimeError:
        # A take interrupted by the shutdown that Ctrl-C/SIGTERM started is part of a clean
        # stop (the context may be marked shut down a moment after the take fails); any other
        # runtime error is a real failure.
        if not _context_shuts_down(within_s=0.5):
            raise
    finally:
        # A terminal's Ctrl-C reaches every process of the launch, and launch then sends its
        # own SIGINT: the second must not cut the teardown short (exit by signal, logged by
        # launch as a node that died).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # A teardown that hangs (now and then rcl's node destroy does not return, past SIGINT
        # and SIGTERM) leaves every thread's stack in the log, then ends the process.
        with teardown_limit():
            for node in reversed(nodes):
                node.destroy_node()
            rclpy.try_shutdown()


def freeze_start_up_objects() -> None:
    """Exempt everything made at start-up from the garbage collector's full passes.

    A node process holds a few hundred thousand long-lived objects (message classes, numpy,
    MuJoCo, rclpy); a full collection walks them all: measured 35-76 ms with the whole loop
    stopped, now and then during a session - a stall as long as the link timeout. After
    gc.freeze() the full passes walk only what was made since (gc docs: "Freeze all the objects
    tracked by the garbage collector; move them to a permanent generation")."""
    gc.collect()
    gc.freeze()


def _context_shuts_down(within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while rclpy.ok():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _exit_config_error(node_name: str, error: ConfigError) -> None:
    print(f"{node_name}: configuration error: {error}", file=sys.stderr, flush=True)
    sys.exit(2)
