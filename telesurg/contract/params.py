"""Every node parameter, declared once: type, default, description and valid range.

Nodes declare their ROS parameters from this table, and parameter files are checked against it
before a node starts, so that a typo, a wrong type or an out-of-range value stops the node with a
message naming the key and the file (ROS itself ignores unknown keys silently).
Pure Python: no rclpy import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

#: Parameters rclpy declares on every node by itself.
ROS_BUILTIN_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})


class ConfigError(ValueError):
    """A parameter file or value that telesurg refuses, with where and why."""


@dataclass(frozen=True)
class Param:
    name: str
    default: bool | int | float | str
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def kind(self) -> type:
        return type(self.default)

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None:
            return f"in [{self.low}, {self.high}]"
        return ""

    def check(self, value: object, where: str) -> bool | int | float | str:
        """Return value if it is valid for this parameter, else raise ConfigError naming where."""
        expected = self.kind
        # bool is an int subclass in Python: keep them apart, as ROS does.
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            hint = " (write it with a decimal point)" if expected is float and isinstance(
                value, int) and not isinstance(value, bool) else ""
            raise ConfigError(
                f"{where}: '{self.name}' must be {expected.__name__}, got "
                f"{type(value).__name__} {value!r}{hint}")
        if expected is float and not math.isfinite(value):
            raise ConfigError(f"{where}: '{self.name}' must be finite, got {value!r}")
        if self.low is not None and not self.low <= value <= self.high:
            raise ConfigError(
                f"{where}: '{self.name}' = {value!r} is out of range: must be {self.range_text()}")
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"{where}: '{self.name}' = {value!r} is not valid: must be {self.range_text()}")
        return value


#: The tool tip speed limit, one parameter of two nodes: the arm controller caps its setpoint at
#: it, and the safety supervisor lets the step between two commands grow by it over the time
#: between them. Shared, so that the two cannot disagree.
MAX_TIP_SPEED = Param(
    "max_tip_speed_m_s", 0.1,
    "Tool tip speed limit of the arm's setpoint (surgical motion stays well below); the safety "
    "supervisor's step limit grows by it over the time between two commands.", 0.01, 0.5)

#: How far the two sites' clocks may disagree (they are synchronised with PTP or NTP), one
#: parameter of two nodes: a command stamped further in the future than this is invalid (the
#: safety supervisor pauses the arm on it), and the patient bridge leaves such ages out of its
#: command-age figures, counted apart.
MAX_CLOCK_SKEW = Param(
    "max_clock_skew_ms", 20.0,
    "How far the two sites' clocks may disagree: a command stamped further in the future than "
    "this is invalid (pauses the arm; the bridge counts its age as out of range).", 0.0, 1000.0)

#: The MuJoCo physics of the arm, parameters of two nodes: the simulator node, and the arm
#: controller when it drives the simulation itself (hardware mujoco).
PHYSICS_RATE = Param("physics_rate_hz", 1000.0,
                     "MuJoCo physics steps per second (timestep 1/rate).", 200.0, 5000.0)
URDF_PATH = Param("urdf_path", "", "Arm URDF; empty means the installed description/psm.urdf.")
KEYFRAME_INTERVAL = Param("keyframe_interval_s", 1.0,
                          "Time between H.264 keyframes: the longest a receiver that lost a "
                          "frame waits to show video again.", 0.1, 10.0)
VIDEO_FPS = Param("video_fps", 30.0, "Stereo frames captured (rendered and encoded) per second.",
                  1.0, 60.0)
#: What the arm controller drives: the MuJoCo arm in its own process, or ros2_control's topics.
ARM_HARDWARE = ("mujoco", "ros2_control")

NODE_PARAMETERS: dict[str, tuple[Param, ...]] = {
    "virtual_surgeon": (
        Param("task", "suturing", "Surgical task the virtual surgeon performs.",
              choices=("suturing", "figure8")),
        Param("seed", 1, "Seed of the task's random tremor and timing (same seed, same motion).",
              0, 2**31 - 1),
        # 250 Hz, not a dVRK's 1 kHz: eight Python processes share two cores in the demo.
        Param("rate_hz", 250.0, "Rate of master pose samples, as a haptic device would stream.",
              50.0, 2000.0),
        Param("tremor_amplitude_m", 0.0003, "Amplitude of the added 8-12 Hz hand tremor.",
              0.0, 0.002),
    ),
    "master_console": (
        Param("rate_hz", 250.0,
              "Master device sample rate: one servo command per sample; the tremor filter is "
              "designed for it.", 200.0, 2000.0),
        Param("scale", 0.2, "Master to arm motion scale (0.2 is 5:1).", 0.05, 1.0),
        Param("step_limit_m", 0.002,
              "Largest arm goal step accepted between two commands; a larger one disengages.",
              0.0001, 0.02),
        Param("jaw_rate_rad_s", 2.0, "Jaw speed limit while following.", 0.1, 10.0),
        Param("jaw_engage_rate_rad_s", 0.5, "Jaw speed limit right after an engage.", 0.05, 10.0),
        Param("jaw_engage_ramp_s", 1.0, "How long the slower jaw lasts after an engage.",
              0.0, 5.0),
        Param("gripper_to_jaw", 1.0, "Jaw angle per master gripper angle.", 0.1, 3.0),
        Param("tremor_filter", True, "Filter 8-12 Hz physiological tremor out of master motion."),
        Param("master_timeout_ms", 150.0,
              "Master pose older than this stops following (device or driver silent).",
              5.0, 1000.0),
        Param("arm_timeout_ms", 300.0,
              "Arm pose older than this prevents engaging (arm not reporting).", 10.0, 5000.0),
    ),
    "safety_supervisor": (
        Param("max_command_age_ms", 200.0,
              "A servo command older than this on arrival (console stamp to now) pauses the arm; "
              "about 200 ms is the commonly cited comfortable limit in telesurgery.",
              20.0, 2000.0),
        Param("warn_command_age_ms", 100.0,
              "Command age reported as a warning from here (below max_command_age_ms).",
              10.0, 2000.0),
        Param("command_timeout_ms", 250.0,
              "No servo command for this long while the console is following pauses the arm.",
              20.0, 5000.0),
        Param("link_state_timeout_ms", 300.0,
              "No /bridge/link_state for this long counts as link lost (patient bridge dead).",
              50.0, 5000.0),
        Param("step_limit_mm", 2.0,
              "A commanded tip step larger than this between two commands (plus "
              "max_tip_speed_m_s times the time between them) pauses the arm.", 0.1, 50.0),
        MAX_TIP_SPEED,
        MAX_CLOCK_SKEW,
        Param("joint_limit_margin", 0.02,
              "Fraction of each joint's range from a limit that pauses the arm on entry.",
              0.001, 0.2),
        # Long: the arm controller already stops commanding after 50 ms without joint states;
        # this FAULT is the second line, and must not fire on a process stalled for a second
        # (seen here when a peer killed with SIGKILL left Fast DDS shared-memory ports behind).
        Param("arm_timeout_ms", 1500.0,
              "No /psm/measured_js for this long is a FAULT (arm or controller silent).",
              50.0, 5000.0),
        Param("presence_grace_ms", 150.0,
              "The console reported following without the operator for this long pauses the "
              "arm (the two reports cross the bridge separately).", 10.0, 2000.0),
        Param("heartbeat_rate_hz", 20.0,
              "Rate /psm/operating_state is repeated at (also sent on every change); the arm "
              "controller holds when it stops.", 5.0, 200.0),
    ),
    "arm_controller": (
        Param("hardware", "mujoco",
              "The arm: mujoco (the MuJoCo simulation of the URDF, run by this node, "
              "read-update-write in one tick; /joint_states and "
              "/forward_position_controller/commands still published) or ros2_control "
              "(/joint_states in, /forward_position_controller/commands out: Gazebo, the "
              "simulator node or a real arm).", choices=ARM_HARDWARE),
        Param("rate_hz", 500.0,
              "Control ticks per second: with ros2_control one per /joint_states message "
              "(its rate), with mujoco this node's own.", 100.0, 2000.0),
        PHYSICS_RATE,
        URDF_PATH,
        Param("state_rate_hz", 100.0,
              "Rate of /psm/measured_cp, /psm/setpoint_cp and /psm/measured_js (and, with "
              "hardware mujoco, of the arm's /joint_states).", 10.0, 1000.0),
        Param("command_timeout_ms", 50.0,
              "Servo commands older than this make the arm hold where it is.", 5.0, 1000.0),
        Param("joint_states_timeout_ms", 50.0,
              "Joint states older than this stop the controller commanding (arm silent).",
              5.0, 1000.0),
        Param("max_goal_jump_m", 0.005,
              "A goal farther than this from the current setpoint is refused (arm holds).",
              0.0005, 0.05),
        MAX_TIP_SPEED,
        Param("velocity_scale", 1.0, "Fraction of the URDF joint velocity limits used.",
              0.05, 1.0),
        Param("supervisor_timeout_ms", 250.0,
              "No /psm/operating_state for this long makes the arm hold (supervisor silent).",
              20.0, 5000.0),
        Param("interpolation_max_s", 0.02,
              "Longest time a goal is interpolated over (when commands arrive slowly).",
              0.0, 0.1),
    ),
    "bridge": (
        Param("role", "master", "Which site this bridge serves.", choices=("master", "patient")),
        Param("config_file", "",
              "Bridge configuration (links, key file, topics); empty means the installed "
              "config/bridge.yaml."),
        Param("key_file", "",
              "Pre-shared key file; empty means the key_file of the bridge configuration."),
        Param("link_binds", "",
              "This site's socket per link, 'a=HOST:PORT b=HOST:PORT'; a link not named keeps "
              "the configuration's bind."),
        Param("link_peers", "",
              "The other site's socket per link, 'a=HOST:PORT b=HOST:PORT'; a link not named "
              "keeps the configuration's peer."),
        Param("link_interfaces", "",
              "Network interface per link, 'a=enp3s0 b=wwan0', so each link leaves by its own "
              "technology; a link not named keeps the configuration's."),
        Param("insecure", False,
              "Run without a key file: no authentication, no secrecy. Only for local "
              "experiments; both bridges must say so."),
        Param("link_state_rate_hz", 10.0, "Rate of /bridge/link_state (also sent on change).",
              1.0, 100.0),
        Param("video", False,
              "Carry the endoscope's video topics; off, the bridge has no endpoints for them."),
        MAX_CLOCK_SKEW,
    ),
    "endoscope": (
        VIDEO_FPS,
        Param("width", 640, "Image width per eye, pixels (even).", 64, 1920),
        Param("height", 480, "Image height per eye, pixels (even).", 48, 1080),
        Param("baseline_m", 0.005, "Distance between the two eyes, like a 3D laparoscope's.",
              0.001, 0.02),
        KEYFRAME_INTERVAL,
        Param("publish_raw", False,
              "Also publish /endoscope/*/image_raw at the patient site (about 0.9 MB per "
              "image at 640x480: costs CPU even with nobody listening to the copies)."),
        URDF_PATH,
    ),
    "endoscope_encoder": (
        VIDEO_FPS,
        KEYFRAME_INTERVAL,
    ),
    "web_console": (
        Param("rate_hz", 250.0,
              "Rate of master samples from the page's controls, as the master device would "
              "stream (the master console's tremor filter is designed for 250 Hz).",
              50.0, 2000.0),
        Param("hand_speed_m_s", 0.05,
              "Master hand speed at a full key press or stick (the arm moves this times the "
              "master console's scale).", 0.005, 0.2),
        Param("workspace_half_m", 0.1,
              "The master hand stays within this distance of its start along each axis.",
              0.01, 0.3),
        Param("grip_speed_rad_s", 1.0, "Master gripper opening or closing speed.", 0.1, 10.0),
        Param("state_rate_hz", 10.0, "Rate of the page's state updates.", 1.0, 50.0),
    ),
    "endoscope_decoder": (
        VIDEO_FPS,
        Param("keyframe_request_interval_ms", 200.0,
              "Least time between two keyframe requests for an eye while its decoder waits for "
              "one (about a round trip and a frame).", 10.0, 5000.0),
        Param("decode_unwatched", False,
              "Decode (and ask for keyframes) with nobody watching, as a viewer would: what "
              "`telesurg demo --video` measures. About 1 ms of CPU per 640x480 frame."),
    ),
    "simulator": (
        PHYSICS_RATE,
        Param("publish_rate_hz", 500.0,
              "Rate of /joint_states; the physics steps in between run in one batch.",
              50.0, 2000.0),
        URDF_PATH,
    ),
}


@dataclass(frozen=True)
class Below:
    """A rule between two parameters of one node: lower must stay below upper."""

    lower: str
    upper: str

    def check(self, values: Mapping[str, object], where: str) -> None:
        if not values[self.lower] < values[self.upper]:
            raise ConfigError(f"{where}: '{self.lower}' = {values[self.lower]!r} must be below "
                              f"'{self.upper}' = {values[self.upper]!r}")


#: Rules between parameters of one node, checked like each parameter's own range.
NODE_RULES: dict[str, tuple[Below, ...]] = {
    "safety_supervisor": (Below("warn_command_age_ms", "max_command_age_ms"),),
}


def check_node_rules(node: str, values: Mapping[str, object], where: str) -> None:
    """ConfigError naming where if a node's complete parameter values break one of its rules."""
    for rule in NODE_RULES.get(node, ()):
        rule.check(values, where)


def _shared_parameters() -> dict[Param, tuple[str, ...]]:
    nodes_of: dict[Param, list[str]] = {}
    for node, params in NODE_PARAMETERS.items():
        for param in params:
            nodes_of.setdefault(param, []).append(node)
    return {param: tuple(nodes) for param, nodes in nodes_of.items() if len(nodes) > 1}


#: {parameter: the nodes whose tables hold it} for every Param in more than one table: one
#: parameter of several nodes, which a parameter file must leave at one value for all of them.
SHARED_PARAMETERS = _shared_parameters()


def defaults(node: str) -> dict[str, bool | int | float | str]:
    return {param.name: param.default for param in NODE_PARAMETERS[node]}


def values_of_fields(config_class: type, values: Mapping[str, object]) -> dict[str, object]:
    """Those of a node's parameter values that are named like a field of the dataclass
    config_class: the keyword arguments of a config whose fields are node parameters of the
    same name and unit (the others, not parameters, keep their default)."""
    names = {field.name for field in fields(config_class)}
    return {name: value for name, value in values.items() if name in names}


def check_node_values(node: str, values: dict, where: str) -> dict:
    """Check one node's parameter values against the table; return them."""
    table = {param.name: param for param in NODE_PARAMETERS[node]}
    checked = {}
    for key, value in values.items():
        if key in ROS_BUILTIN_PARAMETERS:
            continue
        if key not in table:
            raise ConfigError(
                f"{where}: unknown parameter '{key}' for node '{node}' "
                f"(known: {', '.join(sorted(table))})")
        checked[key] = table[key].check(value, where)
    return checked


def read_yaml(path: Path, what: str):
    """The YAML document in path; ConfigError naming the file if unreadable or not YAML."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read {what}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


def load_parameter_file(path: str | Path) -> dict[str, dict]:
    """Read and check a ROS 2 parameter file; return {node name: {parameter: value}}.

    Accepts the ROS layout (`node: {ros__parameters: {...}}`, node names with or without a
    namespace, `/**` for every node) and refuses anything that is not telesurg's.
    """
    path = Path(path)
    document = read_yaml(path, "parameter file")
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of node names to ros__parameters")
    result: dict[str, dict] = {}
    for section, body in document.items():
        node = str(section).rstrip("/").rsplit("/", 1)[-1]
        if node != "**" and node not in NODE_PARAMETERS:
            raise ConfigError(
                f"{path}: unknown node '{section}' (known: {', '.join(NODE_PARAMETERS)})")
        if not isinstance(body, dict) or set(body) != {"ros__parameters"}:
            raise ConfigError(f"{path}: '{section}' must hold exactly one key, ros__parameters")
        values = body["ros__parameters"] or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: '{section}.ros__parameters' must be a mapping")
        targets = NODE_PARAMETERS if node == "**" else (node,)
        for target in targets:
            known = {param.name for param in NODE_PARAMETERS[target]} | ROS_BUILTIN_PARAMETERS
            # A wildcard section sets what each node knows; a key no node knows is an error.
            own = {k: v for k, v in values.items() if node != "**" or k in known}
            result.setdefault(target, {}).update(
                check_node_values(target, own, f"{path}: {section}"))
        if node == "**":
            every = set().union(*({p.name for p in ps} for ps in NODE_PARAMETERS.values()))
            unknown = set(values) - every - ROS_BUILTIN_PARAMETERS
            if unknown:
                raise ConfigError(f"{path}: {section}: unknown parameter '{sorted(unknown)[0]}'")
    _check_shared(result, path)
    for node, values in result.items():
        check_node_rules(node, defaults(node) | values, f"{path}: {node}")
    return result


def _check_shared(values: dict[str, dict], path: Path) -> None:
    """ConfigError if a shared parameter ends up different for two of its nodes (a node the
    file does not set it for runs with the default)."""
    for param, nodes in SHARED_PARAMETERS.items():
        given = {node: values.get(node, {}).get(param.name, param.default) for node in nodes}
        if len(set(given.values())) > 1:
            each = ", ".join(
                f"{node} {value!r}{'' if param.name in values.get(node, {}) else ' (default)'}"
                for node, value in given.items())
            raise ConfigError(
                f"{path}: '{param.name}' is one parameter of {' and '.join(nodes)} and must be "
                f"the same for all of them (set it once under /**), got {each}")


def default_parameter_file() -> str:
    """A ROS 2 parameter file with every parameter at its default, each with its description
    and range: how config/telesurg.yaml was made (`python -m telesurg.contract.params`)."""
    lines = ["# Parameters of a telesurg session (ROS 2 parameter file).",
             "# Every parameter, its meaning and valid range are declared once in "
             "telesurg/contract/params.py;",
             "# nodes refuse this file if a key is unknown, a type is wrong or a value is out "
             "of range.",
             "# A parameter of several nodes is set once, under /**; nodes refuse a file that "
             "leaves it different.",
             "# Used by `telesurg demo` and by launch/telesurg.launch.py."]
    sections = {"/**": [(param, f" Used by {' and '.join(nodes)}.")
                        for param, nodes in SHARED_PARAMETERS.items()]}
    own = {node: [(param, "") for param in params if param not in SHARED_PARAMETERS]
           for node, params in NODE_PARAMETERS.items()}
    sections.update({node: params for node, params in own.items() if params})
    for section, params in sections.items():
        lines += ["", f"{section}:", "  ros__parameters:"]
        for param, users in params:
            limits = f" ({param.range_text()})" if param.range_text() else ""
            lines.append(f"    # {param.description}{limits}{users}")
            lines.append(f"    {param.name}: {yaml.safe_dump(param.default).splitlines()[0]}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(default_parameter_file(), end="")
