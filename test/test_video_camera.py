"""The stereo endoscope: two eyes that see the instrument from a baseline apart, follow the arm,
and whose calibration (ROS CameraInfo terms) projects the arm where the images show it.

Skipped where no offscreen OpenGL (EGL) is available. Here mujoco is imported (by the arm's
simulation) before the camera module sets MUJOCO_GL: the endoscope renders regardless.
"""

import ctypes
import math

import mujoco
import numpy as np
import pytest

from telesurg.arm.kinematics import HOME_POSITIONS, JOINT_NAMES
from telesurg.arm.simulation import ArmSimulation
from telesurg.contract.resources import arm_urdf
from telesurg.video.camera import (
    DEFAULT_FOVY_DEG,
    PHANTOM_RGBA,
    RenderingUnavailable,
    StereoEndoscope,
    home_jaws_centre,
)

WIDTH, HEIGHT, BASELINE_M = 320, 240, 0.005


@pytest.fixture(scope="module")
def arm():
    return ArmSimulation(arm_urdf(), 0.001, HOME_POSITIONS)


@pytest.fixture(scope="module")
def endoscope(arm):
    try:
        endoscope = StereoEndoscope(arm.model, arm.data, WIDTH, HEIGHT, baseline_m=BASELINE_M)
    except RenderingUnavailable as error:
        pytest.skip(f"no offscreen rendering on this machine: {error}")
    yield endoscope
    endoscope.close()


@pytest.fixture(autouse=True)
def at_home(arm):
    move(arm, HOME_POSITIONS)


def move(arm, positions) -> None:
    arm.data.qpos[:len(JOINT_NAMES)] = positions
    mujoco.mj_forward(arm.model, arm.data)


def steel(image: np.ndarray) -> np.ndarray:
    """Where the instrument's wrist and jaws are: grey, unlike the reddish tissue."""
    channels = image.astype(int)
    return (np.ptp(channels, axis=2) < 25) & (channels[..., 1] > 60)


def test_both_eyes_see_the_tool_a_baseline_apart(endoscope):
    left, right = endoscope.render()
    for image in (left, right):
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        assert 0.005 < steel(image).mean() < 0.2  # the tool, small in a view of tissue
        tissue = np.abs(image.astype(int) - np.array(PHANTOM_RGBA[:3]) * 255).sum(axis=2) < 120
        assert tissue.mean() > 0.5
    assert np.abs(left.astype(int) - right).mean() > 1.0
    # The right eye sees the tool further left: by the disparity fx * baseline / depth.
    disparity = np.nonzero(steel(left))[1].mean() - np.nonzero(steel(right))[1].mean()
    depth = np.linalg.inv(endoscope.eye_poses()[0]) @ np.append(home_jaws_centre(), 1.0)
    expected = endoscope.camera_info()[0].k[0, 0] * BASELINE_M / depth[2]
    assert disparity == pytest.approx(expected, rel=0.25)


def test_calibration_projects_the_jaws_onto_the_tool(endoscope):
    left_pose, right_pose = endoscope.eye_poses()
    assert np.allclose(right_pose[:3, 3] - left_pose[:3, 3], BASELINE_M * left_pose[:3, 0])
    # Both eyes' P act on points in the left optical frame (ROS's stereo convention).
    point = np.linalg.inv(left_pose) @ np.append(home_jaws_centre(), 1.0)
    for info, image in zip(endoscope.camera_info(), endoscope.render(), strict=True):
        u, v, w = info.p @ point
        column, row = round(u / w), round(v / w)
        assert 0 <= column < WIDTH and 0 <= row < HEIGHT
        assert steel(image)[row - 2:row + 3, column - 2:column + 3].all()


def test_camera_info_follows_ros_conventions(endoscope):
    left, right = endoscope.camera_info()
    focal = HEIGHT / 2 / math.tan(math.radians(DEFAULT_FOVY_DEG) / 2)
    for info in (left, right):
        assert (info.width, info.height) == (WIDTH, HEIGHT)
        assert info.distortion_model == "plumb_bob" and info.d == (0.0,) * 5
        assert np.array_equal(info.r, np.eye(3))
        assert info.k == pytest.approx(np.array(
            [[focal, 0, (WIDTH - 1) / 2], [0, focal, (HEIGHT - 1) / 2], [0, 0, 1]]))
        assert np.array_equal(info.p[:, :3], info.k)
    assert left.p[0, 3] == 0.0
    assert right.p[0, 3] == pytest.approx(-focal * BASELINE_M)
    assert right.p[1, 3] == right.p[2, 3] == 0.0


def test_the_images_follow_the_arm(arm, endoscope):
    home_left, home_right = endoscope.render()
    bent = HOME_POSITIONS.copy()
    bent[JOINT_NAMES.index("outer_wrist_pitch")] = 0.6
    bent[JOINT_NAMES.index("jaw")] = 0.8
    move(arm, bent)
    bent_left, bent_right = endoscope.render()
    for home, now in ((home_left, bent_left), (home_right, bent_right)):
        changed = np.abs(home.astype(int) - now).sum(axis=2) > 30
        assert changed.mean() > 0.003
    # Rendering is a function of the state: back home, the same images.
    move(arm, HOME_POSITIONS)
    again_left, again_right = endoscope.render()
    assert np.array_equal(again_left, home_left) and np.array_equal(again_right, home_right)


def test_other_sizes_and_closing(arm):
    try:
        wide = StereoEndoscope(arm.model, arm.data, 1280, 720, phantom=False)
    except RenderingUnavailable as error:
        pytest.skip(f"no offscreen rendering on this machine: {error}")
    with wide:
        left, right = wide.render()
        assert left.shape == right.shape == (720, 1280, 3)
        assert wide.camera_info()[1].k[0, 2] == pytest.approx(639.5)
        assert steel(left).any()
    with pytest.raises(RuntimeError, match="closed"):
        wide.render()
    wide.close()  # again: harmless
    assert arm.model.vis.quality.offsamples != 0  # the arm's own model is left as it was


def test_bad_geometry_is_refused(arm):
    with pytest.raises(ValueError):
        StereoEndoscope(arm.model, arm.data, baseline_m=0.0)
    with pytest.raises(ValueError):
        StereoEndoscope(arm.model, arm.data, target=(0, 0, -0.1), position=(0, 0, 0))


def test_a_ctrl_c_inside_the_egl_call_is_an_interrupt(endoscope, monkeypatch):
    """ctypes reports a KeyboardInterrupt raised while it converts a call's arguments as an
    ArgumentError: the node must see the Ctrl-C (a clean stop), not an error (exit 1)."""
    def interrupted():
        raise ctypes.ArgumentError("argument 2: KeyboardInterrupt: ")
    monkeypatch.setattr(endoscope._gl, "make_current", interrupted)
    with pytest.raises(KeyboardInterrupt):
        endoscope.render()

    def broken():
        raise ctypes.ArgumentError("argument 1: TypeError: wrong type")
    monkeypatch.setattr(endoscope._gl, "make_current", broken)
    with pytest.raises(ctypes.ArgumentError):
        endoscope.render()
