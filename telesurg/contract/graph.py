"""The telesurg node graph, written once: `telesurg demo` and the launch files both read it.

Pure Python (no rclpy, no launch), so that a launch file on a full ROS 2 install and the demo
on a plain Python machine start exactly the same nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from telesurg.contract.topics import SITES


@dataclass(frozen=True)
class NodeSpec:
    name: str          # ROS node name, also its section in config/telesurg.yaml
    executable: str    # console script installed in lib/telesurg (what `ros2 run` starts)
    module: str        # Python module with main(), for starting it without the console script
    site: str          # "master" (surgeon's side), "patient" (arm's side) or "both"
    description: str
    # The rclpy Node subclass in module, which a site container creates ("" for a process that
    # is not one node).
    node_class: str = ""
    # Scheduling niceness where the nodes share a busy machine (`telesurg demo`). The command
    # path crosses every session process (and a recorder that falls behind loses data), so they
    # share alike at 0; only the video yields to them.
    niceness: int = 0


#: The node that stands in for the master device: a replay or the console page replaces it.
VIRTUAL_SURGEON = "virtual_surgeon"

SESSION_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("safety_supervisor", "safety_supervisor", "telesurg.nodes.safety_supervisor",
             "patient", "CRTK operating state: pauses the arm on link loss, stale or old "
             "commands, jumps, joint limits, presence lost.", "SafetySupervisorNode"),
    NodeSpec("arm_controller", "arm_controller", "telesurg.nodes.arm_controller", "patient",
             "Cartesian servo commands to joint commands, limits, hold when stale; runs the "
             "MuJoCo arm itself unless its hardware is ros2_control.", "ArmControllerNode"),
    NodeSpec("master_console", "master_console", "telesurg.nodes.master_console", "master",
             "Teleoperation mapping: clutch, scale, tremor filter, step limit.",
             "MasterConsoleNode"),
    NodeSpec(VIRTUAL_SURGEON, "virtual_surgeon", "telesurg.nodes.virtual_surgeon", "master",
             "Stands in for a haptic master device and pedals, performing a task.",
             "VirtualSurgeonNode"),
)


#: The links of the default bridge configuration (config/bridge.yaml), in wire order: fiber and
#: 5G, say. The demo emulates one network per link.
DEFAULT_LINKS = ("a", "b")

#: The MuJoCo arm behind ros2_control's topics, for an arm controller whose hardware is
#: ros2_control (where Gazebo or a real arm would be).
SIMULATOR = NodeSpec("simulator", "simulator", "telesurg.nodes.simulator", "patient",
                     "MuJoCo physics of the arm URDF, ros2_control-style interface.",
                     "SimulatorNode")

#: The patient site's stereo endoscope: renders the arm from /joint_states, publishes H.264.
#: Not in SESSION_NODES: it costs about half a core at 640x480 and 30 fps. Below the command
#: path's priority: on two cores it yields to it (at 19 instead, its latency's tail grew by
#: about 5 ms, and the command path's did not shrink).
ENDOSCOPE = NodeSpec("endoscope", "endoscope", "telesurg.nodes.endoscope", "patient",
                     "Stereo endoscope: renders the arm (MuJoCo), encodes H.264 per eye.",
                     "EndoscopeNode", niceness=10)
#: The endoscope's encoding alone, for cameras that publish raw pictures (Gazebo's): at the
#: video's niceness.
ENDOSCOPE_ENCODER = NodeSpec("endoscope_encoder", "endoscope_encoder",
                             "telesurg.nodes.endoscope_encoder", "patient",
                             "H.264 per eye of the pictures on /endoscope/<eye>/image_raw.",
                             "EndoscopeEncoderNode", niceness=ENDOSCOPE.niceness)
#: The master site's half of the video: decodes the endoscope's frames for whoever watches
#: /endoscope/*/image_raw and asks for a keyframe after a loss. With the endoscope only.
ENDOSCOPE_DECODER = NodeSpec("endoscope_decoder", "endoscope_decoder",
                             "telesurg.nodes.endoscope_decoder", "master",
                             "Decodes the endoscope's H.264 for viewers; asks for keyframes.",
                             "EndoscopeDecoderNode", niceness=ENDOSCOPE.niceness)

#: The surgeon's console page (`telesurg console`): shows the session, and a person's keyboard,
#: mouse or gamepad there drive the master topics in place of the virtual surgeon.
WEB_CONSOLE = NodeSpec("web_console", "web_console", "telesurg.nodes.web_console", "master",
                       "The surgeon's console page: endoscope view, arm and link state, state "
                       "commands; the page's controls as the master device.", "WebConsoleNode")

#: The only path between the sites: one per site, with parameter role set to the site.
BRIDGE = NodeSpec("bridge", "bridge", "telesurg.nodes.bridge", "both",
                  "Carries the configured topics to the other site over every link.",
                  "BridgeNode")

#: The nodes that share one process at each site (the site container,
#: telesurg.nodes.site_container), in creation order: a message between them never leaves the
#: process, and what arrives together costs one wake-up. The arm controller keeps a process of
#: its own, so that its hold on stale commands never depends on the supervisor's thread (nor
#: the supervisor's on its); the recorder too, as `ros2 bag record` would.
SITE_CONTAINER_NODES = {"master": ("virtual_surgeon", "master_console", "bridge"),
                        "patient": ("bridge", "safety_supervisor")}
#: Every node a site container can hold, by name.
COMPOSABLE_NODES = {spec.name: spec for spec in (*SESSION_NODES, SIMULATOR, BRIDGE)}
#: The site container's process.
SITE_CONTAINER = NodeSpec("site_container", "site_container", "telesurg.nodes.site_container",
                          "both", "Several telesurg nodes in one process, served from one "
                          "thread.")


def nodes_of_site(site: str) -> tuple[NodeSpec, ...]:
    """The session nodes that run at one site (the bridge comes on top)."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}: one of {', '.join(SITES)}")
    return tuple(spec for spec in SESSION_NODES if spec.site == site)
