"""endoscope: the patient site's stereo endoscope, as a 3D laparoscope held still beside the arm.

Keeps a MuJoCo model of the arm posed from /joint_states (the arm controller's MuJoCo arm, the
simulator, Gazebo or a real arm), renders both eyes offscreen at fps (telesurg.video.camera),
encodes each with H.264 (telesurg.video.codec) and publishes, stamped at capture:
/endoscope/{left,right}/image_raw/compressed (sensor_msgs/CompressedImage, format h264), which
the bridges carry to the master site as video, and /endoscope/{left,right}/camera_info; with
publish_raw, also /endoscope/{left,right}/image_raw (rgb8).
"""

from __future__ import annotations

# Before anything imports mujoco: the camera module chooses MuJoCo's offscreen backend (EGL).
from telesurg.video.camera import StereoEndoscope  # isort: skip

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Header

from telesurg.arm.kinematics import HOME_POSITIONS, JOINT_NAMES
from telesurg.arm.simulation import ArmSimulation
from telesurg.contract import topics
from telesurg.contract.resources import arm_urdf
from telesurg.ros.loop import NodeLoop
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription
from telesurg.ros.stereo_video import StereoH264Publisher

#: The optical frame of each eye (x right, y down, z forward, as ROS cameras are).
OPTICAL_FRAMES = ("endoscope_left_optical", "endoscope_right_optical")
#: Only the scene is needed from the model: its physics never steps.
RENDER_TIMESTEP_S = 0.002


class EndoscopeNode(Node):
    def __init__(self):
        super().__init__("endoscope")
        p = declare_parameters(self, "endoscope")
        urdf = p.urdf_path or str(arm_urdf())
        self.arm = ArmSimulation(urdf, RENDER_TIMESTEP_S, HOME_POSITIONS)
        self.camera = StereoEndoscope(self.arm.model, self.arm.data, p.width, p.height,
                                      p.baseline_m)
        self.video = StereoH264Publisher(self, p.video_fps, p.keyframe_interval_s)
        self.infos = [_camera_info(info, frame) for info, frame
                      in zip(self.camera.camera_info(), OPTICAL_FRAMES, strict=True)]
        self._info = [publisher(self, topic) for topic in (
            topics.ENDOSCOPE_LEFT_CAMERA_INFO, topics.ENDOSCOPE_RIGHT_CAMERA_INFO)]
        self._raw = [publisher(self, topic) for topic in (
            topics.ENDOSCOPE_LEFT_IMAGE, topics.ENDOSCOPE_RIGHT_IMAGE)] if p.publish_raw else []
        self._joint_index: tuple[list[str], list[int]] | None = None
        self._positions = HOME_POSITIONS.copy()
        self._frames = 0
        subscription(self, topics.JOINT_STATES, self._on_joint_states)
        self.loop = NodeLoop(self)
        self.loop.every(1.0 / p.video_fps, self._capture)
        self.get_logger().info(
            f"endoscope: {p.width}x{p.height} per eye at {p.video_fps:g} fps, baseline "
            f"{p.baseline_m * 1e3:g} mm, a keyframe every {self.video.keyframe_every} frames"
            f"{', raw images too' if p.publish_raw else ''}")

    def _on_joint_states(self, msg: JointState) -> None:
        if self._joint_index is None or self._joint_index[0] != list(msg.name):
            try:
                self._joint_index = (list(msg.name), [msg.name.index(n) for n in JOINT_NAMES])
            except ValueError:
                self.get_logger().error(
                    f"/joint_states lacks joints of {', '.join(JOINT_NAMES)}: the view stays "
                    "where it was", throttle_duration_sec=5.0)
                self._joint_index = None
                return
        self._positions = [msg.position[i] for i in self._joint_index[1]]

    def _capture(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self.arm.place(self._positions)
        images = self.camera.render()
        for eye, image in enumerate(images):
            header.frame_id = OPTICAL_FRAMES[eye]
            self.video.publish(eye, image, header)
            self.infos[eye].header = header
            self._info[eye].publish(self.infos[eye])
            if self._raw:
                height, width, _ = image.shape
                self._raw[eye].publish(Image(header=header, height=height, width=width,
                                             encoding="rgb8", step=width * 3,
                                             data=image.tobytes()))
        self._frames += 1

    def destroy_node(self):
        self.get_logger().info(f"endoscope: {self._frames} stereo frames captured, "
                               f"{self.video.keyframes_requested} keyframes asked for by the "
                               "master")
        self.camera.close()
        super().destroy_node()


def _camera_info(info, frame_id: str) -> CameraInfo:
    """telesurg.video.camera's calibration of one eye as a sensor_msgs/CameraInfo."""
    return CameraInfo(header=Header(frame_id=frame_id), width=info.width, height=info.height,
                      distortion_model=info.distortion_model, d=list(info.d),
                      k=info.k.ravel().tolist(), r=info.r.ravel().tolist(),
                      p=info.p.ravel().tolist())


def main(args=None):
    run_node("endoscope", EndoscopeNode, args)


if __name__ == "__main__":
    main()
