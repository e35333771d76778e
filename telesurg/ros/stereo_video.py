"""The endoscope's two H.264 streams as the bridge carries them, whoever makes the pictures (the
MuJoCo endoscope renders them; Gazebo's cameras publish them as sensor_msgs/Image).

One encoder per eye (libx264 ultrafast/zerolatency, no B-frames, a keyframe every
keyframe_interval_s and whenever the master site asks for one on /endoscope/keyframe_request),
opened at the eye's first picture and again if its size changes; each encoded frame is published
on /endoscope/<eye>/image_raw/compressed with its picture's header (the capture stamp).
"""

from __future__ import annotations

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from telesurg.contract import topics
from telesurg.ros.qos import publisher, subscription
from telesurg.video.codec import H264Encoder, require_encoder

#: The eyes, in the order of their topics, as keyframe requests name them.
EYE_NAMES = ("left", "right")
COMPRESSED_TOPICS = (topics.ENDOSCOPE_LEFT_COMPRESSED, topics.ENDOSCOPE_RIGHT_COMPRESSED)
#: Bytes per pixel and the channel order that makes RGB, of the encodings a camera may publish.
_ENCODINGS = {"rgb8": (3, [0, 1, 2]), "bgr8": (3, [2, 1, 0]),
              "rgba8": (4, [0, 1, 2]), "bgra8": (4, [2, 1, 0])}


def rgb_array(image: Image) -> np.ndarray:
    """A sensor_msgs/Image as a height x width x 3 uint8 RGB array (rows may be padded: step).
    ValueError naming the encoding if it is not 8-bit colour, or if the data is too short."""
    if image.encoding not in _ENCODINGS:
        raise ValueError(f"image encoding {image.encoding!r} is not one of "
                         f"{', '.join(_ENCODINGS)}")
    channels, order = _ENCODINGS[image.encoding]
    needed = image.step * image.height
    if image.step < image.width * channels or len(image.data) < needed:
        raise ValueError(f"{image.width}x{image.height} {image.encoding} image with step "
                         f"{image.step} and {len(image.data)} bytes of data: too short")
    rows = np.frombuffer(image.data, np.uint8, needed).reshape(image.height, image.step)
    pixels = rows[:, :image.width * channels].reshape(image.height, image.width, channels)
    return pixels[:, :, order]


class StereoH264Publisher:
    """Encodes and publishes each eye's pictures; answers the master site's keyframe requests."""

    def __init__(self, node: Node, fps: float, keyframe_interval_s: float):
        require_encoder()  # at start, not at the first picture
        self._node = node
        self._fps = fps
        self.keyframe_every = max(1, round(fps * keyframe_interval_s))
        self._encoders: list[H264Encoder | None] = [None] * len(EYE_NAMES)
        self._frames = [0] * len(EYE_NAMES)
        self._publishers = [publisher(node, topic) for topic in COMPRESSED_TOPICS]
        self.keyframes_requested = 0
        subscription(node, topics.ENDOSCOPE_KEYFRAME_REQUEST, self._on_keyframe_request)

    def publish(self, eye: int, rgb: np.ndarray, header: Header) -> None:
        """Encode one eye's picture (height x width x 3 uint8 RGB) and publish it with header.
        ValueError if the size cannot be encoded (H.264 4:2:0 wants even sides)."""
        height, width, _ = rgb.shape
        encoder = self._encoders[eye]
        if encoder is None or (encoder.width, encoder.height) != (width, height):
            if encoder is not None:
                self._node.get_logger().warning(
                    f"{EYE_NAMES[eye]} eye: pictures now {width}x{height} (were "
                    f"{encoder.width}x{encoder.height}): a new stream, from a keyframe")
            encoder = H264Encoder(width, height, self._fps, gop_frames=self.keyframe_every)
            self._encoders[eye] = encoder
        encoded = encoder.encode(rgb, self._frames[eye])
        self._frames[eye] += 1
        self._publishers[eye].publish(
            CompressedImage(header=header, format="h264", data=encoded.data))

    def _on_keyframe_request(self, msg: String) -> None:
        """The master site lost a frame of this eye: its next frame is a keyframe (a stream not
        yet opened starts with one anyway)."""
        if msg.data not in EYE_NAMES:
            self._node.get_logger().warning(
                f"keyframe request for an unknown eye {msg.data!r}: one of "
                f"{', '.join(EYE_NAMES)}", throttle_duration_sec=5.0)
            return
        encoder = self._encoders[EYE_NAMES.index(msg.data)]
        if encoder is not None:
            encoder.request_keyframe()
        self.keyframes_requested += 1
