"""endoscope_decoder: the master site's half of the endoscope video.

Takes /endoscope/{left,right}/image_raw/compressed as the bridge delivers them (whole frames,
in order, or none) and, while someone subscribes to an eye's /endoscope/{eye}/image_raw,
decodes that eye's frames and publishes them (rgb8, the capture stamp kept). A frame older than
the last one shown is dropped. A frame whose H.264 frame_num does not follow the last one's (or
that comes over 8 frame periods after it, where frame_num may have wrapped) follows a lost frame:
the decoder then waits for a keyframe and asks the endoscope for one on
/endoscope/keyframe_request, at most every keyframe_request_interval_ms, so the picture is back
within about a round trip and a frame rather than a whole keyframe interval. With nobody
watching an eye, its frames are not decoded (a 640x480 frame costs about 1 ms of CPU) unless
decode_unwatched; a new viewer gets pictures from the next keyframe, asked for at once.
"""

from __future__ import annotations

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from telesurg.contract import topics
from telesurg.contract.fields import stamp_ns
from telesurg.ros.loop import NodeLoop
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription
from telesurg.video.codec import FrameContinuity, H264Decoder, is_keyframe

EYES = {"left": (topics.ENDOSCOPE_LEFT_COMPRESSED, topics.ENDOSCOPE_LEFT_IMAGE),
        "right": (topics.ENDOSCOPE_RIGHT_COMPRESSED, topics.ENDOSCOPE_RIGHT_IMAGE)}
#: Over this many frame periods between two frames, frame_num may have wrapped (H.264's
#: MaxFrameNum is at least 16) and a loss cannot be ruled out. A late capture is no loss: a
#: gap in the capture stamps alone made a loaded machine ask for 16 keyframes in 15 s.
WRAP_GUARD_PERIODS = 8


class EyeDecoder:
    """One eye: its decoder, what it last showed, and when it last asked for a keyframe."""

    def __init__(self, node: Node, eye: str, compressed: topics.Topic, image: topics.Topic):
        self.eye = eye
        self.decoder = H264Decoder()
        self.continuity = FrameContinuity()
        self.image_pub = publisher(node, image)
        self.watched = False
        self.last_stamp_ns: int | None = None
        self.requested_at_ns: int | None = None
        self.shown = self.dropped_late = self.requests = 0
        subscription(node, compressed, self.on_frame)
        self._node = node

    def on_frame(self, message: CompressedImage) -> None:
        node = self._node
        stamp = stamp_ns(message)
        watched = node.decode_unwatched or self.image_pub.get_subscription_count() > 0
        if watched and not self.watched:
            self.decoder.reset()  # a new viewer: pictures from the next keyframe
        self.watched = watched
        previous, self.last_stamp_ns = self.last_stamp_ns, stamp
        if previous is not None and stamp <= previous:
            self.dropped_late += 1
            self.last_stamp_ns = previous
            return
        data = bytes(message.data)
        follows = self.continuity.follows(data)
        if not watched:
            return
        if previous is not None and (not follows or stamp - previous > node.wrap_guard_ns):
            self.decoder.reset()
        if self.decoder.waiting_for_keyframe and not is_keyframe(data):
            self._request_keyframe(node.get_clock().now().nanoseconds)
        image = self.decoder.decode(data)
        if image is None:
            return
        height, width, _ = image.shape
        if self.image_pub.get_subscription_count() == 0:
            return  # decoded for the keyframe requests alone (decode_unwatched)
        self.image_pub.publish(Image(header=message.header, height=height, width=width,
                                     encoding="rgb8", step=width * 3, data=image.tobytes()))
        self.shown += 1

    def _request_keyframe(self, now_ns: int) -> None:
        node = self._node
        if (self.requested_at_ns is not None
                and now_ns - self.requested_at_ns < node.request_interval_ns):
            return
        self.requested_at_ns = now_ns
        self.requests += 1
        node.keyframe_pub.publish(String(data=self.eye))


class EndoscopeDecoderNode(Node):
    def __init__(self):
        super().__init__("endoscope_decoder")
        p = declare_parameters(self, "endoscope_decoder")
        self.wrap_guard_ns = int(WRAP_GUARD_PERIODS * 1e9 / p.video_fps)
        self.request_interval_ns = int(p.keyframe_request_interval_ms * 1e6)
        self.decode_unwatched = p.decode_unwatched
        self.keyframe_pub = publisher(self, topics.ENDOSCOPE_KEYFRAME_REQUEST)
        self.eyes = [EyeDecoder(self, eye, compressed, image)
                     for eye, (compressed, image) in EYES.items()]
        self.loop = NodeLoop(self)
        self.get_logger().info(
            f"endoscope_decoder: decoding each eye while /endoscope/<eye>/image_raw has a "
            f"subscriber; a frame lost (frame_num skips, or over "
            f"{self.wrap_guard_ns * 1e-6:.0f} ms between frames) asks for a keyframe")

    def destroy_node(self):
        counts = "; ".join(f"{eye.eye}: {eye.shown} shown, {eye.dropped_late} late dropped, "
                           f"{eye.requests} keyframe requests" for eye in self.eyes)
        self.get_logger().info(f"endoscope_decoder: {counts}")
        super().destroy_node()


def main(args=None):
    run_node("endoscope_decoder", EndoscopeDecoderNode, args)


if __name__ == "__main__":
    main()
