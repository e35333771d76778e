"""video: the endoscope's video pipeline on this machine, link conditions emulated in virtual
time; then the command path through two real bridges while video flows, and motion to photon.

Per variant, FRAMES frames at FPS of the arm moving under the stereo endoscope: each pair is
rendered (MuJoCo, EGL), each eye encoded (H.264), fragmented with forward error correction
sized for the variant's loss, and every fragment sent on links a and b through a pacer per link
(the bandwidth cap, CAP_MBPS) and a linkem LinkModel per link (its profile's loss, delay and
queue, and link a's cut); the receiver takes each fragment as it arrives (copies from the other
link are duplicates), reassembles against the deadline and decodes. A lost frame makes the
receiver ask for a keyframe, which the sender's next frame is.

Video-added latency of a delivered frame: the sender's CPU time (encode, fragment) plus the
time its fragments waited for their pacers, plus the receiver's CPU time (reassembly, decode);
the variants' links have no delay of their own. Measured per eye, pooled. Variants:
- clean: no loss;
- loss_1pct: 1% random loss on both links;
- link_a_cut: link a cut for CUT_S in the middle of the run, link b clean;
- hd_clean: no loss, 1280x720 per eye ("3D HD"), fewer frames: what that size costs.

Command path, video off against video on: two BridgeCores (bridge_pair's sites, both in this
process) on two loopback links, commands at COMMAND_RATE_HZ from master to patient, their
one-way latency and losses, in windows that alternate without and with both eyes' H.264 frames
sent patient to master at FPS through the patient bridge's send_video (real frames, encoded
ahead of the windows so that encoding takes no CPU from the bridges while they are measured).

Motion to photon: the tool tip steps STEP_MM sideways (its joints at once, as a master step
would send them) at a random phase of the frame period; from the step until a decoded eye
shows it (its image differs from the eye's previous one by more than CHANGED_SHARE of its
pixels), over the transcontinental links (fiber on a, 5G on b). The wait for the next capture
and the links (pacers, linkem delay, jitter and loss) are modelled in virtual time; render,
encode with fragmenting, reassembly and decode are measured on this machine. The arm's own
response (controller, physics) and the display's refresh are not in it.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from telesurg.analysis.metrics import percentiles
from telesurg.arm.kinematics import ARM_JOINT_NAMES, HOME_POSITIONS, inverse
from telesurg.arm.simulation import ArmSimulation
from telesurg.bench import Result, Row
from telesurg.bench.bridge_pair import (
    DRAIN_S,
    READY_TIMEOUT_S,
    MachineLoad,
    Trial,
    _Site,
    bridge_ends,
    pooled_latency_ms,
)
from telesurg.bench.stream import paced
from telesurg.bridge.core import BridgeCore
from telesurg.contract.resources import arm_urdf
from telesurg.contract.topics import ENDOSCOPE_LEFT_COMPRESSED, ENDOSCOPE_RIGHT_COMPRESSED
from telesurg.linkem.model import PROFILES, LinkModel, LinkProfile, Outage
from telesurg.video import transport
from telesurg.video.camera import StereoEndoscope, home_tool_tip  # opens its own EGL context
from telesurg.video.codec import H264Decoder, H264Encoder

FPS = 30.0
FRAMES = 240  # 8 s
WIDTH, HEIGHT = 640, 480
HD_WIDTH, HD_HEIGHT, HD_FRAMES = 1280, 720, 90
CAP_MBPS = 20.0  # per link
BURST_BYTES = 64_000
DEADLINE_MS = 100.0  # a frame not complete this long after its first fragment is dropped
CUT_S = 5.0
LINKS = ("a", "b")
SEED = 1
#: Targets (DESIGN.md, issue 17).
ADDED_LATENCY_P99_MS = 40.0
DELIVERED_AT_1PCT = 0.99

#: The command path: the console's fastest master device, windows alternating video off and
#: on, and the frames sent in them: a clip encoded ahead, sent again and again.
COMMAND_RATE_HZ = 1000.0
WINDOW_S = 2.0
WINDOW_ROUNDS = 4  # each round a window without video, then one with
CLIP_S = 2.0
#: Targets: video costs the commands' p99 at most this, and loses none of them.
COMMAND_P99_GAP_MS = 1.0

#: Motion to photon: the tip's step, and the frames between steps (the view settles; not a
#: divisor of the 30-frame GOP, so that steps meet P-frames and keyframes alike).
STEP_MM = 3.0
STEPS = 40
FRAMES_PER_STEP = 4
#: A pixel changed by more than this in some channel has changed: H.264 noise on a still view
#: stays under 16 levels.
CHANGE_LEVELS = 32
#: An image with more of its pixels changed shows a step: a 3 mm step changes about 6%, a still
#: view none.
CHANGED_SHARE = 0.005


@dataclass(frozen=True)
class Conditions:
    """A variant: each link's linkem profile, and when link a is cut (seconds into the run)."""

    name: str
    profiles: dict[str, LinkProfile]
    cut_a: tuple[float, float] | None = None

    @property
    def loss_rate(self) -> float:
        """The loss the sender sizes parity for: the lossier link's (a cut is not planned for)."""
        return max(profile.expected_loss_pct for profile in self.profiles.values()) / 100.0

    def link_models(self) -> dict[str, LinkModel]:
        """A seeded model per link, link a's cut as its outage."""
        cut = {"a": (Outage(self.cut_a[0], self.cut_a[1] - self.cut_a[0]),)} if self.cut_a else {}
        return {link: LinkModel(self.profiles[link], SEED + i, cut.get(link, ()))
                for i, link in enumerate(LINKS)}


PERFECT = dict.fromkeys(LINKS, PROFILES["perfect"])
VARIANTS = (
    Conditions("clean", PERFECT),
    Conditions("loss_1pct", dict.fromkeys(LINKS, LinkProfile(loss_pct=1.0))),
    Conditions("link_a_cut", PERFECT,
               cut_a=((FRAMES / FPS - CUT_S) / 2, (FRAMES / FPS + CUT_S) / 2)),
)
TRANSCONTINENTAL = Conditions("transcontinental", {"a": PROFILES["fiber_transcontinental"],
                                                   "b": PROFILES["cellular_transcontinental"]})


@dataclass
class EyeStream:
    """One eye from encoder to decoder, and what it measured."""

    encoder: H264Encoder
    decoder: H264Decoder = field(default_factory=H264Decoder)
    assembler: transport.FrameAssembler = field(
        default_factory=lambda: transport.FrameAssembler(round(DEADLINE_MS * 1e6)))
    sent: int = 0
    decoded: int = 0
    late: int = 0  # decoded frames older than one shown before
    newest_shown: int = -1  # the number of the newest frame decoded
    added_ms: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    bytes_per_link: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LINKS, 0))


def _arm_pose(sim, t_s: float) -> None:
    """The arm moving as a surgeon's hand would, a few centimetres a second."""
    positions = HOME_POSITIONS.copy()
    positions[0] += 0.15 * np.sin(2 * np.pi * 0.5 * t_s)
    positions[1] += 0.10 * np.sin(2 * np.pi * 0.3 * t_s)
    positions[2] += 0.01 * np.sin(2 * np.pi * 0.7 * t_s)
    sim.place(positions)


def _stereo_pipeline(width: int, height: int, fps: float
                     ) -> tuple[ArmSimulation, list[EyeStream], dict[str, transport.Pacer]]:
    """The arm at home, both eyes' streams and the links' pacers."""
    sim = ArmSimulation(arm_urdf(), 0.002, HOME_POSITIONS)
    eyes = [EyeStream(H264Encoder(width, height, fps)) for _ in range(2)]
    pacers = {link: transport.Pacer(CAP_MBPS * 1e6 / 8, BURST_BYTES) for link in LINKS}
    return sim, eyes, pacers


def _render(endoscope: StereoEndoscope) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """The stereo pair, and how long rendering it took (ns)."""
    started = time.perf_counter_ns()
    images = endoscope.render()
    return images, time.perf_counter_ns() - started


def run_variant(conditions: Conditions, frames: int = FRAMES, fps: float = FPS,
                width: int = WIDTH, height: int = HEIGHT) -> dict:
    """The figures of one variant (see the module docstring)."""
    sim, eyes, pacers = _stereo_pipeline(width, height, fps)
    links = conditions.link_models()
    render_ms = []
    with StereoEndoscope(sim.model, sim.data, width, height) as endoscope:
        for index in range(frames):
            capture_ns = round(index / fps * 1e9)
            _arm_pose(sim, index / fps)
            images, render_ns = _render(endoscope)
            render_ms.append(render_ns * 1e-6)
            for eye, image in zip(eyes, images, strict=True):
                _send_frame(eye, image, index, capture_ns, conditions.loss_rate, pacers, links)
    delivered = sum(eye.decoded for eye in eyes)
    sent = sum(eye.sent for eye in eyes)
    duration_s = frames / fps
    counters = [eye.assembler.counters for eye in eyes]
    return {
        "frames_sent": sent,
        "frames_delivered": delivered,
        "frames_dropped": sent - delivered,
        "frames_late": sum(eye.late for eye in eyes),
        "frames_recovered_by_fec": sum(c.frames_recovered for c in counters),
        "added_latency_ms": percentiles([ms for eye in eyes for ms in eye.added_ms]),
        **_stage_figures(render_ms, eyes),
        "bitrate_mbps": {link: round(sum(eye.bytes_per_link[link] for eye in eyes) * 8
                                     / duration_s / 1e6, 3) for link in LINKS},
        "width": width, "height": height, "fps": fps,
    }


def _stage_figures(render_ms: list[float], eyes: list[EyeStream]) -> dict:
    return {"render_stereo_ms": percentiles(render_ms),
            "encode_ms": percentiles([ms for eye in eyes for ms in eye.encode_ms]),
            "decode_ms": percentiles([ms for eye in eyes for ms in eye.decode_ms])}


def _send_frame(eye: EyeStream, image, index: int, capture_ns: int, loss_rate: float,
                pacers: dict[str, transport.Pacer], links: dict[str, LinkModel]
                ) -> list[tuple[int, np.ndarray]]:
    """One eye's frame through the pipeline, its parity sized for loss_rate; returns the frames
    decoded meanwhile: (when shown, ns; image)."""
    if eye.assembler.wants_keyframe and eye.sent:
        eye.encoder.request_keyframe()  # the receiver's request, in time for this frame
    started = time.perf_counter()
    encoded = eye.encoder.encode(image, index)
    k = transport.data_blocks(len(encoded.data))
    fragments = transport.fragment_frame(index, capture_ns, encoded.data, encoded.keyframe,
                                         parity=transport.parity_blocks(k, loss_rate))
    sender_ns = round((time.perf_counter() - started) * 1e9)
    eye.encode_ms.append(sender_ns * 1e-6)
    eye.sent += 1
    ready_ns = capture_ns + sender_ns
    arrivals = []
    for link in LINKS:
        pacer = pacers[link]
        leave_ns = ready_ns
        for fragment in fragments:
            leave_ns += pacer.wait_ns(len(fragment), leave_ns)
            pacer.take(len(fragment), leave_ns)
            eye.bytes_per_link[link] += len(fragment)
            arrivals += [(round(arrival_s * 1e9), fragment)
                         for arrival_s in links[link].schedule(leave_ns * 1e-9, len(fragment))]
    shown = []
    for arrival_ns, fragment in sorted(arrivals, key=lambda item: item[0]):
        started = time.perf_counter()
        for frame in eye.assembler.add(fragment, arrival_ns):
            decoded = eye.decoder.decode(frame.data)
            cost_ns = round((time.perf_counter() - started) * 1e9)
            if decoded is None:
                continue
            eye.late += frame.number <= eye.newest_shown
            eye.newest_shown = max(eye.newest_shown, frame.number)
            eye.decoded += 1
            eye.decode_ms.append(cost_ns * 1e-6)
            eye.added_ms.append((arrival_ns + cost_ns - capture_ns) * 1e-6)
            shown.append((arrival_ns + cost_ns, decoded))
    return shown


# Command path: video off against video on -------------------------------------------------

def encoded_clip(seconds: float = CLIP_S, width: int = WIDTH, height: int = HEIGHT,
                 fps: float = FPS) -> list[tuple[bytes, bytes]]:
    """(left, right) frames of the arm moving, H.264 and serialized as the endoscope node
    publishes them (sensor_msgs/CompressedImage CDR), ready for a bridge's send_video."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage

    sim = ArmSimulation(arm_urdf(), 0.002, HOME_POSITIONS)
    encoders = [H264Encoder(width, height, fps) for _ in range(2)]
    clip = []
    with StereoEndoscope(sim.model, sim.data, width, height) as endoscope:
        for index in range(round(seconds * fps)):
            _arm_pose(sim, index / fps)
            images = endoscope.render()
            clip.append(tuple(serialize_message(CompressedImage(
                format="h264", data=encoder.encode(image, index).data))
                for encoder, image in zip(encoders, images, strict=True)))
    return clip


class _MasterSite(_Site):
    """The master site, in this process: its bridge delivers the patient's video frames (the
    bridge core counts them), not commands to read."""

    def deliver(self, cdr: bytes) -> None:
        pass


def _send_clip(core: BridgeCore, clip: list[tuple[bytes, bytes]], duration_s: float) -> None:
    """Both eyes' frames at FPS for duration_s through core's send_video, as the patient bridge
    node hands them over."""
    by_name = {topic.name: topic.index for topic in core.config.outgoing}
    eyes = (by_name[ENDOSCOPE_LEFT_COMPRESSED.name], by_name[ENDOSCOPE_RIGHT_COMPRESSED.name])
    for number in paced(FPS, duration_s):
        for topic_index, frame in zip(eyes, clip[number % len(clip)], strict=True):
            core.send_video(topic_index, frame)


def _video_counts(master: _Site, patient: _Site) -> dict[str, int]:
    sent = patient.end.core.video
    delivered = sum(counters.frames_delivered
                    for counters in master.end.core.video_assembly().values())
    return {"frames_sent": sent.frames_sent, "frames_delivered": delivered,
            "video_bytes_per_link": sent.bytes_sent}


def _command_window(master: _Site, patient: _Site, clip: list[tuple[bytes, bytes]],
                    video_on: bool, rate_hz: float, window_s: float) -> Trial:
    """One window of commands, with the clip flowing the other way if video_on."""
    patient.arrivals = []  # every window's commands are numbered from 0
    patient.listen()
    before = _video_counts(master, patient)
    video = threading.Thread(target=_send_clip, args=(patient.end.core, clip, window_s),
                             name="bench_video", daemon=True) if video_on else None
    if video is not None:
        video.start()
    stream = master.stream(rate_hz, window_s)
    if video is not None:
        video.join()
    time.sleep(DRAIN_S)
    received = patient.finish()
    counts = {name: count - before[name]
              for name, count in _video_counts(master, patient).items()}
    return Trial(stream["sent"], received["arrivals"], stream["send_rate_hz"],
                 {"process": stream["cpu_percent"]}, {**received["counters"], **counts})


def command_path(clip: list[tuple[bytes, bytes]], rounds: int = WINDOW_ROUNDS,
                 window_s: float = WINDOW_S, rate_hz: float = COMMAND_RATE_HZ) -> dict:
    """Commands through two bridges on two loopback links in windows alternating video off and
    on (see the module docstring): figures per variant, and the p99 gap between them."""
    trials: dict[str, list[Trial]] = {"video_off": [], "video_on": []}
    master, patient = _MasterSite(), _Site()
    with tempfile.TemporaryDirectory(prefix="telesurg-bench-") as folder, \
            bridge_ends(Path(folder)) as (master_spec, patient_spec, _):
        try:
            master.open(master_spec)
            patient.open(patient_spec)
            master.ready(READY_TIMEOUT_S)
            patient.ready(READY_TIMEOUT_S)
            for _ in range(rounds):
                for variant, video_on in (("video_off", False), ("video_on", True)):
                    trials[variant].append(
                        _command_window(master, patient, clip, video_on, rate_hz, window_s))
        finally:
            master.close()
            patient.close()
    figures = {variant: _command_figures(windows, window_s)
               for variant, windows in trials.items()}
    gap = figures["video_on"]["latency_ms"]["p99"] - figures["video_off"]["latency_ms"]["p99"]
    return {**figures, "p99_gap_ms": round(gap, 4), "rate_hz": rate_hz, "window_s": window_s,
            "windows_per_variant": rounds}


def _command_figures(windows: list[Trial], window_s: float) -> dict:
    """One variant's windows pooled."""
    summaries = [window.summary() for window in windows]
    counts = {name: sum(window.counters[name] for window in windows)
              for name in windows[0].counters}
    video_bytes = counts.pop("video_bytes_per_link")
    return {"commands_sent": sum(summary["sent"] for summary in summaries),
            "commands_lost": sum(summary["lost"] for summary in summaries),
            "latency_ms": pooled_latency_ms(windows),
            "video_mbps_per_link": round(video_bytes * 8 / (len(windows) * window_s) / 1e6, 3),
            "process_cpu_percent": round(float(np.mean(
                [window.cpu_percent["process"] for window in windows])), 1),
            **counts}


# Motion to photon --------------------------------------------------------------------------

def _stepped_positions(step_mm: float) -> np.ndarray:
    """The joints (inverse kinematics) that put the tool tip step_mm from home along x, its
    orientation kept: where a step of the master sends the arm."""
    pose = home_tool_tip()
    pose[0, 3] += step_mm * 1e-3
    return np.concatenate([inverse(pose).q, HOME_POSITIONS[len(ARM_JOINT_NAMES):]])


def changed_share(before: np.ndarray, after: np.ndarray) -> float:
    """The share of pixels that changed by more than CHANGE_LEVELS in some channel."""
    difference = np.maximum(before, after) - np.minimum(before, after)  # |after - before|, uint8
    changed = difference > CHANGE_LEVELS
    return float((changed[..., 0] | changed[..., 1] | changed[..., 2]).mean())


def motion_to_photon(steps: int = STEPS, conditions: Conditions = TRANSCONTINENTAL,
                     width: int = WIDTH, height: int = HEIGHT, fps: float = FPS) -> dict:
    """Step the tip back and forth every FRAMES_PER_STEP frames, each step at a random phase
    of the frame period before the capture that first sees it; per eye, the time from the step
    until a decoded image differs from that eye's previous one (see the module docstring)."""
    rng = random.Random(SEED)
    sim, eyes, pacers = _stereo_pipeline(width, height, fps)
    links = conditions.link_models()
    poses = (HOME_POSITIONS, _stepped_positions(STEP_MM))
    period_ns = round(1e9 / fps)
    step_ns: list[int | None] = [None, None]  # per eye: the step it has not shown yet
    previous: list[np.ndarray | None] = [None, None]  # per eye: the image shown last
    latency_ms, wait_ms, render_ms, step_shares, still_shares = [], [], [], [], []
    with StereoEndoscope(sim.model, sim.data, width, height) as endoscope:
        sim.place(poses[0])
        for index in range((steps + 1) * FRAMES_PER_STEP):  # a still start, then the steps
            capture_ns = index * period_ns
            if index and index % FRAMES_PER_STEP == 0:
                sim.place(poses[index // FRAMES_PER_STEP % 2])
                stepped_ns = capture_ns - rng.randrange(period_ns)
                wait_ms.append((capture_ns - stepped_ns) * 1e-6)
                step_ns = [stepped_ns, stepped_ns]
            images, render_ns = _render(endoscope)
            render_ms.append(render_ns * 1e-6)
            for side, (eye, image) in enumerate(zip(eyes, images, strict=True)):
                # The image exists once rendered.
                for shown_ns, decoded in _send_frame(eye, image, index, capture_ns + render_ns,
                                                     conditions.loss_rate, pacers, links):
                    if previous[side] is not None:
                        share = changed_share(previous[side], decoded)
                        if step_ns[side] is None:
                            still_shares.append(share)
                        elif share > CHANGED_SHARE:
                            latency_ms.append((shown_ns - step_ns[side]) * 1e-6)
                            step_shares.append(share)
                            step_ns[side] = None
                    previous[side] = decoded
    return {
        "motion_to_photon_ms": percentiles(latency_ms),
        "steps": steps,
        "steps_shown": len(latency_ms),  # both eyes
        "false_steps": sum(share > CHANGED_SHARE for share in still_shares),
        "step_changed_share_min": round(min(step_shares, default=0.0), 4),
        "still_changed_share_max": round(max(still_shares, default=0.0), 4),
        "capture_wait_ms": percentiles(wait_ms),
        **_stage_figures(render_ms, eyes),
        "link_delay_ms": {link: conditions.profiles[link].delay_ms for link in LINKS},
        "width": width, "height": height, "fps": fps,
    }


# The report --------------------------------------------------------------------------------

def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pipeline_rows(figures: dict) -> list[Row]:
    rows = []
    for name, f in figures.items():
        added = f["added_latency_ms"]
        rows += [
            Row(name, "frames sent / delivered / dropped / late",
                f"{f['frames_sent']} / {f['frames_delivered']} / {f['frames_dropped']} / "
                f"{f['frames_late']}", "late 0", f["frames_late"] == 0),
            Row(name, "video-added latency p50 / p99 (ms)",
                f"{_ms(added['p50'])} / {_ms(added['p99'])}",
                f"p99 <= {ADDED_LATENCY_P99_MS:g}",
                added["p99"] is not None and added["p99"] <= ADDED_LATENCY_P99_MS),
            Row(name, "bitrate per link (Mbit/s)",
                ", ".join(f"{link} {rate}" for link, rate in f["bitrate_mbps"].items())),
        ]
    cut = figures["link_a_cut"]
    rows.append(Row("link_a_cut", f"frames lost, link a cut {CUT_S:g} s",
                    str(cut["frames_dropped"]), "0", cut["frames_dropped"] == 0))
    lossy = figures["loss_1pct"]
    share = lossy["frames_delivered"] / lossy["frames_sent"]
    rows.append(Row("loss_1pct", "frames delivered at 1% loss", f"{share:.1%}",
                    f">= {DELIVERED_AT_1PCT:.0%}", share >= DELIVERED_AT_1PCT))
    return rows


def _command_rows(figures: dict) -> list[Row]:
    rate = f"{figures['rate_hz']:g} Hz"
    rows = []
    for variant in ("video_off", "video_on"):
        f = figures[variant]
        latency = f["latency_ms"]
        video_on = variant == "video_on"
        rows += [
            Row(variant, f"commands at {rate}: sent / lost", f"{f['commands_sent']} / "
                f"{f['commands_lost']}", "lost 0" if video_on else "",
                f["commands_lost"] == 0 if video_on else None),
            Row(variant, "command latency p50 / p99 (ms), two bridges on loopback",
                f"{latency['p50']:.3f} / {latency['p99']:.3f}",
                f"p99 within {COMMAND_P99_GAP_MS:g} ms of video_off" if video_on else "",
                abs(figures["p99_gap_ms"]) <= COMMAND_P99_GAP_MS if video_on else None),
            Row(variant, "video frames sent / delivered (both eyes), Mbit/s per link",
                f"{f['frames_sent']} / {f['frames_delivered']}, {f['video_mbps_per_link']}"),
        ]
    return rows


def _motion_rows(f: dict) -> list[Row]:
    latency = f["motion_to_photon_ms"]
    return [
        Row("transcontinental", "motion-to-photon p50 / p99 (ms): capture wait and links "
            "modelled; render, encode, reassemble, decode measured",
            f"{_ms(latency['p50'])} / {_ms(latency['p99'])}"),
        Row("transcontinental", f"steps of {STEP_MM:g} mm shown (both eyes) / false steps",
            f"{f['steps_shown']} of {2 * f['steps']} / {f['false_steps']}",
            "all, 0 false", f["steps_shown"] == 2 * f["steps"] and f["false_steps"] == 0),
    ]


def run() -> Result:
    load = MachineLoad()
    figures = {variant.name: run_variant(variant) for variant in VARIANTS}
    figures["hd_clean"] = run_variant(VARIANTS[0], frames=HD_FRAMES, width=HD_WIDTH,
                                      height=HD_HEIGHT)
    rows = _pipeline_rows(figures)
    notes = [f"{WIDTH}x{HEIGHT} per eye at {FPS:g} fps, {FRAMES} frames per variant "
             f"(hd_clean: {HD_WIDTH}x{HD_HEIGHT}, {HD_FRAMES}), links capped at {CAP_MBPS:g} "
             f"Mbit/s each, deadline {DEADLINE_MS:g} ms; links emulated in virtual time, no "
             "bridge or DDS in the path"]
    for name in ("clean", "hd_clean"):
        f = figures[name]
        notes.append(f"{name} ({f['width']}x{f['height']}), p50 per frame: render a stereo pair "
                     f"{_ms(f['render_stereo_ms']['p50'])} ms, encode one eye (with fragmenting) "
                     f"{_ms(f['encode_ms']['p50'])} ms, decode one eye "
                     f"{_ms(f['decode_ms']['p50'])} ms")

    commands = figures["command_path"] = command_path(encoded_clip())
    rows += _command_rows(commands)
    notes.append(
        f"command path: two BridgeCores in this process (one interpreter lock for both sites: "
        f"harsher than two bridge processes) on two loopback links; "
        f"{commands['windows_per_variant']} windows of {commands['window_s']:g} s per variant, "
        f"video_off and video_on alternating; video_on sends both eyes of a {CLIP_S:g} s clip "
        f"({WIDTH}x{HEIGHT}, {FPS:g} fps) encoded before the windows, so no encoding competes "
        f"with the bridges; p99 gap {commands['p99_gap_ms']:.3f} ms; this process's CPU "
        f"{commands['video_off']['process_cpu_percent']}% of a core without video, "
        f"{commands['video_on']['process_cpu_percent']}% with")

    motion = figures["motion_to_photon"] = motion_to_photon()
    rows += _motion_rows(motion)
    notes.append(
        f"motion to photon: {motion['steps']} steps of the tool tip by {STEP_MM:g} mm, each at a "
        f"random phase of the frame period; shown when a decoded image differs from its eye's "
        f"previous one in over {CHANGED_SHARE:.1%} of its pixels (by > {CHANGE_LEVELS} levels): "
        f"steps changed at least {motion['step_changed_share_min']:.1%}, still frames at most "
        f"{motion['still_changed_share_max']:.1%}. p50: capture wait "
        f"{_ms(motion['capture_wait_ms']['p50'])} ms (modelled), render "
        f"{_ms(motion['render_stereo_ms']['p50'])}, encode "
        f"{_ms(motion['encode_ms']['p50'])}, decode {_ms(motion['decode_ms']['p50'])} ms "
        f"(measured); links modelled (linkem): a fiber, one-way "
        f"{motion['link_delay_ms']['a']:g} ms, b 5G {motion['link_delay_ms']['b']:g} ms, with "
        f"their jitter and loss; arm response and display refresh not included")
    result = Result("video", figures, rows, notes=notes)
    load.annotate(result)
    return result
