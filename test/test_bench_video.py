"""The video benchmark's pipeline on a few frames: every frame arrives over the one link left,
none over no link, and none is ever shown late; a step of the arm shows after the links' delay;
commands cross two bridges, none lost, while video frames flow the other way."""

import pytest

from telesurg.bench import video
from telesurg.linkem.model import LinkProfile
from telesurg.video.camera import RenderingUnavailable

FRAMES = 12
SMALL = {"width": 320, "height": 240}


def rendered(measure, *args, **kwargs):
    try:
        return measure(*args, **kwargs)
    except RenderingUnavailable as error:
        pytest.skip(f"no offscreen rendering on this machine: {error}")


def run(conditions: video.Conditions) -> dict:
    return rendered(video.run_variant, conditions, frames=FRAMES, **SMALL)


def lossy(loss_pct: float) -> dict[str, LinkProfile]:
    return dict.fromkeys(video.LINKS, LinkProfile(loss_pct=loss_pct))


def test_one_link_cut_for_the_whole_run_loses_no_frame():
    figures = run(video.Conditions("a_cut", video.PERFECT, cut_a=(0.0, 1e9)))
    assert figures["frames_sent"] == 2 * FRAMES  # both eyes
    assert figures["frames_delivered"] == figures["frames_sent"]
    assert figures["frames_late"] == 0
    assert figures["added_latency_ms"]["p50"] > 0
    assert figures["bitrate_mbps"]["a"] == figures["bitrate_mbps"]["b"] > 0


def test_no_frame_arrives_when_every_fragment_is_lost():
    figures = run(video.Conditions("dark", lossy(100.0)))
    assert figures["frames_delivered"] == 0
    assert figures["frames_dropped"] == figures["frames_sent"] == 2 * FRAMES
    assert figures["added_latency_ms"]["p50"] is None


def test_frames_lost_on_both_links_now_and_then_are_recovered_or_dropped_never_late():
    figures = run(video.Conditions("lossy", lossy(30.0)))
    assert figures["frames_late"] == 0
    assert figures["frames_recovered_by_fec"] > 0  # 9% of fragments lost on both links
    assert figures["frames_delivered"] + figures["frames_dropped"] == figures["frames_sent"]


def test_every_step_of_the_arm_shows_after_the_links_delay_and_nothing_else_does():
    steps = 4
    figures = rendered(video.motion_to_photon, steps, **SMALL)
    assert figures["steps_shown"] == 2 * steps  # both eyes
    assert figures["false_steps"] == 0
    assert figures["step_changed_share_min"] > video.CHANGED_SHARE
    assert figures["still_changed_share_max"] <= video.CHANGED_SHARE
    link_ms = min(figures["link_delay_ms"].values())
    latency = figures["motion_to_photon_ms"]
    # The faster link's delay, plus up to a frame period's wait and generously the CPU's part.
    assert link_ms < latency["p50"] <= latency["max"] < link_ms + 1000 / video.FPS + 500


def test_commands_cross_with_none_lost_while_video_frames_flow_the_other_way():
    clip = rendered(video.encoded_clip, 0.5, **SMALL)
    figures = video.command_path(clip, rounds=1, window_s=0.5)
    off, on = figures["video_off"], figures["video_on"]
    for variant in (off, on):
        assert variant["commands_sent"] == 0.5 * video.COMMAND_RATE_HZ
        assert variant["commands_lost"] == 0
        assert variant["latency_ms"]["p50"] > 0
    assert off["frames_sent"] == off["frames_delivered"] == 0
    assert on["frames_sent"] == 2 * 0.5 * video.FPS  # both eyes, every frame of the window
    assert on["frames_delivered"] > 0
    assert on["video_mbps_per_link"] > 0
