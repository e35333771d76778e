"""The endoscope node as a process: it follows /joint_states, and its H.264 frames (both eyes,
stamped at capture, with their camera_info) decode into images that show the arm move. The
decoder asks for keyframes. The endoscope encoder makes video of a camera's pictures (Gazebo's)."""

import re
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_msgs.msg import Header, String

from telesurg.arm.kinematics import HOME_POSITIONS, JOINT_NAMES
from telesurg.contract import topics
from telesurg.contract.graph import ENDOSCOPE, ENDOSCOPE_DECODER, ENDOSCOPE_ENCODER
from telesurg.ros.qos import qos_profile
from telesurg.session.demo import session_environment
from telesurg.session.processes import CLEAN_STOP_CODES, NodeGroup
from telesurg.video.codec import H264Decoder, is_keyframe

pytestmark = pytest.mark.multiprocess

TIMEOUT_S = 30.0
FPS = 15.0
#: Mean absolute difference (0-255) between two decoded images that show different scenes.
DIFFERENT = 2.0


class Site:
    """This test's node on the endoscope's domain: the arm's /joint_states in, video out."""

    def __init__(self, domain: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("endoscope_probe", context=self.context)
        self.joints = self.node.create_publisher(JointState, topics.JOINT_STATES.name,
                                                 qos_profile(topics.JOINT_STATES.qos))
        self.frames = {"left": [], "right": []}
        self.infos = {"left": [], "right": []}
        deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
        for eye in self.frames:
            self.node.create_subscription(CompressedImage,
                                          f"/endoscope/{eye}/image_raw/compressed",
                                          self.frames[eye].append, deep)
            self.node.create_subscription(CameraInfo, f"/endoscope/{eye}/camera_info",
                                          self.infos[eye].append, deep)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def pose(self, positions) -> None:
        self.joints.publish(JointState(name=list(JOINT_NAMES), position=list(positions)))

    def spin_until(self, condition, what: str, timeout_s: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def decoded_last(frames) -> np.ndarray:
    """The newest frame decoded from the stream so far."""
    decoder = H264Decoder()
    images = [decoder.decode(bytes(frame.data)) for frame in frames]
    found = [image for image in images if image is not None]
    assert found, f"none of {len(frames)} frames decoded"
    return found[-1]


def test_the_endoscope_streams_both_eyes_and_shows_the_arm_move(tmp_path, ros_env):
    domain = int(ros_env["ROS_DOMAIN_ID"])
    group = NodeGroup(session_environment(domain), tmp_path / "logs")
    group.start(ENDOSCOPE, ["-p", f"video_fps:={FPS}", "-p", "width:=320", "-p", "height:=240",
                            "-p", "keyframe_interval_s:=0.5"])
    site = Site(domain)
    try:
        site.spin_until(lambda: site.node.count_publishers(
            topics.ENDOSCOPE_LEFT_COMPRESSED.name) > 0 and site.joints.get_subscription_count()
            > 0, "endoscope on the graph")
        site.pose(HOME_POSITIONS)
        site.spin_until(lambda: min(map(len, site.frames.values())) >= 10, "ten stereo frames")
        left, right = (decoded_last(site.frames[eye]) for eye in ("left", "right"))
        assert left.shape == (240, 320, 3)
        assert np.abs(left.astype(int) - right.astype(int)).mean() > DIFFERENT  # 5 mm apart
        frame, info = site.frames["left"][-1], site.infos["right"][-1]
        assert frame.format == "h264" and frame.header.stamp.sec > 0
        assert info.width == 320 and info.p[3] == pytest.approx(-info.k[0] * 0.005)

        moved = np.array(HOME_POSITIONS)
        moved[0] += 0.3  # outer yaw: the tool sweeps across the view
        seen = len(site.frames["left"])
        site.pose(moved)
        site.spin_until(lambda: len(site.frames["left"]) >= seen + 10, "frames after the move")
        after = decoded_last(site.frames["left"])
        assert np.abs(after.astype(int) - left.astype(int)).mean() > DIFFERENT
        stamps = [f.header.stamp.sec * 10**9 + f.header.stamp.nanosec
                  for f in site.frames["left"]]
        assert stamps == sorted(stamps)
    finally:
        site.close()
        codes = group.stop()
        assert set(codes.values()) <= CLEAN_STOP_CODES, sorted((tmp_path / "logs").glob("*"))


def stamp_of(message) -> int:
    return message.header.stamp.sec * 10**9 + message.header.stamp.nanosec


def test_the_decoder_shows_a_new_viewer_pictures_at_once_by_asking_for_a_keyframe(tmp_path,
                                                                                  ros_env):
    """Keyframes every 10 s: a viewer joining after the first one gets pictures within
    seconds only because the decoder asks the endoscope for a keyframe."""
    domain = int(ros_env["ROS_DOMAIN_ID"])
    group = NodeGroup(session_environment(domain), tmp_path / "logs")
    size = ["-p", "width:=320", "-p", "height:=240", "-p", f"video_fps:={FPS}"]
    group.start(ENDOSCOPE, [*size, "-p", "keyframe_interval_s:=10.0"])
    group.start(ENDOSCOPE_DECODER, ["-p", f"video_fps:={FPS}"])
    site = Site(domain)
    requests, images = [], []
    site.node.create_subscription(String, topics.ENDOSCOPE_KEYFRAME_REQUEST.name,
                                  lambda m: requests.append(m.data),
                                  qos_profile(topics.ENDOSCOPE_KEYFRAME_REQUEST.qos))
    try:
        site.spin_until(lambda: len(site.frames["left"]) >= FPS, "a second of frames")
        first = stamp_of(site.frames["left"][0])
        assert site.node.count_subscribers(topics.ENDOSCOPE_LEFT_IMAGE.name) == 0
        site.node.create_subscription(Image, topics.ENDOSCOPE_LEFT_IMAGE.name, images.append,
                                      qos_profile(topics.ENDOSCOPE_LEFT_IMAGE.qos))
        site.spin_until(lambda: images, "a decoded picture", timeout_s=8.0)
        assert requests and set(requests) == {"left"}  # nobody watches the right eye
        shown = stamp_of(images[0])
        assert first < shown < first + 9 * 10**9  # before the next periodic keyframe
        # The picture comes from a keyframe sent since (the requested one); it may be a later
        # frame's: the decoder can publish the keyframe's picture before this subscription
        # has matched its publisher, and that picture is then not delivered here.
        assert any(first < stamp_of(frame) <= shown and is_keyframe(bytes(frame.data))
                   for frame in site.frames["left"])
        assert (images[0].width, images[0].height, images[0].encoding) == (320, 240, "rgb8")
        assert np.frombuffer(bytes(images[0].data), np.uint8).std() > 10.0  # a scene
    finally:
        site.close()
        codes = group.stop()
        assert set(codes.values()) <= CLEAN_STOP_CODES, sorted((tmp_path / "logs").glob("*"))


def test_the_encoder_makes_video_of_a_cameras_pictures_and_drops_what_it_cannot_encode(
        tmp_path, ros_env):
    """Pictures as Gazebo's cameras publish them (left bgr8 with padded rows, right rgb8) come
    out as H.264 with their stamps, showing the same picture in the right colours; a mono8
    picture is dropped and said."""
    domain = int(ros_env["ROS_DOMAIN_ID"])
    group = NodeGroup(session_environment(domain), tmp_path / "logs")
    encoder = group.start(ENDOSCOPE_ENCODER, ["-p", f"video_fps:={FPS}"])
    site = Site(domain)
    raw = [site.node.create_publisher(Image, topic.name, qos_profile(topic.qos))
           for topic in (topics.ENDOSCOPE_LEFT_IMAGE, topics.ENDOSCOPE_RIGHT_IMAGE)]
    height, width = 240, 320
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:, :, 1] = np.linspace(0, 200, width, dtype=np.uint8)  # a green ramp
    picture[60:180, 80:240, 0] = 230  # and a red block
    padded_bgr = np.zeros((height, width * 3 + 8), np.uint8)
    padded_bgr[:, :width * 3] = picture[:, :, ::-1].reshape(height, -1)
    sent = []

    def publish(eye: int, data: bytes, encoding: str, step: int) -> None:
        header = site.node.get_clock().now().to_msg()
        sent.append(header.sec * 10**9 + header.nanosec)
        raw[eye].publish(Image(header=Header(stamp=header), height=height, width=width,
                               encoding=encoding, step=step, data=data))
    try:
        site.spin_until(lambda: all(p.get_subscription_count() > 0 for p in raw)
                        and site.node.count_publishers(topics.ENDOSCOPE_LEFT_COMPRESSED.name),
                        "the encoder on the graph")
        # Latest wins on the raw topics, as for any camera: picture pairs until ten are out.
        deadline = time.monotonic() + TIMEOUT_S
        while min(map(len, site.frames.values())) < 10:
            assert time.monotonic() < deadline, "no ten stereo frames"
            publish(0, padded_bgr.tobytes(), "bgr8", padded_bgr.shape[1])
            publish(1, picture.tobytes(), "rgb8", width * 3)
            site.executor.spin_once(timeout_sec=1 / FPS)
        for eye in ("left", "right"):
            shown = decoded_last(site.frames[eye]).astype(int)
            assert np.abs(shown - picture).mean() < 4.0, eye
            assert shown[120, 160, 0] > 200 and shown[120, 160, 2] < 30, eye  # red, not blue
        assert {stamp_of(frame) for eye in ("left", "right")
                for frame in site.frames[eye]} <= set(sent)

        mono = np.zeros((height, width), np.uint8)
        publish(0, mono.tobytes(), "mono8", width)
        site.spin_until(lambda: "picture dropped" in encoder.log_path.read_text(),
                        "the mono8 picture refused")
        mono_stamp = sent[-1]
        # Then good ones (a large picture may be lost on the way) until one is out.
        deadline = time.monotonic() + TIMEOUT_S
        while stamp_of(site.frames["left"][-1]) <= mono_stamp:
            assert time.monotonic() < deadline, "no good picture after the mono8 one"
            publish(0, padded_bgr.tobytes(), "bgr8", padded_bgr.shape[1])
            site.executor.spin_once(timeout_sec=1 / FPS)
        assert mono_stamp not in {stamp_of(frame) for frame in site.frames["left"]}
    finally:
        site.close()
        codes = group.stop()
        assert set(codes.values()) <= CLEAN_STOP_CODES, sorted((tmp_path / "logs").glob("*"))
    log = encoder.log_path.read_text()
    assert "left eye: picture dropped: image encoding 'mono8' is not one of" in log
    assert re.search(r"left: \d+ encoded, 1 dropped; right: \d+ encoded, 0 dropped", log), log
