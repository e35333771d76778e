"""The telesurg node graph, written once: `telesurg demo` and the launch files both read it.

Pure Python (no rclpy, no launch), so that a launch file on a full ROS 2 install and the demo
on a plain Python machine start exactly the same nodes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeSpec:
    name: str          # ROS node name, also its section in config/telesurg.yaml
    executable: str    # console script installed in lib/telesurg (what `ros2 run` starts)
    module: str        # Python module with main(), for starting it without the console script
    site: str          # "master" (surgeon's side), "patient" (arm's side) or "both"
    description: str
    # Scheduling niceness where the nodes share a busy machine (`telesurg demo`): the bridge,
    # the safety supervisor and the arm's loop come first, as on a real-time system.
    niceness: int = 0


SESSION_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("simulator", "simulator", "telesurg.nodes.simulator", "patient",
             "MuJoCo physics of the arm URDF, ros2_control-style interface.", niceness=-5),
    NodeSpec("safety_supervisor", "safety_supervisor", "telesurg.nodes.safety_supervisor",
             "patient", "CRTK operating state: pauses the arm on link loss, stale or old "
             "commands, jumps, joint limits, presence lost.", niceness=-10),
    NodeSpec("arm_controller", "arm_controller", "telesurg.nodes.arm_controller", "patient",
             "Cartesian servo commands to joint commands, limits, hold when stale.",
             niceness=-5),
    NodeSpec("master_console", "master_console", "telesurg.nodes.master_console", "master",
             "Teleoperation mapping: clutch, scale, tremor filter, step limit."),
    NodeSpec("virtual_surgeon", "virtual_surgeon", "telesurg.nodes.virtual_surgeon", "master",
             "Stands in for a haptic master device and pedals, performing a task."),
)


#: The only path between the sites: one per site, with parameter role set to the site.
BRIDGE = NodeSpec("bridge", "bridge", "telesurg.nodes.bridge", "both",
                  "Carries the configured topics to the other site over every link.",
                  niceness=-10)

SITES = ("master", "patient")


def nodes_of_site(site: str) -> tuple[NodeSpec, ...]:
    """The session nodes that run at one site (the bridge comes on top)."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}: one of {', '.join(SITES)}")
    return tuple(spec for spec in SESSION_NODES if spec.site == site)


_POSE = "geometry_msgs/msg/PoseStamped"
_JOINTS = "sensor_msgs/msg/JointState"
_BOOL = "std_msgs/msg/Bool"
_STRING = "std_msgs/msg/String"
_DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"
#: Topics both sites have: the commands as the bridges carry them, the safety states and the
#: bridge's own view of the links.
_BOTH_SITES = {
    "/psm/servo_cp": _POSE,
    "/psm/jaw/servo_jp": _JOINTS,
    "/psm/state_command": _STRING,
    "/psm/operating_state": _STRING,
    "/psm/measured_cp": _POSE,
    "/console/following": _BOOL,
    "/console/operator_present": _BOOL,
    "/safety/status": _STRING,
    "/bridge/link_state": _DIAGNOSTICS,
    "/diagnostics": _DIAGNOSTICS,
}
#: The contract topics (DESIGN.md) that each site's recording holds.
SITE_TOPICS = {
    "master": {
        "/mtm/measured_cp": _POSE,
        "/mtm/gripper/measured_js": _JOINTS,
        "/console/clutch": _BOOL,
        **_BOTH_SITES,
    },
    "patient": {
        **_BOTH_SITES,
        "/psm/setpoint_cp": _POSE,
        "/psm/measured_js": _JOINTS,
        "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray",
        "/joint_states": _JOINTS,
    },
}
