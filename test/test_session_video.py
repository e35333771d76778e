"""Multi-process: a demo session with video. The patient site's endoscope renders and encodes
the arm, the bridges carry its frames to the master site, both sites record them, the summary
counts them, and an independent reader (the mcap packages and FFmpeg through PyAV, none of
telesurg's code) decodes a stereo pair of the arm from the master site's bag."""

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from telesurg.contract.topics import ENDOSCOPE_LEFT_COMPRESSED, ENDOSCOPE_RIGHT_COMPRESSED

pytestmark = pytest.mark.multiprocess

EYES = (ENDOSCOPE_LEFT_COMPRESSED.name, ENDOSCOPE_RIGHT_COMPRESSED.name)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, ros_env_module):
    out = tmp_path_factory.mktemp("video_run")
    result = subprocess.run(
        [sys.executable, "-m", "telesurg.cli", "demo", "--video", "--duration", "8", "--seed",
         "5", "--no-report", "--out", str(out)],
        env=ros_env_module, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "video: 640x480 per eye" in result.stdout
    return out


def compressed_frames(bag_dir: Path) -> dict[str, list]:
    """The endoscope's CompressedImage messages in a bag, by topic, in recorded order."""
    (path,) = bag_dir.glob("*.mcap")
    found: dict[str, list] = {topic: [] for topic in EYES}
    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _, channel, _, message in reader.iter_decoded_messages(topics=list(EYES)):
            found[channel.topic].append(message)
    return found


def decoded_images(messages) -> dict[tuple[int, int], np.ndarray]:
    """The pictures FFmpeg decodes from a stream of H.264 access units, by capture stamp."""
    decoder = av.CodecContext.create("h264", "r")
    images = {}
    for message in messages:
        try:
            frames = decoder.decode(av.Packet(bytes(message.data)))
        except av.FFmpegError:
            continue  # before the first keyframe
        for frame in frames:
            images[message.header.stamp.sec, message.header.stamp.nanosec] = frame.to_ndarray(
                format="rgb24")
    return images


def test_the_video_crosses_and_is_counted(video_run):
    video = json.loads((video_run / "summary.json").read_text())["video"]
    assert (video["width"], video["height"]) == (640, 480)
    # The endoscope gets what the session leaves of two cores: 3.5-7.5 fps seen.
    assert video["frames_sent"] >= 10
    # Generous: on 2 busy cores frames are lost to CPU, never to the loopback links.
    assert video["frames_delivered"] >= 0.5 * video["frames_sent"]
    assert video["frames_late"] == 0
    for figure in ("added_latency_ms", "motion_to_photon_ms"):
        assert 0.0 < video[figure]["p50"] <= video[figure]["p99"] < 3000.0, figure
    assert all(0.1 < rate < 20.0 for rate in video["bitrate_mbps"].values())


def test_both_bags_hold_the_video_an_independent_reader_decodes(video_run):
    patient = compressed_frames(video_run / "patient_bag")
    master = compressed_frames(video_run / "master_bag")
    for eye in EYES:
        assert len(master[eye]) >= 0.5 * len(patient[eye]) > 0
        assert {message.format for message in master[eye]} == {"h264"}
        stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in master[eye]]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    left, right = (decoded_images(master[eye]) for eye in EYES)
    pairs = sorted(set(left) & set(right))
    assert len(pairs) >= 0.5 * len(master[EYES[0]])
    first_left, first_right = left[pairs[0]], right[pairs[0]]
    assert first_left.shape == first_right.shape == (480, 640, 3)
    # A scene, not a blank: the arm over the phantom, seen from two eyes 5 mm apart.
    assert first_left.std() > 10.0
    assert np.abs(first_left.astype(int) - first_right.astype(int)).mean() > 1.0
