"""H.264 coding of the endoscope's frames: round trip quality, zero latency, keyframes on
request, and a decoder that survives lost frames and bad bytes."""

import av
import numpy as np
import pytest

from telesurg.video import codec
from telesurg.video.codec import FrameContinuity, H264Decoder, H264Encoder, is_keyframe

WIDTH, HEIGHT, FPS = 320, 240, 30


def scene(index: int) -> np.ndarray:
    """A smooth background that drifts and a textured square that moves: frame `index`."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[..., 0] = (x * 200 // WIDTH + 2 * index) % 256
    image[..., 1] = (y * 200 // HEIGHT + 40) % 256
    image[..., 2] = ((x + y) // 4 + 3 * index) % 256
    left, top = 20 + 4 * index, 60 + 2 * index
    image[top:top + 48, left:left + 48] = np.where(
        ((x[:48, :48] // 8 + y[:48, :48] // 8) % 2)[..., None] == 0, 230, 30)
    return image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10.0 * np.log10(255.0**2 / mse))


def encode_stream(count: int, requests=(), **options):
    encoder = H264Encoder(WIDTH, HEIGHT, FPS, **options)
    frames = []
    for index in range(count):
        if index in requests:
            encoder.request_keyframe()
        frames.append(encoder.encode(scene(index), index))
    return frames


def test_round_trip_is_close_and_immediate():
    decoder = H264Decoder()
    encoder = H264Encoder(WIDTH, HEIGHT, FPS)
    for index in range(20):
        frame = encoder.encode(scene(index), index)
        # Zero latency: each call returns this frame's own bytes, which decode at once.
        assert frame.pts == index and frame.data
        image = decoder.decode(frame.data)
        assert image is not None and image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        assert psnr(image, scene(index)) > 30.0
    assert decoder.frames_decoded == 20 and decoder.errors == 0 and decoder.frames_dropped == 0
    assert encoder.frames_encoded == 20 and encoder.keyframes == 1


def test_keyframes_periodic_and_on_request():
    frames = encode_stream(30, requests={13}, gop_frames=10)
    keyframes = [frame.pts for frame in frames if frame.keyframe]
    # The requested keyframe restarts the GOP: the next periodic one is gop_frames later.
    assert keyframes == [0, 10, 13, 23]
    assert [is_keyframe(frame.data) for frame in frames] == [frame.keyframe for frame in frames]
    # A keyframe is a place to start: a new decoder shows it and everything after it.
    decoder = H264Decoder()
    for frame in frames[13:]:
        image = decoder.decode(frame.data)
        assert image is not None and psnr(image, scene(frame.pts)) > 30.0


def test_keyframes_are_bigger_than_predicted_frames():
    frames = encode_stream(12, gop_frames=30)
    predicted = max(len(frame.data) for frame in frames[1:])
    assert len(frames[0].data) > 2 * predicted


def test_lost_frames_are_dropped_until_the_next_keyframe():
    frames = encode_stream(16, gop_frames=10)
    decoder = H264Decoder()
    shown = {}
    for frame in frames:
        if frame.pts in (4, 5):  # lost in transit: the transport tells the decoder
            decoder.reset()
            continue
        shown[frame.pts] = decoder.decode(frame.data)
    assert all(shown[pts] is None for pts in range(6, 10))
    assert decoder.frames_dropped == 4 and decoder.errors == 0
    for pts in [*range(4), *range(10, 16)]:
        assert psnr(shown[pts], scene(pts)) > 30.0


def test_a_decoder_starts_at_a_keyframe():
    frames = encode_stream(12, gop_frames=10)
    decoder = H264Decoder()
    assert decoder.waiting_for_keyframe
    assert [decoder.decode(frame.data) is None for frame in frames[3:]] == [True] * 7 + [False] * 2
    assert not decoder.waiting_for_keyframe


def test_bad_bytes_are_counted_not_raised():
    frames = encode_stream(12, gop_frames=10)
    rng = np.random.default_rng(7)
    bad = [b"", rng.bytes(3000), b"\x00\x00\x01" + rng.bytes(500),
           b"\x00\x00\x00\x01\x65" + bytes(100), b"\x00\x00\x00\x01\x41" + bytes(100),
           frames[10].data[:40]]
    for data in bad:
        decoder = H264Decoder()
        assert decoder.decode(frames[0].data) is not None
        assert decoder.decode(data) is None
        assert decoder.errors == 1 and decoder.last_error and decoder.waiting_for_keyframe
        # Predicted frames are dropped now; the next whole keyframe puts it back on its feet.
        assert decoder.decode(frames[1].data) is None
        assert psnr(decoder.decode(frames[10].data), scene(10)) > 30.0
        assert psnr(decoder.decode(frames[11].data), scene(11)) > 30.0
    # Garbage while waiting for a keyframe is dropped unread.
    assert H264Decoder().decode(rng.bytes(100)) is None


def test_bitrate_mode_holds_the_rate():
    bitrate = 400_000
    frames = encode_stream(30, bitrate_bps=bitrate, vbv_buffer_s=0.5)
    total_bits = 8 * sum(len(frame.data) for frame in frames)
    assert total_bits < 1.5 * bitrate * len(frames) / FPS


def test_encoder_checks_its_input():
    encoder = H264Encoder(WIDTH, HEIGHT, FPS)
    with pytest.raises(ValueError, match="uint8 RGB"):
        encoder.encode(np.zeros((HEIGHT, WIDTH), np.uint8), 0)
    encoder.encode(scene(0), 5)
    with pytest.raises(ValueError, match="pts must increase"):
        encoder.encode(scene(1), 5)
    with pytest.raises(ValueError, match="even"):
        H264Encoder(321, 240, FPS)


def test_missing_codec_is_named(monkeypatch):
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264", "h264"})
    with pytest.raises(RuntimeError, match="libx264"):
        H264Encoder(WIDTH, HEIGHT, FPS)
    with pytest.raises(RuntimeError, match="h264 decoder"):
        H264Decoder()


def test_is_keyframe_reads_the_first_slice():
    assert not is_keyframe(b"")
    assert not is_keyframe(b"\x00\x00\x01")
    assert is_keyframe(b"\x00\x00\x00\x01\x67\x42\x00\x00\x01\x68\x00\x00\x01\x65\x88")
    assert not is_keyframe(b"\x00\x00\x01\x41\x9a\x00\x00\x01\x65")
    assert codec.ENCODER == "libx264"


def test_frame_num_tells_a_lost_frame_from_a_late_one():
    frames = [frame.data for frame in encode_stream(60, gop_frames=20)]  # frame_num wraps at 16
    continuity = FrameContinuity()
    assert all(continuity.follows(data) for data in frames)
    lost_predicted, lost_keyframe = 7, 40
    continuity = FrameContinuity()
    verdicts = {index: continuity.follows(data) for index, data in enumerate(frames)
                if index not in (lost_predicted, lost_keyframe)}
    assert [index for index, follows in verdicts.items() if not follows] == [
        lost_predicted + 1, lost_keyframe + 1]


def test_frame_num_is_unknown_before_a_keyframe_and_in_bad_bytes():
    frames = [frame.data for frame in encode_stream(3)]
    continuity = FrameContinuity()
    assert not continuity.follows(frames[1])  # joined mid-stream: no SPS yet
    assert not continuity.follows(b"\x00\x00\x01\x41")  # a slice header cut short
    assert continuity.follows(frames[0]) and continuity.follows(frames[1])
    assert not continuity.follows(b"garbage")
