"""The endoscope video's figures of a session (summary.json's `video`), from the sites'
recordings and the patient bridge's reports.

A frame is one eye's image. Sent: recorded at the patient site as the endoscope published it
(its header stamp is the capture time). Delivered: recorded at the master site as its bridge
published it, with the same eye and stamp. Late: delivered after a newer frame of its eye (shown,
it would step back in time; the bridges deliver in order, so this counts what they let through).
Only frames captured from since_ns (the task's start) count: before it, the bridges may not yet
trust each other and the recorders may not yet hear every publisher. Nor, for each eye, those
before the first keyframe the master site's recording holds: its recorder may have joined the
master bridge's publisher after the task started, or between keyframes (`telesurg demo` starts
the task only once the master site has heard a keyframe of each eye, so the video path was up).
With no keyframe recorded there, every frame from since_ns counts.
Added latency: from capture to the frame decoded at the master site, less the link's one-way
delay: the arrival at the master site's recorder, plus the time this machine takes to decode it
(each delivered frame is decoded here, in order, as a viewer would: after a lost frame, nothing
until the next keyframe, counted as undecodable). Frames captured within
IN_FLIGHT_NS of the last capture are left out: the session's end cut them off on the way.

Pure but for the H.264 decoder (telesurg.video.codec, PyAV): recorded messages by site and
topic, [(arrival ns, CDR bytes)], and decoded link-state reports in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from telesurg.analysis.metrics import percentiles
from telesurg.analysis.recording import decoded
from telesurg.contract import topics
from telesurg.contract.fields import link_state_values, stamp_ns
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.states import LINK_OVERALL_ID
from telesurg.contract.topics import MASTER, PATIENT

#: The video's topics, one per eye.
EYES = {"left": topics.ENDOSCOPE_LEFT_COMPRESSED, "right": topics.ENDOSCOPE_RIGHT_COMPRESSED}
#: Frames captured this close to the last capture are not counted: still on their way.
IN_FLIGHT_NS = 300_000_000
#: A frame shows the console's commands if one reached the patient site this shortly before its
#: capture (the arm controller holds after 50 ms without one).
FOLLOWING_NS = 50_000_000
#: The patient bridge's counter of video bytes it sent, on every link (each carries all).
VIDEO_BYTES_KEY = "video_bytes_sent"


class VideoSummaryError(Exception):
    """The recordings hold no video to judge; the message says what is missing."""


@dataclass(frozen=True)
class ShownFrame:
    """A counted frame as the master site's viewer has it: delivered in order, then decoded."""

    eye: str
    capture_ns: int
    arrival_ns: int  # at the master site's recorder
    latency_ms: float | None  # added latency; None when it could not be decoded
    shown_ns: int | None  # when its picture was ready at the master site (arrival + decode)
    image: np.ndarray | None  # height x width x 3 RGB; None when it could not be decoded


@dataclass
class VideoFrames:
    """A session's counted frames (both eyes): what was sent, what arrived late (the viewer
    drops those), and the delivered ones in arrival order per eye, decoded one by one by
    shown() as a viewer would."""

    messages: dict
    one_way_delay_ms: float
    since_ns: int = 0
    sent: dict[str, list[int]] = field(init=False)  # capture stamps per eye, in order
    counted: dict[str, set[int]] = field(init=False)
    late: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.sent = {eye: sorted(stamp_ns(m) for _, m in decoded(self.messages, PATIENT, topic))
                     for eye, topic in EYES.items()}
        if not any(self.sent.values()):
            raise VideoSummaryError("the patient site's recording holds no endoscope frame (is "
                                    "the endoscope running? see logs/patient/endoscope.log)")
        last_capture = max(stamps[-1] for stamps in self.sent.values() if stamps)
        self.counted = {eye: {s for s in stamps
                              if self._counted_from(eye) <= s <= last_capture - IN_FLIGHT_NS}
                        for eye, stamps in self.sent.items()}

    def _counted_from(self, eye: str) -> int:
        """since_ns, or the capture of the first keyframe of this session's eye the master
        site recorded, if later."""
        from telesurg.video.codec import is_keyframe

        sent = set(self.sent[eye])
        first_keyframe = next((stamp for _, message in decoded(self.messages, MASTER, EYES[eye])
                               if (stamp := stamp_ns(message)) in sent
                               and is_keyframe(bytes(message.data))), self.since_ns)
        return max(self.since_ns, first_keyframe)

    def shown(self) -> Iterator[ShownFrame]:
        """Every counted frame delivered in order, eye after eye; late ones are counted in
        self.late (once this has run to its end)."""
        from telesurg.video.codec import H264Decoder

        self.late = 0
        for eye, topic in EYES.items():
            decoder = H264Decoder()
            position = {stamp: i for i, stamp in enumerate(self.sent[eye])}
            newest = None
            for arrival, message in decoded(self.messages, MASTER, topic):
                stamp = stamp_ns(message)
                if stamp not in position:
                    continue  # not this session's endoscope: nothing to compare with
                if newest is not None and stamp <= newest:
                    self.late += stamp in self.counted[eye]
                    continue  # a viewer drops it
                if newest is not None and position[stamp] != position[newest] + 1:
                    decoder.reset()  # a frame between was lost: wait for a keyframe
                newest = stamp
                started = time.perf_counter_ns()
                image = decoder.decode(bytes(message.data))
                decode_ns = time.perf_counter_ns() - started
                if stamp not in self.counted[eye]:
                    continue
                shown_ns = None if image is None else arrival + decode_ns
                latency_ms = (None if shown_ns is None else
                              (shown_ns - stamp) * 1e-6 - self.one_way_delay_ms)
                yield ShownFrame(eye, stamp, arrival, latency_ms, shown_ns, image)


def video_summary(messages: dict, patient_states: list, one_way_delay_ms: float,
                  since_ns: int = 0) -> dict:
    """The video figures of a session from since_ns (its task's start): frames sent,
    delivered, dropped and late (both eyes), undecodable (a frame after a loss, until the next
    keyframe), added latency, bitrate per link, the image size and the capture rate."""
    frames = VideoFrames(messages, one_way_delay_ms, since_ns)
    # Motion to photon: from the console's command (its stamp) that the arm had last received
    # when a frame was captured, to that frame's picture at the master site: the command path,
    # the wait for the next capture, render, encode, the video path and the decode.
    commands = decoded(messages, PATIENT, topics.PSM_SERVO_CP)
    command_arrivals = np.array([t for t, _ in commands], dtype=np.int64)
    command_stamps = np.array([stamp_ns(m) for _, m in commands], dtype=np.int64)
    delivered = undecodable = 0
    latencies_ms, motion_to_photon_ms = [], []
    size = None
    for frame in frames.shown():
        delivered += 1
        if frame.image is None:
            undecodable += 1
            continue
        size = frame.image.shape[1], frame.image.shape[0]
        latencies_ms.append(frame.latency_ms)
        last = int(np.searchsorted(command_arrivals, frame.capture_ns, side="right")) - 1
        if last >= 0 and frame.capture_ns - command_arrivals[last] <= FOLLOWING_NS:
            motion_to_photon_ms.append((frame.shown_ns - command_stamps[last]) * 1e-6)
    frames_sent = sum(len(stamps) for stamps in frames.counted.values())
    left = sorted(frames.counted["left"])
    span_s = (left[-1] - left[0]) * 1e-9 if len(left) > 1 else 0.0
    latency, motion = percentiles(latencies_ms), percentiles(motion_to_photon_ms)
    return {
        "frames_sent": frames_sent,
        "frames_delivered": delivered,
        "frames_dropped": frames_sent - delivered,
        "frames_late": frames.late,
        "frames_undecodable": undecodable,
        "added_latency_ms": {"p50": latency["p50"], "p99": latency["p99"]},
        "motion_to_photon_ms": {"p50": motion["p50"], "p99": motion["p99"]},
        "bitrate_mbps": video_bitrate_mbps(patient_states),
        "width": size[0] if size else None,
        "height": size[1] if size else None,
        "fps": round((len(left) - 1) / span_s, 1) if span_s else None,
    }


def video_bitrate_mbps(patient_states: list) -> dict[str, float | None]:
    """Per link, the video's rate in Mbit/s over the patient bridge's reports, (arrival ns,
    /bridge/link_state message): every fragment (parity included) goes on every link."""
    counts = [(t, float(values[VIDEO_BYTES_KEY]))
              for t, message in patient_states
              if VIDEO_BYTES_KEY in (values := link_state_values(message)[LINK_OVERALL_ID][1])]
    if len(counts) < 2 or counts[-1][0] <= counts[0][0]:
        rate = None
    else:
        rate = round((counts[-1][1] - counts[0][1]) * 8e3 / (counts[-1][0] - counts[0][0]), 3)
    return dict.fromkeys(DEFAULT_LINKS, rate)


def print_video_summary(video: dict, say=print) -> None:
    latency, motion = video["added_latency_ms"], video["motion_to_photon_ms"]
    rates = ", ".join(f"{link} {rate} Mbit/s" for link, rate in video["bitrate_mbps"].items())
    say(f"  video: {video['width']}x{video['height']} per eye at {video['fps']} fps; "
        f"{video['frames_sent']} frames sent (both eyes), {video['frames_delivered']} delivered, "
        f"{video['frames_dropped']} dropped, {video['frames_late']} late, "
        f"{video['frames_undecodable']} undecodable; added latency p50 {latency['p50']} ms, "
        f"p99 {latency['p99']} ms; motion to photon p50 {motion['p50']} ms, p99 "
        f"{motion['p99']} ms; per link {rates}")
