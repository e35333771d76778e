"""Multi-process: `telesurg record` as a real process records what this test process publishes
on the master site's contract topics with the contract's QoS. Stopped by SIGTERM it closes a
bag holding every reliable message and nearly every best-effort one, with the offered QoS;
killed with SIGKILL it leaves a bag that still reads, short of at most its last second."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
import yaml
from crtk_msgs.msg import OperatingState, StringStamped
from geometry_msgs.msg import PoseStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.interfaces import QosDurability, QosReliability
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from telesurg.bags.storage import BagReader
from telesurg.contract.topics import Qos
from telesurg.ros.qos import qos_profile

# Tier (setup.cfg markers): `telesurg record` processes and a ROS context on a DDS domain.
pytestmark = pytest.mark.multiprocess

DISCOVERY_TIMEOUT_S = 20.0  # discovery takes 0.5-3.5 s here; the recorder also imports rclpy
STOP_TIMEOUT_S = 20.0
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
#: Master contract topics published here: (type, QoS as the site's publishers offer it).
TOPICS = {
    "/mtm/measured_cp": (PoseStamped, qos_profile(Qos.COMMAND)),
    "/mtm/gripper/measured_js": (JointState, qos_profile(Qos.COMMAND)),
    "/console/clutch": (Bool, qos_profile(Qos.STATE)),
    "/psm/operating_state": (OperatingState, qos_profile(Qos.STATE)),
    "/psm/state_command": (StringStamped, COMMAND_QOS),
}
STREAMS = ("/mtm/measured_cp", "/mtm/gripper/measured_js")
RELIABLE = ("/console/clutch", "/psm/operating_state", "/psm/state_command")
TICK_S = 0.002  # the device at 500 Hz; the gripper every other tick, states every 25th
WARM_UP = "warm-up"


def message(topic: str, i: int, warm_up: bool = False):
    """The i-th message of topic, carrying i in its values (warm-up ones are marked)."""
    tag = WARM_UP if warm_up else str(i)
    if topic == "/mtm/measured_cp":
        pose = PoseStamped()
        pose.header.frame_id = tag
        pose.pose.position.x, pose.pose.orientation.w = i * 1e-4, 1.0
        return pose
    if topic == "/mtm/gripper/measured_js":
        return JointState(name=["jaw", tag], position=[i * 1e-3])
    if topic == "/console/clutch":
        return Bool(data=True if warm_up else i % 2 == 1)  # the test's run starts with False
    text = WARM_UP if warm_up else f"{topic[5:]} {i}"
    if topic == "/psm/operating_state":
        return OperatingState(state=text)
    return StringStamped(string=text)


def value(topic: str, data: bytes):
    """What message() put in: its index or the Bool; None for a warm-up message."""
    decoded = deserialize_message(data, TOPICS[topic][0])
    if topic == "/console/clutch":
        return decoded.data
    if topic == "/mtm/measured_cp":
        tag = decoded.header.frame_id
        position = decoded.pose.position.x
    elif topic == "/mtm/gripper/measured_js":
        tag = decoded.name[1]
        (position,) = decoded.position
    else:
        text = decoded.state if topic == "/psm/operating_state" else decoded.string
        tag = text.rsplit(" ", 1)[-1]
        assert text == WARM_UP or text == f"{topic[5:]} {tag}"
    if tag == WARM_UP:
        return None
    if topic in STREAMS:
        assert position == int(tag) * (1e-4 if topic == "/mtm/measured_cp" else 1e-3)
    return int(tag)


def run_values(topic: str, messages: list[tuple[int, bytes]]) -> list:
    """The values of the test's run among a topic's recorded messages, after the warm-up
    messages (all of which come first; the run's clutch starts with False)."""
    values = [value(topic, data) for _, data in messages]
    warm_up = True if topic == "/console/clutch" else None
    first = next((k for k, v in enumerate(values) if v != warm_up), len(values))
    if topic != "/console/clutch":
        assert None not in values[first:], (topic, values)
    assert first >= 1 or topic in STREAMS, topic  # the warm-up was heard
    return values[first:]


class Devices:
    """This test process as the master site's devices and console, on the test's domain."""

    def __init__(self, domain: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("recording_test_devices", context=self.context)
        self.publishers = {topic: self.node.create_publisher(kind, topic, qos)
                           for topic, (kind, qos) in TOPICS.items()}
        self.sent: dict[str, list[tuple[int, object]]] = {topic: [] for topic in TOPICS}

    def publish(self, topic: str, i: int) -> None:
        sent = message(topic, i)
        self.publishers[topic].publish(sent)
        self.sent[topic].append((time.time_ns(), sent.data if topic == "/console/clutch" else i))

    def warm_up(self) -> None:
        for topic, publisher in self.publishers.items():
            publisher.publish(message(topic, 0, warm_up=True))

    def run(self, seconds: float) -> None:
        """The test's messages: a stream at 500 Hz and states at 20 Hz for seconds."""
        start = time.monotonic()
        tick = 0
        while time.monotonic() - start < seconds:
            self.publish("/mtm/measured_cp", tick)
            if tick % 2 == 0:
                self.publish("/mtm/gripper/measured_js", tick // 2)
            if tick % 25 == 0:
                for topic in RELIABLE:
                    self.publish(topic, tick // 25)
            tick += 1
            delay = start + tick * TICK_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def wait_until(condition, what: str, recorder: subprocess.Popen, timeout_s: float,
               action=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert recorder.poll() is None, f"the recorder exited ({recorder.returncode})"
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        if action:
            action()
        time.sleep(0.05)


def recorded_topics(bag: Path) -> set[str]:
    """Topics in the bag's metadata.yaml as its recorder last checkpointed it."""
    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return set()
    return {t["topic_metadata"]["name"]
            for t in info["rosbag2_bagfile_information"]["topics_with_message_count"]}


def start_recorder(bag: Path, env: dict, tmp_path: Path, storage: str) -> subprocess.Popen:
    with (tmp_path / "record.out").open("w") as out, (tmp_path / "record.err").open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "telesurg.cli", "record", "--site",
                                 "master", "--out", str(bag), "--storage", storage], env=env,
                                stdout=out, stderr=err)


def record(tmp_path: Path, env: dict, storage: str, seconds: float, stop_signal: int):
    """Record the devices for seconds after the recorder is known to hear every topic; then
    stop it with stop_signal. Returns (devices' sent messages, bag, exit code, stop time)."""
    bag = tmp_path / "bag"
    recorder = start_recorder(bag, env, tmp_path, storage)
    devices = Devices(int(env["ROS_DOMAIN_ID"]))
    try:
        wait_until(lambda: all(p.get_subscription_count() > 0
                               for p in devices.publishers.values()),
                   "the recorder's subscriptions", recorder, DISCOVERY_TIMEOUT_S)
        # The recorder's side of discovery may finish a moment after ours: warm-up messages
        # until its checkpoint (every second) lists every topic, so it hears them all.
        wait_until(lambda: recorded_topics(bag) == set(TOPICS), "the recorder to hear every "
                   "topic", recorder, DISCOVERY_TIMEOUT_S, devices.warm_up)
        devices.run(seconds)
        stopped_ns = time.time_ns()
        recorder.send_signal(stop_signal)
        code = recorder.wait(timeout=STOP_TIMEOUT_S)
        return devices.sent, bag, code, stopped_ns
    finally:
        devices.close()
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()


def check_messages(found: dict, sent: dict[str, list], stream_share: float) -> None:
    """Every reliable message sent is in found, in order; at least stream_share of the
    stream's, in order; values intact; receive times in order."""
    for topic in RELIABLE:
        assert run_values(topic, found[topic]) == [v for _, v in sent[topic]], topic
    for topic in STREAMS:
        values = run_values(topic, found[topic])
        expected = [v for _, v in sent[topic]]
        assert values == sorted(set(values)) and set(values) <= set(expected), topic
        assert len(values) >= stream_share * len(expected), (topic, len(values), len(expected))
    for topic, messages in found.items():
        stamps = [t for t, _ in messages]
        assert stamps == sorted(stamps), topic


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_sigterm_closes_a_bag_with_every_message_and_the_offered_qos(tmp_path, ros_env,
                                                                    storage):
    sent, bag, code, _ = record(tmp_path, ros_env, storage, 1.5, signal.SIGTERM)
    out, err = (tmp_path / "record.out").read_text(), (tmp_path / "record.err").read_text()
    assert code == 0, err
    assert "Traceback" not in err
    assert "recording the master site's" in out and f"closed {bag}:" in out
    assert len(sent["/mtm/measured_cp"]) > 300 and len(sent["/console/clutch"]) > 10
    with BagReader(bag) as reader:
        assert not reader.unclosed
        assert {t: b.type for t, b in reader.topics.items()} == {
            topic: f"{kind.__module__.split('.')[0]}/msg/{kind.__name__}"
            for topic, (kind, _) in TOPICS.items()}
        found = reader.read_all()
        for topic, (_, qos) in TOPICS.items():
            assert reader.topics[topic].count == len(found[topic])
            (offered,) = reader.topics[topic].qos  # one publisher: this process's
            assert offered.reliability == QosReliability(qos.reliability.value), topic
            assert offered.durability == QosDurability(qos.durability.value), topic
    assert f"{sum(len(m) for m in found.values())} messages" in out
    check_messages(found, sent, stream_share=0.95)


def test_sigkill_leaves_a_readable_bag_short_of_at_most_its_last_second(tmp_path, ros_env):
    sent, bag, code, killed_ns = record(tmp_path, ros_env, "mcap", 2.5, signal.SIGKILL)
    assert code == -signal.SIGKILL
    with BagReader(bag) as reader:
        assert reader.unclosed
        found = reader.read_all()
    # What was published until 1.2 s before the kill is there (checkpoints every second);
    # the rest as far as the last checkpoint went.
    cutoff = killed_ns - 1_200_000_000
    early = {topic: [v for t, v in messages if t <= cutoff] for topic, messages in sent.items()}
    assert len(early["/mtm/measured_cp"]) > 300
    for topic in RELIABLE:  # a prefix of those sent, at least the early ones
        values = run_values(topic, found[topic])
        assert values == [v for _, v in sent[topic]][:len(values)], topic
        assert len(values) >= len(early[topic]), (topic, len(values), len(early[topic]))
    for topic in STREAMS:
        values = run_values(topic, found[topic])
        assert values == sorted(set(values)), topic
        assert len(set(early[topic]) & set(values)) >= 0.95 * len(early[topic]), topic
    for topic, messages in found.items():
        stamps = [t for t, _ in messages]
        assert stamps == sorted(stamps), topic


def test_an_existing_out_path_is_refused_in_one_line(tmp_path, ros_env):
    taken = tmp_path / "taken"
    taken.mkdir()
    (tmp_path / "file").write_text("")
    for out, says in ((taken, "exists"), (tmp_path / "file", "exists"),
                      (tmp_path / "file" / "bag", "cannot create")):
        result = subprocess.run([sys.executable, "-m", "telesurg.cli", "record", "--site",
                                 "master", "--out", str(out)], env=ros_env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and str(out) in lines[0] and says in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    assert list(taken.iterdir()) == []


def test_a_state_set_before_the_recorder_joined_is_recorded_when_it_was_set(tmp_path, ros_env):
    """A transient-local state published before the recorder started reaches it on matching;
    the bag must place it when it was set (a replay takes the states in force at its start
    from before that start), not when the recorder happened to match its publisher."""
    devices = Devices(int(ros_env["ROS_DOMAIN_ID"]))
    bag = tmp_path / "bag"
    try:
        devices.publish("/console/clutch", 1)
        set_ns = devices.sent["/console/clutch"][0][0]
        time.sleep(0.5)
        started_ns = time.time_ns()
        recorder = start_recorder(bag, ros_env, tmp_path, "mcap")
        try:
            wait_until(lambda: "/console/clutch" in recorded_topics(bag),
                       "the recorder to hear the state", recorder, DISCOVERY_TIMEOUT_S)
            recorder.send_signal(signal.SIGTERM)
            assert recorder.wait(timeout=STOP_TIMEOUT_S) == 0
        finally:
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()
    finally:
        devices.close()
    with BagReader(bag) as reader:
        ((stamp, _),) = reader.read_all(["/console/clutch"])["/console/clutch"]
    assert set_ns - 50_000_000 < stamp < started_ns, (stamp - set_ns, started_ns - set_ns)
