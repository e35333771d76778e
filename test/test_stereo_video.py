"""Camera pictures as the endoscope encoder takes them: each 8-bit colour encoding to RGB, rows
padded or not, and a clear refusal of what it cannot take."""

import numpy as np
import pytest
from sensor_msgs.msg import Image

from telesurg.ros.stereo_video import rgb_array

RGB = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)


def image(pixels: np.ndarray, encoding: str, padding: int = 0) -> Image:
    height, width, channels = pixels.shape
    rows = np.zeros((height, width * channels + padding), np.uint8)
    rows[:, :width * channels] = pixels.reshape(height, -1)
    return Image(height=height, width=width, encoding=encoding, step=rows.shape[1],
                 data=rows.tobytes())


@pytest.mark.parametrize("encoding, stored", [
    ("rgb8", RGB), ("bgr8", RGB[:, :, ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)]))])
@pytest.mark.parametrize("padding", [0, 5])
def test_every_colour_encoding_reads_as_rgb(encoding, stored, padding):
    assert np.array_equal(rgb_array(image(stored, encoding, padding)), RGB)


def test_a_picture_without_colour_is_refused_naming_its_encoding():
    with pytest.raises(ValueError, match="'mono8' is not one of rgb8, bgr8, rgba8, bgra8"):
        rgb_array(image(RGB[:, :, :1], "mono8"))


def test_a_picture_shorter_than_its_size_says_is_refused():
    short = image(RGB, "rgb8")
    short.data = short.data[:-1]
    with pytest.raises(ValueError, match="6x4 rgb8 image with step 18 and 71 bytes"):
        rgb_array(short)
