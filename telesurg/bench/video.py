"""video: the endoscope's video pipeline on this machine, link conditions emulated in virtual
time (no bridge processes, no DDS yet: what the pipeline itself costs and delivers).

Per variant, FRAMES frames at FPS of the arm moving under the stereo endoscope: each pair is
rendered (MuJoCo, EGL), each eye encoded (H.264), fragmented with forward error correction
sized for the variant's loss, and every fragment sent on links a and b through a pacer per link
(the bandwidth cap, CAP_MBPS); a link drops it by its loss, or all of it while cut; the
receiver takes each fragment as it arrives (copies from the other link are duplicates),
reassembles against the deadline and decodes. A lost frame makes the receiver ask for a
keyframe, which the sender's next frame is.

Video-added latency of a delivered frame: the sender's CPU time (encode, fragment) plus the
time its fragments waited for their pacers, plus the receiver's CPU time (reassembly, decode);
the links' own delay is not in it. Measured per eye, pooled. Variants:
- clean: no loss;
- loss_1pct: 1% random loss on both links;
- link_a_cut: link a cut for CUT_S in the middle of the run, link b clean;
- hd_clean: no loss, 1280x720 per eye ("3D HD"), fewer frames: what that size costs.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np

from telesurg.analysis.metrics import percentiles
from telesurg.arm.kinematics import HOME_POSITIONS
from telesurg.arm.simulation import ArmSimulation
from telesurg.bench import Result, Row
from telesurg.contract.resources import arm_urdf
from telesurg.video import transport
from telesurg.video.camera import StereoEndoscope  # opens its own EGL context
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


@dataclass(frozen=True)
class Conditions:
    """A variant: each link's random loss, and when link a is cut (seconds into the run)."""

    name: str
    loss: dict[str, float]
    cut_a: tuple[float, float] | None = None

    def lost(self, link: str, t_s: float, rng: random.Random) -> bool:
        if link == "a" and self.cut_a is not None and self.cut_a[0] <= t_s < self.cut_a[1]:
            return True
        return rng.random() < self.loss[link]


VARIANTS = (
    Conditions("clean", {"a": 0.0, "b": 0.0}),
    Conditions("loss_1pct", {"a": 0.01, "b": 0.01}),
    Conditions("link_a_cut", {"a": 0.0, "b": 0.0},
               cut_a=((FRAMES / FPS - CUT_S) / 2, (FRAMES / FPS + CUT_S) / 2)),
)


@dataclass
class EyeStream:
    """One eye from encoder to decoder, and what it measured."""

    encoder: H264Encoder
    decoder: H264Decoder = field(default_factory=H264Decoder)
    assembler: transport.FrameAssembler = field(
        default_factory=lambda: transport.FrameAssembler(round(DEADLINE_MS * 1e6)))
    sent: int = 0
    decoded: int = 0
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


def run_variant(conditions: Conditions, frames: int = FRAMES, fps: float = FPS,
                width: int = WIDTH, height: int = HEIGHT) -> dict:
    """The figures of one variant (see the module docstring)."""
    rng = random.Random(SEED)
    sim = ArmSimulation(arm_urdf(), 0.002, HOME_POSITIONS)
    eyes = [EyeStream(H264Encoder(width, height, fps)) for _ in range(2)]
    pacers = {link: transport.Pacer(CAP_MBPS * 1e6 / 8, BURST_BYTES) for link in LINKS}
    render_ms = []
    late = 0
    with StereoEndoscope(sim.model, sim.data, width, height) as endoscope:
        for index in range(frames):
            capture_ns = round(index / fps * 1e9)
            _arm_pose(sim, index / fps)
            started = time.perf_counter()
            images = endoscope.render()
            render_ms.append((time.perf_counter() - started) * 1e3)
            for eye, image in zip(eyes, images, strict=True):
                late += _send_frame(eye, image, index, capture_ns, conditions, pacers, rng)
    delivered = sum(eye.decoded for eye in eyes)
    sent = sum(eye.sent for eye in eyes)
    duration_s = frames / fps
    counters = [eye.assembler.counters for eye in eyes]
    return {
        "frames_sent": sent,
        "frames_delivered": delivered,
        "frames_dropped": sent - delivered,
        "frames_late": late,
        "frames_recovered_by_fec": sum(c.frames_recovered for c in counters),
        "added_latency_ms": percentiles([ms for eye in eyes for ms in eye.added_ms]),
        "render_stereo_ms": percentiles(render_ms),
        "encode_ms": percentiles([ms for eye in eyes for ms in eye.encode_ms]),
        "decode_ms": percentiles([ms for eye in eyes for ms in eye.decode_ms]),
        "bitrate_mbps": {link: round(sum(eye.bytes_per_link[link] for eye in eyes) * 8
                                     / duration_s / 1e6, 3) for link in LINKS},
        "width": width, "height": height, "fps": fps,
    }


def _send_frame(eye: EyeStream, image, index: int, capture_ns: int, conditions: Conditions,
                pacers: dict, rng: random.Random) -> int:
    """One eye's frame through the pipeline; returns 1 if a decoded frame was older than one
    shown before (late), else 0."""
    if eye.assembler.wants_keyframe and eye.sent:
        eye.encoder.request_keyframe()  # the receiver's request, in time for this frame
    started = time.perf_counter()
    encoded = eye.encoder.encode(image, index)
    loss = max(conditions.loss.values())
    k = transport.data_blocks(len(encoded.data))
    fragments = transport.fragment_frame(index, capture_ns, encoded.data, encoded.keyframe,
                                         parity=transport.parity_blocks(k, loss))
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
            if not conditions.lost(link, leave_ns * 1e-9, rng):
                arrivals.append((leave_ns, fragment))
    late = 0
    for arrival_ns, fragment in sorted(arrivals, key=lambda item: item[0]):
        started = time.perf_counter()
        for frame in eye.assembler.add(fragment, arrival_ns):
            image = eye.decoder.decode(frame.data)
            cost_ns = round((time.perf_counter() - started) * 1e9)
            if image is None:
                continue
            if frame.number <= eye.newest_shown:
                late += 1
            eye.newest_shown = max(eye.newest_shown, frame.number)
            eye.decoded += 1
            eye.decode_ms.append(cost_ns * 1e-6)
            eye.added_ms.append((arrival_ns + cost_ns - capture_ns) * 1e-6)
    return late


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def run() -> Result:
    figures = {variant.name: run_variant(variant) for variant in VARIANTS}
    figures["hd_clean"] = run_variant(VARIANTS[0], frames=HD_FRAMES, width=HD_WIDTH,
                                      height=HD_HEIGHT)
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
    notes = [f"{WIDTH}x{HEIGHT} per eye at {FPS:g} fps, {FRAMES} frames per variant "
             f"(hd_clean: {HD_WIDTH}x{HD_HEIGHT}, {HD_FRAMES}), links capped at {CAP_MBPS:g} "
             f"Mbit/s each, deadline {DEADLINE_MS:g} ms; links emulated in virtual time, no "
             "bridge or DDS in the path yet"]
    for name in ("clean", "hd_clean"):
        f = figures[name]
        notes.append(f"{name} ({f['width']}x{f['height']}), p50 per frame: render a stereo pair "
                     f"{_ms(f['render_stereo_ms']['p50'])} ms, encode one eye (with fragmenting) "
                     f"{_ms(f['encode_ms']['p50'])} ms, decode one eye "
                     f"{_ms(f['decode_ms']['p50'])} ms")
    return Result("video", figures, rows, notes=notes)
