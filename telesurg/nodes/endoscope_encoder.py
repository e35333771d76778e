"""endoscope_encoder: the patient site's video from cameras that publish raw pictures.

Where something other than telesurg's MuJoCo endoscope is the camera (Gazebo's stereo camera
sensors through ros_gz_bridge, a real stereo laparoscope's driver), this node takes
/endoscope/{left,right}/image_raw (rgb8, bgr8, rgba8 or bgra8), encodes each eye with H.264 and
publishes /endoscope/{left,right}/image_raw/compressed with the picture's header (its capture
stamp), which the bridges carry to the master site, as the endoscope node does for the pictures
it renders. A picture that cannot be encoded is dropped and said (throttled).
"""

from __future__ import annotations

from rclpy.node import Node
from sensor_msgs.msg import Image

from telesurg.contract import topics
from telesurg.ros.loop import NodeLoop
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import subscription
from telesurg.ros.stereo_video import EYE_NAMES, StereoH264Publisher, rgb_array

RAW_TOPICS = (topics.ENDOSCOPE_LEFT_IMAGE, topics.ENDOSCOPE_RIGHT_IMAGE)


class EndoscopeEncoderNode(Node):
    def __init__(self):
        super().__init__("endoscope_encoder")
        p = declare_parameters(self, "endoscope_encoder")
        self.video = StereoH264Publisher(self, p.video_fps, p.keyframe_interval_s)
        self.encoded = [0] * len(EYE_NAMES)
        self.refused = [0] * len(EYE_NAMES)
        for eye, topic in enumerate(RAW_TOPICS):
            subscription(self, topic, lambda msg, eye=eye: self._on_image(eye, msg))
        self.loop = NodeLoop(self)
        self.get_logger().info(
            f"endoscope_encoder: H.264 of /endoscope/<eye>/image_raw, a keyframe every "
            f"{self.video.keyframe_every} frames (video_fps {p.video_fps:g})")

    def _on_image(self, eye: int, msg: Image) -> None:
        try:
            self.video.publish(eye, rgb_array(msg), msg.header)
        except ValueError as error:
            self.refused[eye] += 1
            self.get_logger().error(f"{EYE_NAMES[eye]} eye: picture dropped: {error}",
                                    throttle_duration_sec=5.0)
            return
        self.encoded[eye] += 1

    def destroy_node(self):
        counts = "; ".join(f"{name}: {encoded} encoded, {refused} dropped" for name, encoded,
                           refused in zip(EYE_NAMES, self.encoded, self.refused, strict=True))
        self.get_logger().info(f"endoscope_encoder: {counts}, "
                               f"{self.video.keyframes_requested} keyframes asked for")
        super().destroy_node()


def main(args=None):
    run_node("endoscope_encoder", EndoscopeEncoderNode, args)


if __name__ == "__main__":
    main()
