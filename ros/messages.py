"""``sensor_msgs/Image`` fields <-> numpy arrays, without ROS: what the node converts, testable anywhere."""

from __future__ import annotations

import numpy as np

from sccan.sdk.errors import BadImageError

#: encodings the node takes, with the colour order the Segmenter is given
ENCODINGS = {"bgr8": "bgr", "rgb8": "rgb", "mono8": "bgr", "bgra8": "bgr", "rgba8": "rgb"}
CHANNELS = {"mono8": 1, "bgr8": 3, "rgb8": 3, "bgra8": 4, "rgba8": 4}


def image_to_array(height: int, width: int, encoding: str, step: int, data: bytes) -> tuple[np.ndarray, str]:
    """A sensor_msgs/Image's fields -> (H x W x C uint8 array, colour order for the Segmenter).

    Raises :class:`BadImageError` for an encoding the node does not take, an empty image, or data
    shorter than ``height x step`` (a truncated or inconsistent message)."""
    if encoding not in ENCODINGS:
        raise BadImageError(f"unsupported image encoding {encoding!r}; use one of {sorted(ENCODINGS)}")
    channels = CHANNELS[encoding]
    if height <= 0 or width <= 0:
        raise BadImageError(f"empty image ({width} x {height})")
    if step < width * channels or len(data) < height * step:
        raise BadImageError(f"image data of {len(data)} bytes does not hold {height} rows of step {step} "
                            f"({width} x {channels} bytes each)")
    rows = np.frombuffer(data, np.uint8, count=height * step).reshape(height, step)[:, :width * channels]
    return rows.reshape(height, width, channels), ENCODINGS[encoding]


def mask_from_image(height: int, width: int, encoding: str, step: int, data: bytes) -> np.ndarray:
    """A mask message (mono8, or any image encoding: its first channel) -> H x W uint8; non-zero is the object."""
    array, _ = image_to_array(height, width, encoding, step, data)
    return np.ascontiguousarray(array[..., 0])


__all__ = ["image_to_array", "mask_from_image", "ENCODINGS"]
