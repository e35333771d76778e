"""The video figures of a session (telesurg.analysis.video) from recordings built here: real
H.264 frames, some lost, one delivered late, and the patient bridge's byte counter."""

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage

from telesurg.analysis.video import (
    IN_FLIGHT_NS,
    VIDEO_BYTES_KEY,
    VideoSummaryError,
    print_video_summary,
    video_bitrate_mbps,
    video_summary,
)
from telesurg.contract.fields import set_stamp_ns
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.topics import (
    ENDOSCOPE_LEFT_COMPRESSED,
    ENDOSCOPE_RIGHT_COMPRESSED,
    PSM_SERVO_CP,
)
from telesurg.video.codec import H264Encoder

WIDTH, HEIGHT, FPS = 160, 120, 30
PERIOD_NS = 1_000_000_000 // FPS
T0 = 1_000_000_000_000
ONE_WAY_MS = 5.0


def frames(count: int, gop: int = 10) -> list[tuple[int, bytes]]:
    """(capture ns, CompressedImage CDR) of a moving square, a keyframe every gop frames."""
    encoder = H264Encoder(WIDTH, HEIGHT, FPS, gop_frames=gop)
    recorded = []
    for i in range(count):
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        image[40:80, 2 * i % 120:2 * i % 120 + 40] = 200
        message = CompressedImage(format="h264", data=encoder.encode(image, i).data)
        set_stamp_ns(message, T0 + i * PERIOD_NS)
        recorded.append((T0 + i * PERIOD_NS, serialize_message(message)))
    return recorded


def commands(until_ns: int, period_ns: int, path_ns: int) -> list[tuple[int, bytes]]:
    """(arrival ns at the patient site, PoseStamped CDR) of servo commands every period_ns,
    each stamped by the console path_ns before it arrived."""
    recorded = []
    for arrival in range(T0 - 10 * period_ns, until_ns, period_ns):
        message = PoseStamped()
        set_stamp_ns(message, arrival - path_ns)
        recorded.append((arrival, serialize_message(message)))
    return recorded


def link_report(video_bytes: int) -> DiagnosticArray:
    return DiagnosticArray(status=[DiagnosticStatus(hardware_id="overall", values=[
        KeyValue(key=VIDEO_BYTES_KEY, value=str(video_bytes))])])


def test_frames_counted_late_and_lost_latency_and_bitrate():
    count = 40
    left, right = frames(count), frames(count)
    in_flight = sum(1 for t, _ in left if t > left[-1][0] - IN_FLIGHT_NS)
    counted = count - in_flight
    transit_ns = 12_000_000  # capture to the master site's recorder
    # The master site: every left frame; of the right, frame 3 lost and frame 6 arriving
    # after frame 7 (late: shown, it would step back in time).
    order = [0, 1, 2, 4, 5, 7, 6, *range(8, count)]
    master_right = [(right[i][0] + transit_ns, right[i][1]) for i in order]
    master_right[6] = (master_right[5][0] + 1_000_000, right[6][1])
    command_period_ns, command_path_ns = 4_000_000, 3_000_000
    messages = {
        "patient": {ENDOSCOPE_LEFT_COMPRESSED.name: left, ENDOSCOPE_RIGHT_COMPRESSED.name: right,
                    PSM_SERVO_CP.name: commands(left[-1][0], command_period_ns,
                                                command_path_ns)},
        "master": {ENDOSCOPE_LEFT_COMPRESSED.name: [(t + transit_ns, d) for t, d in left],
                   ENDOSCOPE_RIGHT_COMPRESSED.name: master_right}}
    # 1,000,000 bytes over 2 s on each link: 4 Mbit/s.
    states = [(T0, link_report(0)), (T0 + 2_000_000_000, link_report(1_000_000))]
    video = video_summary(messages, states, ONE_WAY_MS)
    assert video["frames_sent"] == 2 * counted
    assert video["frames_late"] == 1
    assert video["frames_dropped"] == 2  # the lost one and the late one
    assert video["frames_delivered"] == 2 * counted - 2
    # Frames after the lost one until the next keyframe (10) cannot be decoded.
    assert video["frames_undecodable"] == 5  # right 4, 5, 7, 8, 9
    assert (video["width"], video["height"]) == (WIDTH, HEIGHT)
    assert video["fps"] == pytest.approx(FPS, abs=0.5)
    latency = video["added_latency_ms"]
    # Transit less the one-way delay, plus a decode of well under a few ms.
    assert 12.0 - ONE_WAY_MS <= latency["p50"] <= latency["p99"] < 12.0 - ONE_WAY_MS + 20.0
    # The command's path, the wait for the capture after it, the frame's transit and decode.
    motion = video["motion_to_photon_ms"]
    assert 15.0 <= motion["p50"] <= motion["p99"] < 15.0 + 4.0 + 20.0
    assert video["bitrate_mbps"] == dict.fromkeys(DEFAULT_LINKS, 4.0)
    lines = []
    print_video_summary(video, lines.append)
    assert "160x120 per eye" in lines[0] and "1 late" in lines[0]


def test_frames_before_the_task_or_the_first_keyframe_recorded_do_not_count():
    left, right = frames(40), frames(40)
    # Before the task, the master site heard nothing (its bridge did not trust the patient's
    # yet); from frame 12 on, everything: its first keyframe is frame 20.
    messages = {
        "patient": {ENDOSCOPE_LEFT_COMPRESSED.name: left, ENDOSCOPE_RIGHT_COMPRESSED.name: right},
        "master": {topic: [(t + 1_000_000, d) for t, d in stream[12:]] for topic, stream in (
            (ENDOSCOPE_LEFT_COMPRESSED.name, left), (ENDOSCOPE_RIGHT_COMPRESSED.name, right))}}
    in_flight = sum(1 for t, _ in left if t > left[-1][0] - IN_FLIGHT_NS)
    for since_ns, first in ((0, 20), (left[12][0], 20), (left[22][0], 22)):
        video = video_summary(messages, [], ONE_WAY_MS, since_ns=since_ns)
        assert video["frames_sent"] == video["frames_delivered"] == 2 * (40 - first - in_flight)
        assert video["frames_undecodable"] == video["frames_dropped"] == 0


def test_a_recording_without_keyframes_counts_its_frames_undecodable():
    # One keyframe each, frame 0, which the master site never recorded.
    left, right = frames(30, gop=100), frames(30, gop=100)
    messages = {
        "patient": {ENDOSCOPE_LEFT_COMPRESSED.name: left, ENDOSCOPE_RIGHT_COMPRESSED.name: right},
        "master": {topic: [(t + 1_000_000, d) for t, d in stream[1:]] for topic, stream in (
            (ENDOSCOPE_LEFT_COMPRESSED.name, left), (ENDOSCOPE_RIGHT_COMPRESSED.name, right))}}
    video = video_summary(messages, [], ONE_WAY_MS)
    assert video["frames_dropped"] == 2
    assert video["frames_undecodable"] == video["frames_delivered"] == video["frames_sent"] - 2


def test_no_bitrate_without_two_reports_and_no_video_is_an_error():
    assert video_bitrate_mbps([(T0, link_report(5))]) == dict.fromkeys(DEFAULT_LINKS, None)
    with pytest.raises(VideoSummaryError, match="no endoscope frame"):
        video_summary({"patient": {}, "master": {}}, [], ONE_WAY_MS)
