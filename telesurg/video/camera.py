"""The stereo endoscope: two cameras a few millimetres apart looking at the instrument's tip, as
a 3D laparoscope held still by another arm would. Rendered offscreen by MuJoCo from the arm's
own model and state. Pure Python (no rclpy).

Import this module before anything imports mujoco in a process that renders: MuJoCo picks its
OpenGL backend from MUJOCO_GL once, at its first import, and a headless machine has no display
for its default (GLFW). This module sets MUJOCO_GL=egl unless it is set already, and opens its
own context on the backend MUJOCO_GL names, so the endoscope renders even where mujoco came
first; other renderers in the process (mujoco.Renderer) do not.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import copy  # noqa: E402
import ctypes  # noqa: E402
import math  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from telesurg.arm.kinematics import ARM_JOINT_NAMES, HOME_POSITIONS, forward  # noqa: E402

#: Vertical field of view: a 3D laparoscope's 70 degrees across the diagonal of a 4:3 image.
DEFAULT_FOVY_DEG = 45.0
#: The jaws' middle, behind the tool tip along the jaws: what the endoscope centres on.
JAWS_CENTRE_BEHIND_TIP_M = 0.005
#: Where the endoscope sits relative to the jaws' middle at the arm's home configuration: 6 cm
#: away (a laparoscope's working distance), above and to the side, looking down at 37 degrees.
DEFAULT_VIEW_OFFSET_M = (0.025, 0.04, 0.036)
#: The patient phantom: a slab of tissue this far below the home tool tip (it is only drawn: the
#: physics does not know it, and the instrument passes through it).
PHANTOM_BELOW_TIP_M = 0.02
PHANTOM_HALF_SIZE_M = (0.3, 0.3, 0.01)
PHANTOM_RGBA = (0.78, 0.40, 0.38, 1.0)
#: The endoscope's own light, at the camera: brighter than MuJoCo's default headlight.
HEADLIGHT_AMBIENT, HEADLIGHT_DIFFUSE, HEADLIGHT_SPECULAR = 0.35, 0.65, 0.3

_EGL_HELP = ("set MUJOCO_GL=egl (before mujoco is imported) and install Mesa's EGL (Debian: "
             "libegl1 libegl-mesa0 libgl1-mesa-dri) and PyOpenGL")


class RenderingUnavailable(RuntimeError):
    """No OpenGL context for offscreen rendering on this machine."""


@dataclass(frozen=True, eq=False)
class CameraInfo:
    """One eye's calibration in the terms of sensor_msgs/CameraInfo. The images are ideal
    pinhole images of a rectified pair (parallel axes, same intrinsics): no distortion, R the
    identity, and the right eye's P carries Tx = -fx * baseline."""

    width: int
    height: int
    k: np.ndarray
    """3x3 intrinsic matrix."""
    d: tuple[float, ...]
    r: np.ndarray
    """3x3 rectification rotation (identity)."""
    p: np.ndarray
    """3x4 projection matrix, in the left eye's optical frame for both eyes."""
    distortion_model: str = "plumb_bob"


def home_tool_tip() -> np.ndarray:
    """4x4 pose of the tool tip at the arm's home configuration, in psm_base (ArmSimulation's
    MuJoCo world)."""
    return forward(HOME_POSITIONS[:len(ARM_JOINT_NAMES)])


def home_jaws_centre() -> np.ndarray:
    """The middle of the jaws at the arm's home configuration, in psm_base."""
    tip = home_tool_tip()
    return tip[:3, 3] - JAWS_CENTRE_BEHIND_TIP_M * tip[:3, 2]


class StereoEndoscope:
    """A fixed stereo camera in the world of (model, data): render() draws what data's state
    shows (call mj_forward or mj_step first; from one thread at a time, not while another steps
    the physics).

    The eyes are MuJoCo free cameras placed explicitly: their pose and field of view are the
    endoscope's own, with no cameras added to the model (the arm's model is compiled from the
    URDF elsewhere). The model's visual settings are copied, not changed: no multisampling and
    no shadows (software rendering is ten times faster without), the endoscope's headlight.
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, width: int = 640,
                 height: int = 480, baseline_m: float = 0.005,
                 fovy_deg: float = DEFAULT_FOVY_DEG, target=None, position=None,
                 phantom: bool = True):
        """target: the point the endoscope looks at, and position: the midpoint between its
        eyes (world, metres); by default the jaws at the arm's home configuration, seen from
        DEFAULT_VIEW_OFFSET_M. Image up is world up (+z) as far as the view allows."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if not baseline_m > 0 or not 0 < fovy_deg < 180:
            raise ValueError(f"need baseline_m > 0 and 0 < fovy_deg < 180, got {baseline_m}, "
                             f"{fovy_deg}")
        self.width, self.height = width, height
        self.baseline_m, self.fovy_deg = baseline_m, fovy_deg
        self._data = data
        target = home_jaws_centre() if target is None else np.asarray(target, dtype=float)
        centre = (target + DEFAULT_VIEW_OFFSET_M if position is None
                  else np.asarray(position, dtype=float))
        look = target - centre
        distance = float(np.linalg.norm(look))
        forward_axis = look / distance if distance > 0 else look
        right = np.cross(forward_axis, (0.0, 0.0, 1.0))
        if distance == 0 or np.linalg.norm(right) < 1e-6:
            raise ValueError("the endoscope must look at a point other than its own, and not "
                             "straight up or down")
        right /= np.linalg.norm(right)
        up = np.cross(right, forward_axis)
        self._axes = right, up, forward_axis
        self._eyes = (centre - 0.5 * baseline_m * right, centre + 0.5 * baseline_m * right)
        self._focal_px = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)

        # The free camera, for MuJoCo's headlight between the eyes; the eyes replace its view.
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self._camera.lookat[:] = target
        self._camera.distance = distance
        self._camera.azimuth = math.degrees(math.atan2(forward_axis[1], forward_axis[0]))
        self._camera.elevation = math.degrees(math.asin(forward_axis[2]))

        visual = copy.copy(model)
        visual.vis.quality.offsamples = 0
        visual.vis.quality.shadowsize = 0
        visual.vis.global_.offwidth = max(width, visual.vis.global_.offwidth)
        visual.vis.global_.offheight = max(height, visual.vis.global_.offheight)
        visual.vis.headlight.ambient[:] = HEADLIGHT_AMBIENT
        visual.vis.headlight.diffuse[:] = HEADLIGHT_DIFFUSE
        visual.vis.headlight.specular[:] = HEADLIGHT_SPECULAR
        visual.vis.headlight.active = 1
        self._visual = visual
        self._option = mujoco.MjvOption()
        self._scene = mujoco.MjvScene(visual, maxgeom=visual.ngeom + 16)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._phantom = None
        if phantom:
            top = home_tool_tip()[2, 3] - PHANTOM_BELOW_TIP_M
            self._phantom = (np.array(PHANTOM_HALF_SIZE_M),
                             np.array([target[0], target[1], top - PHANTOM_HALF_SIZE_M[2]]),
                             np.eye(3).ravel(), np.array(PHANTOM_RGBA, dtype=np.float32))
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._pixels = np.empty((height, width, 3), dtype=np.uint8)
        self._gl = None
        self._context = None
        try:
            self._gl = _gl_context_class()(width, height)
            self._gl.make_current()
            self._context = mujoco.MjrContext(visual, mujoco.mjtFontScale.mjFONTSCALE_100)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        except Exception as error:  # EGL and GL fail in many types; all mean the same here
            self.close()
            backend = os.environ.get("MUJOCO_GL", "")
            raise RenderingUnavailable(
                f"cannot render offscreen (MUJOCO_GL={backend!r}): {error!r}; {_EGL_HELP}"
            ) from error

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """The left and right images: height x width x 3 uint8 RGB, row 0 at the top."""
        if self._context is None:
            raise RuntimeError("the endoscope is closed")
        try:
            self._gl.make_current()
        except ctypes.ArgumentError as error:
            # A Ctrl-C landing while ctypes converts the EGL call's arguments comes out as
            # this error ("argument 2: KeyboardInterrupt"): let it be the interrupt it is.
            if "KeyboardInterrupt" in str(error):
                raise KeyboardInterrupt from error
            raise
        scene = self._scene
        mujoco.mjv_updateScene(self._visual, self._data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, scene)
        if self._phantom is not None and scene.ngeom < scene.maxgeom:
            scene.ngeom += 1
            mujoco.mjv_initGeom(scene.geoms[scene.ngeom - 1], mujoco.mjtGeom.mjGEOM_BOX,
                                *self._phantom)
        _, up, forward_axis = self._axes
        half_height = scene.camera[0].frustum_near * math.tan(math.radians(self.fovy_deg) / 2)
        images = []
        for eye in self._eyes:
            for camera in scene.camera:  # both: MuJoCo renders their average in mono
                camera.pos[:] = eye
                camera.forward[:] = forward_axis
                camera.up[:] = up
                camera.frustum_center = 0.0
                camera.frustum_width = 0.0  # from the viewport's aspect: square pixels
                camera.frustum_bottom, camera.frustum_top = -half_height, half_height
            mujoco.mjr_render(self._rect, scene, self._context)
            mujoco.mjr_readPixels(self._pixels, None, self._rect, self._context)
            images.append(self._pixels[::-1].copy())  # OpenGL's rows run bottom up
        return images[0], images[1]

    def camera_info(self) -> tuple[CameraInfo, CameraInfo]:
        """The left and right eyes' calibration (pixel centres at integer coordinates)."""
        f = self._focal_px
        cx, cy = (self.width - 1) / 2, (self.height - 1) / 2
        k = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        infos = []
        for tx in (0.0, -f * self.baseline_m):
            p = np.hstack([k, [[tx], [0.0], [0.0]]])
            infos.append(CameraInfo(width=self.width, height=self.height, k=k.copy(),
                                    d=(0.0,) * 5, r=np.eye(3), p=p))
        return infos[0], infos[1]

    def eye_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """4x4 poses in the world of the left and right optical frames (x right, y down, z
        forward: ROS's camera optical frame convention)."""
        right, up, forward_axis = self._axes
        poses = []
        for eye in self._eyes:
            pose = np.eye(4)
            pose[:3, :3] = np.column_stack([right, -up, forward_axis])
            pose[:3, 3] = eye
            poses.append(pose)
        return poses[0], poses[1]

    def close(self) -> None:
        """Free the GL resources (idempotent)."""
        if self._context is not None:
            if self._gl is not None:
                self._gl.make_current()
            self._context.free()
            self._context = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None

    def __enter__(self) -> StereoEndoscope:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _gl_context_class():
    """The GL context class of the backend MUJOCO_GL names now, whenever mujoco was imported."""
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        GLContext = mujoco.GLContext
    return GLContext
