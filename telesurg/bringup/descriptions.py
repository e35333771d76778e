"""The LaunchDescriptions of telesurg (imports launch and launch_ros: full ROS 2 installs only).

- site_launch_description("master" | "patient"): one site of a two-machine session, with its
  bridge (launch/master_site.launch.py, launch/patient_site.launch.py);
- session_launch_description(): both sites on one machine, each in its own DDS domain, joined by
  their bridges on loopback as `telesurg demo` joins them (launch/telesurg.launch.py);
- gazebo_launch_description(): Gazebo Sim with the arm under ros2_control, and the patient site
  once the controllers are active (launch/gazebo.launch.py, included by the other two with
  sim:=gazebo).

The node lists come from telesurg.contract.graph, the files, controllers and the recording
command from telesurg.bringup.plan (pure, tested without launch).
"""

import tempfile
from datetime import datetime
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    ExecuteProcess,
    GroupAction,
    IncludeLaunchDescription,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
    SetLaunchConfiguration,
)
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import (
    EnvironmentVariable,
    EqualsSubstitution,
    LaunchConfiguration,
    NotEqualsSubstitution,
    TextSubstitution,
)
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from telesurg.bridge.config import LINK_OVERRIDES
from telesurg.bridge.wire import write_key
from telesurg.bringup import plan as support
from telesurg.console.options import DEFAULT_BIND, DEFAULT_PORT
from telesurg.contract.graph import (
    BRIDGE,
    DEFAULT_LINKS,
    ENDOSCOPE,
    ENDOSCOPE_DECODER,
    ENDOSCOPE_ENCODER,
    VIRTUAL_SURGEON,
    WEB_CONSOLE,
    nodes_of_site,
)
from telesurg.contract.resources import FASTDDS_PROFILE_VARIABLE
from telesurg.contract.topics import SITES

#: What the launch arguments of each link of the installed config/bridge.yaml set.
HELP = {"bind": "this site's HOST:PORT on link {link}",
        "peer": "the other site's HOST:PORT on link {link}",
        "interface": "network interface link {link} leaves by (e.g. enp3s0 or wwan0)"}
#: The bridge's launch arguments, passed on to gazebo.launch.py.
BRIDGE_ARGUMENTS = ("bridge_config", "key_file", "video",
                    *(f"link_{link}_{part}" for link in DEFAULT_LINKS
                      for part in LINK_OVERRIDES.values()))


def share_file(file: support.ShareFile) -> str:
    """The installed path of a file named in telesurg.bringup.plan."""
    return file.path(get_package_share_directory(file.package))


def _flag(name: str, default: str, description: str) -> DeclareLaunchArgument:
    return DeclareLaunchArgument(name, default_value=default, choices=["true", "false"],
                                 description=description)


def _sim_is(value: str) -> IfCondition:
    return IfCondition(EqualsSubstitution(LaunchConfiguration("sim"), value))


# Launch arguments ---------------------------------------------------------------------------

def middleware_profile() -> SetEnvironmentVariable:
    """telesurg's Fast DDS profile for every process launched, unless the environment names
    one: UDP only, so that a killed process cannot stall the others (a shared-memory port's
    mutex the killed process held blocked its peers' publish about 1 s)."""
    return SetEnvironmentVariable(FASTDDS_PROFILE_VARIABLE, EnvironmentVariable(
        FASTDDS_PROFILE_VARIABLE, default_value=share_file(support.FASTDDS_PROFILE)))


def config_arguments() -> list[DeclareLaunchArgument]:
    return [DeclareLaunchArgument(
        "config", default_value=share_file(support.PARAMS),
        description="ROS 2 parameter file for the telesurg nodes (see config/telesurg.yaml)")]


def bridge_arguments() -> list[DeclareLaunchArgument]:
    links = [DeclareLaunchArgument(f"link_{link}_{part}", default_value="",
                                   description=HELP[part].format(link=link)
                                   + "; empty keeps bridge_config's")
             for link in DEFAULT_LINKS for part in LINK_OVERRIDES.values()]
    return [
        DeclareLaunchArgument(
            "bridge_config", default_value=share_file(support.BRIDGE_CONFIG),
            description="Bridge configuration: link addresses (both sites), key file, topics"),
        DeclareLaunchArgument(
            "key_file", default_value="",
            description="Pre-shared key file (telesurg keygen), the same at both sites; empty "
                        "keeps bridge_config's key_file"),
        *links,
        # The bridges carry the video topics only with it: the same at both sites.
        _flag("video", "false",
              "true: the stereo endoscope at the patient site (MuJoCo render, H.264 per eye; "
              "about half a core), carried by the bridges, decoded at the master site by "
              "endoscope_decoder on /endoscope/<eye>/image_raw"),
    ]


def sim_argument() -> DeclareLaunchArgument:
    return DeclareLaunchArgument(
        "sim", default_value=support.DEFAULT_SIMULATOR, choices=list(support.SIMULATORS),
        description="The arm: mujoco (the MuJoCo arm, run by the arm controller), gazebo "
                    "(Gazebo Sim with ros2_control, gazebo.launch.py) or none (a real arm "
                    "whose ros2_control publishes /joint_states and takes "
                    "/forward_position_controller/commands)")


def rviz_argument() -> DeclareLaunchArgument:
    return _flag("rviz", "false", "true: RViz with config/telesurg.rviz (the arm and its frames)")


def record_arguments(label: str) -> list[DeclareLaunchArgument]:
    return [
        _flag("record", "false",
              "true: ros2 bag record (MCAP) of the contract topics of this launch's site(s) "
              "into record_dir"),
        DeclareLaunchArgument(
            "record_dir", default_value=support.default_record_dir(label, datetime.now()),
            description="Directory the recording is written to; it must not exist (the "
                        "default is new at every launch)"),
    ]


# Actions ------------------------------------------------------------------------------------

def session_nodes(specs, *, use_sim_time: bool = False, condition=None,
                  parameters: dict | None = None) -> list[Node]:
    """One Node per graph NodeSpec, with the parameter file (and sim time for Gazebo, and the
    given parameters)."""
    extra = [{"use_sim_time": True}] if use_sim_time else []
    extra += [parameters] if parameters else []
    return [Node(package="telesurg", executable=spec.executable, name=spec.name,
                 parameters=[LaunchConfiguration("config"), *extra], output="screen",
                 condition=condition)
            for spec in specs]


def bridge_node(site: str, *, use_sim_time: bool = False) -> Node:
    """The site's bridge, the only path to the other site."""
    # Each override parameter is 'a=VALUE b=VALUE'; an empty VALUE keeps the file's. Typed as
    # strings, so that an empty or numeric-looking value is not read as YAML.
    overrides = {parameter: ParameterValue(
        [part for i, link in enumerate(DEFAULT_LINKS) for part in (
            TextSubstitution(text=f"{' ' if i else ''}{link}="),
            LaunchConfiguration(f"link_{link}_{field}"))], value_type=str)
        for parameter, field in LINK_OVERRIDES.items()}
    parameters = {"role": site,
                  "video": ParameterValue(LaunchConfiguration("video"), value_type=bool),
                  "config_file": LaunchConfiguration("bridge_config"),
                  "key_file": ParameterValue(LaunchConfiguration("key_file"), value_type=str),
                  **overrides}
    extra = [{"use_sim_time": True}] if use_sim_time else []
    return Node(package="telesurg", executable=BRIDGE.executable, name=BRIDGE.name,
                parameters=[parameters, *extra], output="screen")


def console_argument() -> DeclareLaunchArgument:
    return _flag("console", "false",
                 f"true: the console page (web_console: serves {DEFAULT_BIND}:{DEFAULT_PORT}, "
                 "its URL with the token in the log) in place of the virtual surgeon: a person "
                 "drives the arm with the page's keyboard, mouse or gamepad")


def master_nodes() -> list[Node]:
    """The master site's nodes; with console:=true the console page in place of the virtual
    surgeon (two master devices would fight)."""
    console = LaunchConfiguration("console")
    specs = nodes_of_site("master")
    return [*session_nodes([spec for spec in specs if spec.name != VIRTUAL_SURGEON]),
            *session_nodes([spec for spec in specs if spec.name == VIRTUAL_SURGEON],
                           condition=UnlessCondition(console)),
            *session_nodes([WEB_CONSOLE], condition=IfCondition(console))]


def video_decoder() -> Node:
    """The master site's endoscope_decoder, with video:=true."""
    (node,) = session_nodes([ENDOSCOPE_DECODER],
                            condition=IfCondition(LaunchConfiguration("video")))
    return node


def robot_state_publisher(*, use_sim_time: bool, condition=None,
                          optional: bool = False) -> Node | LogInfo:
    """The arm's URDF on robot_description (which Gazebo's spawn and gz_ros2_control read)
    and its frames on /tf from /joint_states. Optional (only RViz needs it): where it is not
    installed, a line says so and the site runs without it."""
    if optional and not support.installed("robot_state_publisher"):
        return LogInfo(msg="robot_state_publisher is not installed: no robot_description or "
                           "/tf for RViz (the telesurg nodes do not need them)",
                       condition=condition)
    description = support.robot_description(get_package_share_directory(support.PACKAGE))
    return Node(package="robot_state_publisher", executable="robot_state_publisher",
                parameters=[{"robot_description": ParameterValue(description, value_type=str),
                             "use_sim_time": use_sim_time}],
                output="screen", condition=condition)


def rviz_node() -> Node | LogInfo:
    """RViz when rviz:=true; where it is not installed, a line says so."""
    condition = IfCondition(LaunchConfiguration("rviz"))
    if not support.installed("rviz2"):
        return LogInfo(msg="rviz:=true but rviz2 is not installed: no RViz", condition=condition)
    return Node(package="rviz2", executable="rviz2",
                arguments=["-d", share_file(support.RVIZ_CONFIG)],
                parameters=[{"use_sim_time": ParameterValue(
                    EqualsSubstitution(LaunchConfiguration("sim"), "gazebo"), value_type=bool)}],
                condition=condition, output="screen")


def recorder(sites, subdirectory: str = "") -> ExecuteProcess | LogInfo:
    """`ros2 bag record` of the sites' contract topics into record_dir (or its subdirectory),
    when record:=true; where rosbag2's `ros2 bag` is not installed, a line says so and names
    telesurg's own recorder."""
    condition = IfCondition(LaunchConfiguration("record"))
    if not support.installed(support.ROS2_BAG_PACKAGE):
        return LogInfo(msg="record:=true but ros2 bag (rosbag2) is not installed: nothing is "
                           "recorded by this launch; `ros2 run telesurg telesurg record "
                           "--site SITE --out DIR` records a site's contract topics "
                           f"({', '.join(sites)})",
                       condition=condition)
    output = [LaunchConfiguration("record_dir"), *([f"/{subdirectory}"] if subdirectory else [])]
    # The video topics too: `ros2 bag record` subscribes to a listed topic only once it has a
    # publisher, so without video:=true they cost nothing.
    command = support.record_command(support.contract_topics(sites, video=True), output)
    return ExecuteProcess(cmd=command, condition=condition, output="screen")


def patient_actions() -> list:
    """The patient site for each value of `sim`: the arm controller running the MuJoCo arm
    (mujoco), Gazebo (gazebo.launch.py, which starts the site's nodes on sim time once the
    controllers are active) or neither (none: the arm controller on ros2_control's topics);
    with or without its bridge."""
    controller, others = support.split_arm_controller(nodes_of_site("patient"))
    # The endoscope renders the MuJoCo arm; with Gazebo, the world's cameras stand in for it.
    at_once = [*session_nodes(others), bridge_node("patient"),
               *session_nodes([ENDOSCOPE], condition=IfCondition(LaunchConfiguration("video")))]
    gazebo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(share_file(support.GAZEBO_LAUNCH)),
        launch_arguments=[(name, LaunchConfiguration(name))
                          for name in ("config", *BRIDGE_ARGUMENTS)],
        condition=_sim_is("gazebo"))
    return [
        *session_nodes([controller], condition=_sim_is("mujoco"),
                       parameters={"hardware": support.ARM_HARDWARE_OF_SIM["mujoco"]}),
        *session_nodes([controller], condition=_sim_is("none"),
                       parameters={"hardware": support.ARM_HARDWARE_OF_SIM["none"]}),
        robot_state_publisher(use_sim_time=False, condition=_sim_is("mujoco"), optional=True),
        GroupAction(at_once, condition=IfCondition(
            NotEqualsSubstitution(LaunchConfiguration("sim"), "gazebo"))),
        gazebo,
        rviz_node(),
    ]


def _after_success(what: str, actions: list):
    """OnProcessExit's on_exit: the actions if the process succeeded, else stop the launch
    (the patient site never runs against an arm whose controllers are not active)."""
    def on_exit(event, context):
        if event.returncode == 0:
            return actions
        reason = f"{what} failed (exit code {event.returncode}): the patient site is not started"
        return [LogInfo(msg=reason), EmitEvent(event=Shutdown(reason=reason))]
    return on_exit


# Launch descriptions ------------------------------------------------------------------------

def site_launch_description(site: str) -> LaunchDescription:
    """One site of a two-machine session: its nodes (telesurg.contract.graph), its bridge, the
    patient site's simulation, and the recording of its contract topics."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}: one of {', '.join(SITES)}")
    if site == "patient":
        arguments = [sim_argument(), rviz_argument()]
        actions = patient_actions()
    else:
        arguments = [console_argument()]
        actions = [*master_nodes(), bridge_node(site), video_decoder()]
    return LaunchDescription([
        *config_arguments(),
        *bridge_arguments(),
        *arguments,
        *record_arguments(site),
        middleware_profile(),
        *actions,
        recorder([site]),
    ])


def _session_domains_and_key(context) -> list:
    """The patient site's domain (patient_domain, or the master's + 1) and, unless key_file
    names one, a new key for this launch only: both bridges are in it."""
    master = int(context.environment.get("ROS_DOMAIN_ID") or 0)
    patient = LaunchConfiguration("patient_domain").perform(context) or str(master + 1)
    if patient == str(master):
        raise ValueError(f"patient_domain:={patient} is the master site's domain "
                         "(ROS_DOMAIN_ID): the sites must be joined by their bridges only")
    actions = [SetLaunchConfiguration("patient_domain", patient),
               LogInfo(msg=f"master site in DDS domain {master}, patient site in {patient}")]
    if not LaunchConfiguration("key_file").perform(context):
        key = Path(tempfile.mkdtemp(prefix="telesurg_launch_")) / "bridge.key"
        write_key(key)
        actions.append(SetLaunchConfiguration("key_file", str(key)))
    return actions


def session_launch_description() -> LaunchDescription:
    """Both sites on one machine, each in its own DDS domain (the master site in ROS_DOMAIN_ID),
    joined by their bridges over the default bridge configuration's links (loopback)."""
    return LaunchDescription([
        *config_arguments(),
        *bridge_arguments(),
        sim_argument(),
        rviz_argument(),
        console_argument(),
        *record_arguments("session"),
        DeclareLaunchArgument(
            "patient_domain", default_value="",
            description="DDS domain of the patient site; empty: ROS_DOMAIN_ID + 1"),
        middleware_profile(),
        OpaqueFunction(function=_session_domains_and_key),
        *master_nodes(),
        bridge_node("master"),
        video_decoder(),
        recorder(["master"], "master"),
        GroupAction([
            SetEnvironmentVariable("ROS_DOMAIN_ID", LaunchConfiguration("patient_domain")),
            *patient_actions(), recorder(["patient"], "patient")], scoped=True),
    ])


def gazebo_launch_description() -> LaunchDescription:
    """Gazebo Sim with the world, robot_state_publisher, the arm spawned from
    robot_description, the bridge of /clock and of the endoscope's cameras, and the controller
    spawners one after the other; once the last controller is active, the patient site's nodes
    on sim time (with video:=true, the endoscope_encoder of the cameras' pictures too)."""
    controller, others = support.split_arm_controller(nodes_of_site("patient"))
    site = [*session_nodes(others, use_sim_time=True),
            *session_nodes([controller], use_sim_time=True,
                           parameters={"hardware": support.ARM_HARDWARE_OF_SIM["gazebo"]}),
            bridge_node("patient", use_sim_time=True),
            # The world's stereo camera makes the pictures; the encoder makes them video.
            *session_nodes([ENDOSCOPE_ENCODER], use_sim_time=True,
                           condition=IfCondition(LaunchConfiguration("video")))]
    spawn = Node(package="ros_gz_sim", executable="create",
                 arguments=support.spawn_arguments(), output="screen")
    spawners = [Node(package="controller_manager", executable="spawner",
                     arguments=support.spawner_arguments(name), output="screen")
                for name in support.CONTROLLERS]
    steps = [spawn, *spawners]
    names = ["spawning the arm", *(f"spawning {name}" for name in support.CONTROLLERS)]
    # Each step starts when the one before has succeeded; the site once the last has.
    follow = [*([spawner] for spawner in spawners), site]
    chain = [RegisterEventHandler(OnProcessExit(target_action=step,
                                                on_exit=_after_success(name, then)))
             for step, name, then in zip(steps, names, follow, strict=True)]
    return LaunchDescription([
        *config_arguments(),
        *bridge_arguments(),
        DeclareLaunchArgument("world", default_value=share_file(support.WORLD),
                              description="Gazebo world (SDF) the arm is spawned into"),
        middleware_profile(),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(share_file(support.GZ_SIM_LAUNCH)),
            launch_arguments=[("gz_args", ["-r ", LaunchConfiguration("world")]),
                              ("on_exit_shutdown", "true")]),
        robot_state_publisher(use_sim_time=True),
        Node(package="ros_gz_bridge", executable="parameter_bridge",
             arguments=list(support.GAZEBO_BRIDGES), output="screen"),
        *chain,
        spawn,
    ])

