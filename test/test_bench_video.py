"""The video benchmark's pipeline on a few frames: every frame arrives over the one link left,
none over no link, and none is ever shown late."""

import pytest

from telesurg.bench import video
from telesurg.video.camera import RenderingUnavailable

FRAMES = 12
SMALL = {"frames": FRAMES, "width": 320, "height": 240}


def run(conditions: video.Conditions) -> dict:
    try:
        return video.run_variant(conditions, **SMALL)
    except RenderingUnavailable as error:
        pytest.skip(f"no offscreen rendering on this machine: {error}")


def test_one_link_cut_for_the_whole_run_loses_no_frame():
    figures = run(video.Conditions("a_cut", {"a": 0.0, "b": 0.0}, cut_a=(0.0, 1e9)))
    assert figures["frames_sent"] == 2 * FRAMES  # both eyes
    assert figures["frames_delivered"] == figures["frames_sent"]
    assert figures["frames_late"] == 0
    assert figures["added_latency_ms"]["p50"] > 0
    assert figures["bitrate_mbps"]["a"] == figures["bitrate_mbps"]["b"] > 0


def test_no_frame_arrives_when_every_fragment_is_lost():
    figures = run(video.Conditions("dark", {"a": 1.0, "b": 1.0}))
    assert figures["frames_delivered"] == 0
    assert figures["frames_dropped"] == figures["frames_sent"] == 2 * FRAMES
    assert figures["added_latency_ms"]["p50"] is None


def test_frames_lost_on_both_links_now_and_then_are_recovered_or_dropped_never_late():
    figures = run(video.Conditions("lossy", {"a": 0.3, "b": 0.3}))
    assert figures["frames_late"] == 0
    assert figures["frames_recovered_by_fec"] > 0  # 9% of fragments lost on both links
    assert figures["frames_delivered"] + figures["frames_dropped"] == figures["frames_sent"]
