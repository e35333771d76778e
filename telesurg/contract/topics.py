"""The interface contract: every topic telesurg uses, written once.

For each topic: its name, message type, the QoS its publishers offer (and, where it differs, the
QoS telesurg's readers ask for), the sites it exists at, which way the default bridge
configuration carries it between the sites, whether a site's recording holds it, and who
publishes it. Nodes, the bridge configuration check, the recorder, the playback, the analysis,
the launch files, the demo and the benchmarks take names, types and QoS from here; outside this
module (and the tests) no topic name is written as a string (test_contract.py enforces it).

Names follow CRTK as the dVRK uses them: `measured_` sensed, `setpoint_` what the controller
tracks, `servo_` a streamed command (the latest wins); `_cp` Cartesian pose, `_js` joint state,
`_jp` joint position. Pure Python: no rclpy (telesurg.ros.qos turns a Qos into a QoSProfile).
`python -m telesurg.contract.topics` prints the table as the README shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MASTER, PATIENT = "master", "patient"
#: The two sites, each on its own DDS domain, joined only by their bridges.
SITES = (MASTER, PATIENT)
BOTH = SITES

#: The bridge configuration's two directions (config/bridge.yaml `topics:` sections); a topic
#: crosses in one of them only.
MASTER_TO_PATIENT, PATIENT_TO_MASTER = "master_to_patient", "patient_to_master"
#: The direction each site's bridge sends.
OUTGOING_DIRECTION = {MASTER: MASTER_TO_PATIENT, PATIENT: PATIENT_TO_MASTER}


class Qos(StrEnum):
    """The QoS kinds of the contract; the values are the bridge configuration's `qos` names."""

    #: Best effort, volatile, keep last 1: streamed commands and device samples, the latest
    #: wins and a late one is worthless.
    COMMAND = "command"
    #: Reliable, transient local, keep last 1: states; a late subscriber gets the last value.
    STATE = "state"
    #: Reliable, volatile, keep last 10: events, every one must arrive (state commands,
    #: diagnostics).
    EVENT = "event"
    #: Reliable, volatile, keep last 1: joint commands to ros2_control, whose forward
    #: controllers subscribe reliable (a reliable writer also serves best-effort readers).
    JOINT_COMMAND = "joint_command"
    #: Best effort, volatile, keep last 1, like COMMAND; the bridges carry it as video: each
    #: message (a frame) in fragments with forward error correction, paced, behind commands.
    VIDEO = "video"


_POSE = "geometry_msgs/msg/PoseStamped"
_JOINTS = "sensor_msgs/msg/JointState"
_BOOL = "std_msgs/msg/Bool"
_STRING = "std_msgs/msg/String"
# CRTK's own types, as the dVRK and every CRTK client use them (interfaces/crtk_msgs carries
# their definitions for installs without the crtk_msgs package).
_OPERATING_STATE = "crtk_msgs/msg/OperatingState"
_STRING_STAMPED = "crtk_msgs/msg/StringStamped"
_DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"


@dataclass(frozen=True)
class Topic:
    name: str
    type_name: str            # package/msg/Name
    qos: Qos                  # what its publishers offer
    sites: tuple[str, ...]    # where it exists
    publisher: str            # who publishes it (at each of its sites)
    crossing: str | None = None   # the direction the default bridge configuration carries it
    recorded: bool = True     # held in its sites' recordings
    #: The endoscope's: present only in a session with video (bridges and recorders leave it
    #: out otherwise, so a session without video has no endpoints for it).
    video: bool = False
    #: What telesurg's own readers ask for, if not qos: a state read as a stream (the latest
    #: sample, nothing resent) by the loops that poll it.
    reader_qos: Qos | None = None

    @property
    def read_qos(self) -> Qos:
        return self.reader_qos or self.qos

    @property
    def short_type(self) -> str:
        """package/Name, as docs/design.md and `ros2 topic info` write it."""
        package, _, name = self.type_name.split("/")
        return f"{package}/{name}"


# The master device (a dVRK MTM's CRTK driver, or the virtual surgeon) and its pedals.
MTM_MEASURED_CP = Topic("/mtm/measured_cp", _POSE, Qos.COMMAND, (MASTER,),
                        "master device driver, virtual_surgeon or web_console")
MTM_GRIPPER_MEASURED_JS = Topic("/mtm/gripper/measured_js", _JOINTS, Qos.COMMAND, (MASTER,),
                                "master device driver, virtual_surgeon or web_console")
CONSOLE_CLUTCH = Topic("/console/clutch", _BOOL, Qos.STATE, (MASTER,),
                       "pedals (or virtual_surgeon, web_console)")
CONSOLE_OPERATOR_PRESENT = Topic("/console/operator_present", _BOOL, Qos.STATE, BOTH,
                                 "pedals (or virtual_surgeon, web_console)", MASTER_TO_PATIENT)
# The console and the arm commands it streams.
CONSOLE_FOLLOWING = Topic("/console/following", _BOOL, Qos.STATE, BOTH, "master_console",
                          MASTER_TO_PATIENT)
PSM_SERVO_CP = Topic("/psm/servo_cp", _POSE, Qos.COMMAND, BOTH,
                     "master_console (master site), bridge (patient site)", MASTER_TO_PATIENT)
PSM_JAW_SERVO_JP = Topic("/psm/jaw/servo_jp", _JOINTS, Qos.COMMAND, BOTH,
                         "master_console (master site), bridge (patient site)",
                         MASTER_TO_PATIENT)
# The arm's safety state, commanded by the operator, kept by the safety supervisor.
PSM_STATE_COMMAND = Topic("/psm/state_command", _STRING_STAMPED, Qos.EVENT, BOTH,
                          "operator tools (`telesurg state`, the demo's operator, web_console)",
                          MASTER_TO_PATIENT)
PSM_OPERATING_STATE = Topic("/psm/operating_state", _OPERATING_STATE, Qos.STATE, BOTH,
                            "safety_supervisor; bridged to the master site", PATIENT_TO_MASTER)
SAFETY_STATUS = Topic("/safety/status", _STRING, Qos.STATE, BOTH,
                      "safety_supervisor (one JSON line: state, cause, answer); bridged",
                      PATIENT_TO_MASTER)
# The arm, as the arm controller reports it.
PSM_MEASURED_CP = Topic("/psm/measured_cp", _POSE, Qos.STATE, BOTH,
                        "arm_controller; bridged to the master site", PATIENT_TO_MASTER,
                        reader_qos=Qos.COMMAND)
PSM_SETPOINT_CP = Topic("/psm/setpoint_cp", _POSE, Qos.STATE, (PATIENT,), "arm_controller")
PSM_MEASURED_JS = Topic("/psm/measured_js", _JOINTS, Qos.STATE, (PATIENT,), "arm_controller",
                        reader_qos=Qos.COMMAND)
# ros2_control's interface: the MuJoCo simulator here, Gazebo or a real arm elsewhere.
# The MuJoCo simulator reads the joint commands best effort: a reliable reader stalls behind a
# lost sample until the writer's next heartbeat (seen: the arm frozen on an old command for
# over 100 ms).
FORWARD_POSITION_COMMANDS = Topic("/forward_position_controller/commands",
                                  "std_msgs/msg/Float64MultiArray", Qos.JOINT_COMMAND,
                                  (PATIENT,), "arm_controller (ros2_control convention)",
                                  reader_qos=Qos.COMMAND)
JOINT_STATES = Topic("/joint_states", _JOINTS, Qos.COMMAND, (PATIENT,),
                     "arm_controller's MuJoCo arm, or the simulator "
                     "(joint_state_broadcaster in Gazebo)")
# Health: each site's own, never bridged.
BRIDGE_LINK_STATE = Topic("/bridge/link_state", _DIAGNOSTICS, Qos.STATE, BOTH,
                          "each site's bridge, its own view (a status per link and overall)")
DIAGNOSTICS = Topic("/diagnostics", _DIAGNOSTICS, Qos.EVENT, BOTH,
                    "every node with health to report")
# The stereo endoscope at the patient site (the endoscope node: MuJoCo render, H.264), stamped
# at capture. The compressed frames cross as video; the raw images stay at the patient site.
ENDOSCOPE_LEFT_COMPRESSED, ENDOSCOPE_RIGHT_COMPRESSED = (
    Topic(f"/endoscope/{eye}/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
          Qos.VIDEO, BOTH, "endoscope or endoscope_encoder (patient site), bridge (master site)",
          PATIENT_TO_MASTER, video=True)
    for eye in ("left", "right"))
ENDOSCOPE_LEFT_CAMERA_INFO, ENDOSCOPE_RIGHT_CAMERA_INFO = (
    Topic(f"/endoscope/{eye}/camera_info", "sensor_msgs/msg/CameraInfo", Qos.COMMAND, BOTH,
          "endoscope (patient site), bridge (master site)", PATIENT_TO_MASTER, video=True)
    for eye in ("left", "right"))
ENDOSCOPE_LEFT_IMAGE, ENDOSCOPE_RIGHT_IMAGE = (
    Topic(f"/endoscope/{eye}/image_raw", "sensor_msgs/msg/Image", Qos.COMMAND, BOTH,
          "endoscope with publish_raw or Gazebo's cameras (patient site), endoscope_decoder "
          "while watched (master site)", recorded=False, video=True)
    for eye in ("left", "right"))
#: The master site's decoder lost a frame of an eye (data: "left" or "right") and waits for a
#: keyframe: the endoscope encodes that eye's next frame as one.
ENDOSCOPE_KEYFRAME_REQUEST = Topic(
    "/endoscope/keyframe_request", _STRING, Qos.EVENT, BOTH,
    "endoscope_decoder and web_console (master site), bridge (patient site)", MASTER_TO_PATIENT,
    video=True)

#: The crossing topics in the default bridge configuration's order, which gives each its index
#: on the wire: master_to_patient first, then patient_to_master.
TOPICS: tuple[Topic, ...] = (
    MTM_MEASURED_CP, MTM_GRIPPER_MEASURED_JS, CONSOLE_CLUTCH,
    PSM_SERVO_CP, PSM_JAW_SERVO_JP, PSM_STATE_COMMAND, CONSOLE_FOLLOWING, CONSOLE_OPERATOR_PRESENT,
    ENDOSCOPE_KEYFRAME_REQUEST,
    PSM_MEASURED_CP, PSM_OPERATING_STATE, SAFETY_STATUS,
    ENDOSCOPE_LEFT_COMPRESSED, ENDOSCOPE_RIGHT_COMPRESSED,
    ENDOSCOPE_LEFT_CAMERA_INFO, ENDOSCOPE_RIGHT_CAMERA_INFO,
    ENDOSCOPE_LEFT_IMAGE, ENDOSCOPE_RIGHT_IMAGE,
    PSM_SETPOINT_CP, PSM_MEASURED_JS, FORWARD_POSITION_COMMANDS, JOINT_STATES,
    BRIDGE_LINK_STATE, DIAGNOSTICS,
)
#: Topics every ROS 2 node has by itself: each site publishes its own.
ROS_BUILTIN_TOPICS = frozenset({"/rosout", "/parameter_events"})
#: Topics a bridge must never carry: each site publishes its own, so bridged they would have
#: two publishers at each site.
SITE_LOCAL_TOPICS = frozenset({BRIDGE_LINK_STATE.name, DIAGNOSTICS.name}) | ROS_BUILTIN_TOPICS

_BY_NAME = {topic.name: topic for topic in TOPICS}


def topic_named(name: str) -> Topic | None:
    """The contract's topic of that name, if it is one."""
    return _BY_NAME.get(name)


def site_topics(site: str, video: bool = False) -> dict[str, str]:
    """{name: type} of the topics a site's recording holds, in contract order; the video
    topics only with video."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}: one of {', '.join(SITES)}")
    return {t.name: t.type_name for t in TOPICS
            if site in t.sites and t.recorded and (video or not t.video)}


def is_video_topic(name: str) -> bool:
    """Whether name is one of the contract's video topics."""
    topic = _BY_NAME.get(name)
    return topic is not None and topic.video


#: {site: {name: type}} of every site's recording in a session without video.
SITE_TOPICS = {site: site_topics(site) for site in SITES}


def crossing(direction: str) -> tuple[Topic, ...]:
    """The topics the default bridge configuration carries in direction, in wire order."""
    return tuple(t for t in TOPICS if t.crossing == direction)


def markdown_table() -> str:
    """The contract as the README's topic table."""
    arrows = {MASTER_TO_PATIENT: "master -> patient", PATIENT_TO_MASTER: "patient -> master"}
    rows = ["| topic | type | QoS | sites | crosses the bridge | recorded | published by |",
            "|---|---|---|---|---|---|---|"]
    for t in TOPICS:
        qos = t.qos.value + (f" (read as {t.reader_qos.value})" if t.reader_qos else "")
        rows.append(f"| `{t.name}` | {t.short_type} | {qos} | {', '.join(t.sites)} | "
                    f"{arrows.get(t.crossing, 'no')} | {'yes' if t.recorded else 'no'} | "
                    f"{t.publisher} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
