"""Image preprocessing and postprocessing, defined once (numpy + OpenCV).

Training evaluation, the export checks and the SDK all call these functions, so the network
always sees the same pixels. Images are H x W x 3 uint8; colour order is explicit ("rgb" or
"bgr", OpenCV's). The network takes RGB in 0..255 units, normalised per backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IGNORE_LABEL = 255


@dataclass(frozen=True)
class Placement:
    """Where a resized image sits on the square canvas: top-left, ``height`` x ``width``."""

    height: int
    width: int
    original_height: int
    original_width: int


def placement(height: int, width: int, size: int) -> Placement:
    """The PFENet test-time resize: longer side to ``size`` keeping the aspect ratio, both sides
    floored to a multiple of 8 (at least 8)."""
    scale = size / max(height, width)
    new_h = max(8, int(height * scale) // 8 * 8)
    new_w = max(8, int(width * scale) // 8 * 8)
    return Placement(new_h, new_w, height, width)


def to_rgb(image: np.ndarray, color: str = "bgr") -> np.ndarray:
    """H x W x 3 uint8 in ``color`` order -> RGB."""
    if color == "rgb":
        return image
    if color == "bgr":
        return image[..., ::-1]
    raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")


def resize_image(image: np.ndarray, size: int) -> tuple[np.ndarray, Placement]:
    """H x W x C image -> (size x size x C canvas of zeros with the resized image top-left, placement)."""
    h, w = image.shape[:2]
    p = placement(h, w, size)
    canvas = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    canvas[:p.height, :p.width] = cv2.resize(image, (p.width, p.height), interpolation=cv2.INTER_LINEAR)
    return canvas, p


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """H x W label -> size x size, nearest-neighbour, padded with 255 (ignore)."""
    h, w = label.shape[:2]
    p = placement(h, w, size)
    canvas = np.full((size, size), IGNORE_LABEL, dtype=label.dtype)
    canvas[:p.height, :p.width] = cv2.resize(label, (p.width, p.height), interpolation=cv2.INTER_NEAREST)
    return canvas


def normalize(image_rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """H x W x 3 RGB (0..255) -> 3 x H x W float32 ``(x - mean) / std``."""
    x = (image_rgb.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_bilinear_align_corners(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with ``align_corners=True`` of N x H x W (float32), as the network's resizes.

    OpenCV has no align-corners mode, so this is separable linear interpolation in numpy.
    """
    n, h, w = x.shape

    def weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if dst == 1 or src == 1:
            pos = np.zeros(dst, np.float64)
        else:
            pos = np.arange(dst, dtype=np.float64) * (src - 1) / (dst - 1)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, src - 1)
        hi = np.clip(lo + 1, 0, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = weights(h, height)
    x0, x1, fx = weights(w, width)
    rows = x[:, y0, :] * (1 - fy)[None, :, None] + x[:, y1, :] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x1] * fx[None, None, :]


def logits_to_original(logits: np.ndarray, p: Placement) -> np.ndarray:
    """The reference evaluation path: C x 2 x S x S logits (at the network input size) -> resized to
    a square of the original's longer side -> cropped to the original H x W. C x 2 x H x W."""
    c, k, _, _ = logits.shape
    side = max(p.original_height, p.original_width)
    square = resize_bilinear_align_corners(logits.reshape(c * k, *logits.shape[2:]).astype(np.float32), side, side)
    return square.reshape(c, k, side, side)[:, :, :p.original_height, :p.original_width]


def foreground_probability(logits: np.ndarray) -> np.ndarray:
    """Softmax over the 2 logit channels, channel 1: C x 2 x H x W -> C x H x W float32."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)
