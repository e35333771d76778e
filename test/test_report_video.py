"""`telesurg report`'s endoscope video section, from synthetic run directories (real bags and
real H.264 frames, no DDS): there when the master site recorded the video, absent without it."""

import copy
import json

import matplotlib.image
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage
from test_report import (
    MS,
    SUMMARY,
    T0,
    assert_png,
    master_messages,
    patient_messages,
    write_bag,
)

from telesurg.analysis.report import (
    STRIP_FRAMES,
    VIDEO_FIGURES,
    find_sources,
    load_recording,
    run_report,
    video_series,
    write_report,
)
from telesurg.analysis.video import IN_FLIGHT_NS
from telesurg.contract.fields import set_stamp_ns
from telesurg.contract.topics import ENDOSCOPE_LEFT_COMPRESSED, ENDOSCOPE_RIGHT_COMPRESSED
from telesurg.video.codec import H264Encoder

WIDTH, HEIGHT, FPS, GOP = 160, 120, 30, 15
PERIOD_NS = 1_000_000_000 // FPS
FRAMES = 100  # per eye: 3.3 s
TRANSIT_NS = 12 * MS  # capture to the master site's recorder
LOST_LEFT = 40  # of the left eye, lost on the way: the next ones until the keyframe at 45 too
#: A red square on a dark background: the strip must show it.
BACKGROUND, SQUARE = (20, 20, 20), (220, 30, 30)
VIDEO = {"frames_sent": 2 * FRAMES, "frames_delivered": 2 * FRAMES - 1, "frames_dropped": 1,
         "frames_late": 0, "frames_undecodable": 4,
         "added_latency_ms": {"p50": 12.3, "p99": 14.5},
         "motion_to_photon_ms": {"p50": 30.1, "p99": 40.2}, "bitrate_mbps": {"a": 0.2, "b": 0.2},
         "width": WIDTH, "height": HEIGHT, "fps": 30.0}


def capture_ns(index: int) -> int:
    return T0 + 100 * MS + index * PERIOD_NS


def endoscope_frames() -> list[tuple[int, CompressedImage]]:
    """(capture ns, CompressedImage) of one eye: the square moving across, a keyframe every
    GOP frames."""
    encoder = H264Encoder(WIDTH, HEIGHT, FPS, gop_frames=GOP)
    frames = []
    for i in range(FRAMES):
        image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
        image[40:80, i % 120:i % 120 + 40] = SQUARE
        message = CompressedImage(format="h264", data=encoder.encode(image, i).data)
        set_stamp_ns(message, capture_ns(i))
        frames.append((capture_ns(i), message))
    return frames


def video_messages() -> tuple[list, list]:
    """(patient site's, master site's) recorded video messages: every frame sent, every one
    delivered TRANSIT_NS later but left LOST_LEFT."""
    type_name = ENDOSCOPE_LEFT_COMPRESSED.type_name
    patient, master = [], []
    for topic in (ENDOSCOPE_LEFT_COMPRESSED.name, ENDOSCOPE_RIGHT_COMPRESSED.name):
        for index, (t, message) in enumerate(endoscope_frames()):
            patient.append((t, topic, type_name, message))
            if not (topic == ENDOSCOPE_LEFT_COMPRESSED.name and index == LOST_LEFT):
                master.append((t + TRANSIT_NS, topic, type_name, message))
    return patient, master


def make_run(run, video: bool, summary: dict) -> None:
    patient_video, master_video = video_messages() if video else ([], [])
    write_bag(run / "patient_bag", patient_messages() + patient_video)
    write_bag(run / "master_bag", master_messages() + master_video)
    (run / "summary.json").write_text(json.dumps(summary, indent=2))


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("video_run")
    make_run(run, video=True, summary={**copy.deepcopy(SUMMARY), "video": VIDEO})
    return run


def report_of(run, out) -> tuple:
    """(figures directory, page text) of the report of run, written to out."""
    page = write_report(run, out)
    return out / "figures", page.read_text()


@pytest.fixture(scope="module")
def video_report(video_run, tmp_path_factory):
    return report_of(video_run, tmp_path_factory.mktemp("video_report"))


def test_the_video_section_and_its_figures_when_the_video_was_recorded(video_report):
    figures, page = video_report
    assert "<h2>Endoscope video</h2>" in page
    for spec in VIDEO_FIGURES:
        assert_png(figures / f"{spec.name}.png")
        assert f"src='figures/{spec.name}.png'" in page
    section = page[page.index("<h2>Endoscope video</h2>"):]
    assert "From summary.json, video: 160x120 per eye at 30.0 fps; 200 frames sent" in section
    assert ("added latency p50 12.3 ms, p99 14.5 ms; motion to photon p50 30.1 ms, p99 40.2 ms; "
            "per link a 0.2 Mbit/s") in section
    assert "includes the link's one-way delay (0.1 ms on the demo's default lan links)" in section
    assert "1 frame dropped" in section and "4 undecodable" in section
    assert "Not drawn" not in page


def test_the_strip_shows_the_decoded_frames(video_report):
    figures, _ = video_report
    rgb = matplotlib.image.imread(figures / "video_strip.png")[..., :3]
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    square = (red > 0.7) & (green < 0.3) & (blue < 0.3)
    background = (red < 0.15) & (green < 0.15) & (blue < 0.15)
    # Six frames of about 190 x 140 pixels: a twelfth of each is the square, the rest background.
    assert square.sum() > STRIP_FRAMES * 1000
    assert background.sum() > STRIP_FRAMES * 5000


def test_the_video_as_the_viewer_had_it(video_run):
    video = video_series(load_recording(find_sources(video_run).bags).video)
    counted = sum(1 for i in range(FRAMES) if capture_ns(i) <= capture_ns(FRAMES - 1)
                  - IN_FLIGHT_NS)
    left, right = video.eyes["left"], video.eyes["right"]
    assert left.dropped_ns.tolist() == [capture_ns(LOST_LEFT)]
    assert left.undecodable_ns.tolist() == [capture_ns(i) for i in range(LOST_LEFT + 1, 45)]
    assert right.dropped_ns.size == 0 and right.undecodable_ns.size == 0
    assert right.shown_ns.size == counted and left.shown_ns.size == counted - 1
    # Transit plus this machine's decode of a small frame.
    decoded = np.concatenate([left.latency_ms[~np.isnan(left.latency_ms)], right.latency_ms])
    assert 12.0 <= decoded.min() and decoded.max() < 12.0 + 50.0
    # Evenly spaced over the counted frames, from the first to the last, in order.
    stamps = [frame.capture_ns for frame in video.strip]
    assert len(stamps) == STRIP_FRAMES and stamps == sorted(stamps)
    assert stamps[0] == capture_ns(0) == video.first_ns
    assert abs(stamps[-1] - capture_ns(counted - 1)) <= PERIOD_NS
    assert all(frame.eye == "left" and frame.image.shape == (HEIGHT, WIDTH, 3)
               for frame in video.strip)


def test_a_summary_without_video_still_gets_the_section(tmp_path):
    make_run(tmp_path / "run", video=True, summary=SUMMARY)
    figures, page = report_of(tmp_path / "run", tmp_path / "out")
    assert "<h2>Endoscope video</h2>" in page and "From summary.json, video" not in page
    for spec in VIDEO_FIGURES:
        assert_png(figures / f"{spec.name}.png")


def test_no_section_without_the_video(tmp_path):
    make_run(tmp_path / "run", video=False, summary=SUMMARY)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    for spec in VIDEO_FIGURES:  # an earlier report's, which would mislead
        (out / "figures" / f"{spec.name}.png").write_bytes(b"stale")
    figures, page = report_of(tmp_path / "run", out)
    assert "Endoscope video" not in page and "video_" not in page
    assert not any((figures / f"{spec.name}.png").exists() for spec in VIDEO_FIGURES)


def test_the_master_bag_alone_says_why_there_are_no_video_figures(video_run, tmp_path):
    assert run_report(video_run / "master_bag", tmp_path / "out") == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>Endoscope video</h2><p class='skipped'>Not drawn: the patient site&#x27;s " \
        "recording holds no endoscope frame" in page
    assert "src='figures/video_" not in page
