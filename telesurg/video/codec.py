"""H.264 coding of the endoscope's frames for a link where latency matters more than bits.

The encoder is libx264 with preset ultrafast and tune zerolatency: no B-frames, no lookahead and
no frame threading, so every frame in gives its own access unit out at once (encode() checks
it). Keyframes are IDR frames with the SPS and PPS in front, so that a decoder can start at any
of them: one every gop_frames (a closed GOP, 1 s by default) and one whenever request_keyframe()
asks (a receiver that lost a frame asks rather than waits). Periodic intra refresh would spread
the keyframe's burst of bytes over the GOP, but FFmpeg's decoder then heals only gradually after
a loss and there is no single frame to join at, so keyframes are whole IDR frames.

The decoder turns access units (Annex B bytes, as encode() gives them) back into RGB images and
never raises on bad input: it counts the error and waits for the next keyframe. Pure Python
over PyAV (FFmpeg); no rclpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

ENCODER = "libx264"
DECODER = "h264"

#: Annex B start code: every NAL unit of an access unit follows one.
_START_CODE = b"\x00\x00\x01"
_NAL_TYPE_MASK = 0x1F
_NAL_IDR_SLICE = 5
_NAL_SLICE_TYPES = range(1, 6)  # coded slices: non-IDR (1-4) and IDR (5)
#: Colour conversion in the calling thread, by a kept converter: a fresh one per frame (PyAV's
#: default) sets up swscale and its threads every time, which costs more than the conversion.
_SWSCALE_THREADS = 1


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes
    """The frame's whole access unit (Annex B: start codes, SPS and PPS before a keyframe)."""
    keyframe: bool
    """An IDR frame: a decoder can start here, and needs nothing sent before it."""
    pts: int
    """The frame's presentation time, in 1/fps ticks, as given to encode()."""


class H264Encoder:
    """RGB frames to H.264 access units, one out for each one in (zero latency)."""

    def __init__(self, width: int, height: int, fps: float, gop_frames: int | None = None,
                 crf: float = 23.0, bitrate_bps: int | None = None, vbv_buffer_s: float = 0.2,
                 threads: int = 0):
        """gop_frames: frames from one periodic keyframe to the next (default: fps, 1 s).
        Quality: constant rate factor crf (lower is better, 0-51) unless bitrate_bps is given;
        then x264's VBV holds the rate to bitrate_bps over any vbv_buffer_s window, which also
        bounds a keyframe's burst. threads: x264's sliced threads (0: its choice), which add no
        delay."""
        require_encoder()
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"frame size must be positive and even (4:2:0), got {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        rate = Fraction(fps).limit_denominator(1001)
        gop = round(fps) if gop_frames is None else gop_frames
        if gop < 1:
            raise ValueError(f"gop_frames must be at least 1, got {gop_frames}")
        self.width, self.height, self.gop_frames = width, height, gop
        # No scene-cut keyframes: only the periodic and the requested ones, for a steady rate.
        params = [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0", "bframes=0",
                  "repeat-headers=1"]
        options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"}
        context = av.CodecContext.create(ENCODER, "w")
        if bitrate_bps is None:
            options["crf"] = f"{crf:g}"
        else:
            if bitrate_bps <= 0 or vbv_buffer_s <= 0:
                raise ValueError("bitrate_bps and vbv_buffer_s must be positive")
            kbps = max(1, round(bitrate_bps / 1000))
            params += [f"vbv-maxrate={kbps}", f"vbv-bufsize={max(1, round(kbps * vbv_buffer_s))}"]
            context.bit_rate = bitrate_bps
        options["x264-params"] = ":".join(params)
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.time_base = 1 / rate
        context.framerate = rate
        context.gop_size = gop
        context.max_b_frames = 0
        context.thread_count = threads
        context.options = options
        context.open()
        self._context = context
        self._to_yuv = VideoReformatter()
        self._keyframe_requested = False
        self._last_pts: int | None = None
        self.frames_encoded = 0
        self.keyframes = 0

    def request_keyframe(self) -> None:
        """Make the next encoded frame a keyframe (IDR); the periodic GOP restarts there."""
        self._keyframe_requested = True

    def encode(self, rgb: np.ndarray, pts: int) -> EncodedFrame:
        """Encode one frame (height x width x 3 uint8 RGB) with presentation time pts (1/fps
        ticks, strictly increasing). Returns this frame's access unit: never a later one."""
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"expected a {self.height}x{self.width}x3 uint8 RGB image, got "
                             f"{rgb.shape} {rgb.dtype}")
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: {pts} after {self._last_pts}")
        frame = self._to_yuv.reformat(
            av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"),
            format="yuv420p", threads=_SWSCALE_THREADS)
        frame.pts = pts
        requested = self._keyframe_requested
        if requested:
            frame.pict_type = PictureType.I  # with forced-idr, an IDR frame
        packets = self._context.encode(frame)
        if len(packets) != 1 or packets[0].pts != pts:
            raise RuntimeError(f"{ENCODER} gave {len(packets)} packets for frame {pts} "
                               "(expected exactly its own: zero latency is broken)")
        packet = packets[0]
        keyframe = bool(packet.is_keyframe)
        if requested and not keyframe:
            raise RuntimeError(f"{ENCODER} did not make the requested keyframe at frame {pts}")
        self._keyframe_requested = False
        self._last_pts = pts
        self.frames_encoded += 1
        self.keyframes += keyframe
        return EncodedFrame(data=bytes(packet), keyframe=keyframe, pts=pts)


class H264Decoder:
    """H.264 access units to RGB images, robust to loss and to bad bytes.

    A decoder must start at a keyframe: frames that reference lost ones decode to garbage
    (FFmpeg conceals and carries on). So decode() drops frames (returns None) until a keyframe
    at the start, after reset() (the caller's word that a frame was lost) and after any decoding
    error. It cannot tell a damaged frame that still parses from a good one: the transport
    delivers whole frames or reports them lost.
    """

    def __init__(self):
        _require_codec(DECODER, "decoder")
        self._open()
        self._to_rgb = VideoReformatter()
        self._synced = False
        self.frames_decoded = 0
        self.frames_dropped = 0  # not decoded: the decoder waited for a keyframe
        self.errors = 0  # refused by FFmpeg (then the decoder waits for a keyframe)
        self.last_error = ""

    def _open(self) -> None:
        context = av.CodecContext.create(DECODER, "r")
        # Slice threads only: frame threads would hold each frame back a frame per thread.
        context.thread_type = "SLICE"
        context.options = {"flags": "low_delay"}
        self._context = context

    @property
    def waiting_for_keyframe(self) -> bool:
        return not self._synced

    def reset(self) -> None:
        """A frame was lost: drop what follows until the next keyframe."""
        self._synced = False

    def decode(self, data: bytes) -> np.ndarray | None:
        """The image (height x width x 3 uint8 RGB) of one access unit, or None when there is
        none to show: dropped while waiting for a keyframe, or bad data (counted in errors)."""
        if not self._synced and not is_keyframe(data):
            self.frames_dropped += 1
            return None
        if not data:  # an empty packet would drain the decoder for good
            return self._failed("empty access unit")
        try:
            frames = self._context.decode(av.Packet(data))
            images = [self._to_rgb.reformat(frame, format="rgb24", threads=_SWSCALE_THREADS)
                      .to_ndarray() for frame in frames]
        except (av.FFmpegError, ValueError) as error:
            return self._failed(str(error))
        if not images:  # e.g. parameter sets alone: nothing to show, nothing wrong
            return None
        self._synced = True
        self.frames_decoded += 1
        return images[-1]

    def _failed(self, reason: str) -> None:
        self.errors += 1
        self.last_error = reason
        self._synced = False
        self._open()  # a fresh decoder: no state left from the bad data
        return None


_NAL_SPS = 7
#: Profiles whose SPS carries chroma format, bit depths and scaling matrices (H.264 7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class FrameContinuity:
    """Tells whether an H.264 stream lost a frame before this one, from the stream itself.

    Every frame of the endoscope's streams is a reference frame (no B-frames), so each one's
    frame_num (slice header) is the one before's plus 1, modulo MaxFrameNum (from the SPS that
    precedes every keyframe), and 0 at a keyframe. A capture that comes late is no loss; a
    frame_num that skips is, whatever the time between the frames."""

    def __init__(self):
        self._log2_max_frame_num: int | None = None
        self._separate_colour_plane = False
        self._last: int | None = None

    def follows(self, data: bytes) -> bool:
        """Whether access unit data follows the one given before with none lost between (a
        keyframe always does; a frame before any SPS, or that does not parse, does not)."""
        frame_num = None
        for nal_type, payload in _nal_units(data):
            try:
                if nal_type == _NAL_SPS:
                    self._read_sps(_BitReader(payload))
                elif nal_type in _NAL_SLICE_TYPES:
                    if nal_type == _NAL_IDR_SLICE:  # frame_num 0
                        self._last = 0
                        return True
                    frame_num = self._read_frame_num(_BitReader(payload))
                    break
            except (IndexError, ValueError):
                break
        last, self._last = self._last, frame_num
        if frame_num is None or last is None:
            return False
        return frame_num == (last + 1) % (1 << self._log2_max_frame_num)

    def _read_sps(self, bits: _BitReader) -> None:
        profile_idc = bits.read(8)
        bits.read(16)  # constraint flags and level
        bits.read_ue()  # seq_parameter_set_id
        self._separate_colour_plane = False
        if profile_idc in _HIGH_PROFILES:
            if bits.read_ue() == 3:  # chroma_format_idc 4:4:4
                self._separate_colour_plane = bool(bits.read(1))
            bits.read_ue()  # bit_depth_luma_minus8
            bits.read_ue()  # bit_depth_chroma_minus8
            bits.read(1)  # qpprime_y_zero_transform_bypass_flag
            if bits.read(1):
                raise ValueError("scaling matrices in the SPS: not read here")
        self._log2_max_frame_num = bits.read_ue() + 4

    def _read_frame_num(self, bits: _BitReader) -> int | None:
        if self._log2_max_frame_num is None:
            return None
        bits.read_ue()  # first_mb_in_slice
        bits.read_ue()  # slice_type
        bits.read_ue()  # pic_parameter_set_id
        if self._separate_colour_plane:
            bits.read(2)  # colour_plane_id
        return bits.read(self._log2_max_frame_num)


class _BitReader:
    """Reads a NAL unit's header fields: fixed-width and Exp-Golomb (ue(v)) numbers."""

    def __init__(self, header: bytes):
        # Emulation prevention bytes (00 00 03) are not part of the fields.
        header = header.replace(b"\x00\x00\x03", b"\x00\x00")
        self._bits = "".join(f"{byte:08b}" for byte in header)
        self._at = 0

    def read(self, width: int) -> int:
        if self._at + width > len(self._bits):
            raise IndexError("NAL unit ends inside a field")
        value = int(self._bits[self._at:self._at + width] or "0", 2)
        self._at += width
        return value

    def read_ue(self) -> int:
        zeros = 0
        while self.read(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb number over 32 bits")
        return (1 << zeros) - 1 + self.read(zeros)


#: What is read of a NAL unit after its header: the SPS fields and a slice header's first ones
#: lie well within it (a whole slice would be copied for nothing).
_FIELD_BYTES = 64


def _nal_units(data: bytes):
    """(nal_unit_type, the first _FIELD_BYTES after the NAL header) of each NAL unit of an
    Annex B access unit, in order. The next unit is looked for only when asked for: a reader
    that stops at the first slice does not scan the slice's bytes."""
    start = data.find(_START_CODE)
    while 0 <= start < len(data) - len(_START_CODE):
        begin = start + len(_START_CODE)
        fields_end = begin + 1 + _FIELD_BYTES
        next_unit = data.find(_START_CODE, begin, fields_end)
        yield data[begin] & _NAL_TYPE_MASK, data[begin + 1:fields_end if next_unit < 0
                                                 else next_unit]
        start = data.find(_START_CODE, begin)


def is_keyframe(data: bytes) -> bool:
    """Whether an Annex B access unit is a keyframe: its first coded slice is an IDR slice."""
    return next((nal_type == _NAL_IDR_SLICE for nal_type, _ in _nal_units(data)
                 if nal_type in _NAL_SLICE_TYPES), False)


def require_encoder() -> None:
    """RuntimeError saying what to install if PyAV's FFmpeg cannot encode H.264."""
    _require_codec(ENCODER, "encoder")


def _require_codec(name: str, role: str) -> None:
    if name not in av.codecs_available:
        raise RuntimeError(f"PyAV's FFmpeg has no {name} {role} (H.264 video needs it): install "
                           "PyAV's wheels from PyPI, which include it, or build PyAV against an "
                           f"FFmpeg with {name}")
