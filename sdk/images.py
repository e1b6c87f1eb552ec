"""Checking and converting the images and masks users hand to the SDK.

Decisions: colour images are H x W x 3 (BGR by default, OpenCV's order; ``color="rgb"`` otherwise).
Grayscale (H x W or H x W x 1) is converted to three equal channels; BGRA/RGBA (H x W x 4) has its
alpha dropped. uint8 is the native type; float images are accepted when every value is finite and
within 0..255 (the same scale as uint8) and are kept as float32, unrounded (the reference pipeline
works on float pixels); a float image whose maximum is at most 1 gets a warning, since it is
probably in 0..1. uint16 and other integer types outside 0..255 are refused with a hint. Masks are
H x W (or H x W x 1) of any numeric or bool type; any non-zero pixel is foreground; their size
must equal their image's.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import BadArgumentError, BadImageError, BadMaskError, EmptyMaskError
from .preprocess import to_rgb

COLOR_ORDERS = ("bgr", "rgb")


def check_color(color: object) -> str:
    """``color`` if it is a colour order the SDK knows, else :class:`BadArgumentError`."""
    if color not in COLOR_ORDERS:
        raise BadArgumentError(f"color must be 'bgr' (OpenCV's order) or 'rgb', got {color!r}")
    return color  # type: ignore[return-value]


def as_rgb(image: object, color: str = "bgr", what: str = "image") -> np.ndarray:
    """A valid H x W x 3 RGB image from what the user gave (uint8, or float32 for float input), or
    :class:`BadImageError`."""
    check_color(color)
    if not isinstance(image, np.ndarray):
        raise BadImageError(f"{what} must be a numpy array (H x W x 3), got {type(image).__name__}")
    if image.size == 0 or image.ndim < 2 or min(image.shape[:2]) == 0:
        raise BadImageError(f"{what} is empty (shape {image.shape})")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise BadImageError(f"{what} must be H x W x 3 (or grayscale H x W, or H x W x 4 with alpha), "
                            f"got shape {image.shape}")
    if image.dtype == np.uint8:
        pass
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise BadImageError(f"{what} holds NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 255:
            raise BadImageError(f"float {what} must hold values within 0..255, got {low:g}..{high:g}")
        if 0 < high <= 1:
            warnings.warn(f"float {what} holds values within 0..{high:g}: the SDK reads floats on the 0..255 "
                          "scale of uint8, so this looks nearly black to the network; multiply by 255 if it "
                          "is in 0..1", UserWarning, stacklevel=3)
        image = image.astype(np.float32)
    elif image.dtype == bool or np.issubdtype(image.dtype, np.integer):
        if image.min() < 0 or image.max() > 255:
            hint = (" (a 16-bit image: convert with (image / 257).astype(np.uint8), or "
                    "cv2.convertScaleAbs(image, alpha=255 / image.max()))") if image.dtype == np.uint16 else ""
            raise BadImageError(f"{what} of dtype {image.dtype} must hold values within 0..255, got "
                                f"{image.min()}..{image.max()}{hint}")
        image = image.astype(np.uint8)
    else:
        raise BadImageError(f"{what} has unsupported dtype {image.dtype} (use uint8)")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(to_rgb(image, color))


def as_mask(mask: object, shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    """A 0/1 uint8 H x W mask (non-zero = foreground) matching ``shape``, or :class:`BadMaskError`."""
    if not isinstance(mask, np.ndarray):
        raise BadMaskError(f"{what} must be a numpy array (H x W), got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise BadMaskError(f"{what} must be H x W, got shape {mask.shape}")
    if mask.shape != tuple(shape):
        raise BadMaskError(f"{what} is {mask.shape[0]} x {mask.shape[1]} but its image is {shape[0]} x {shape[1]}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
        raise BadMaskError(f"{what} has unsupported dtype {mask.dtype}")
    if np.issubdtype(mask.dtype, np.floating) and not np.isfinite(mask).all():
        raise BadMaskError(f"{what} holds NaN or infinite values")
    binary = (mask != 0).astype(np.uint8)
    if not binary.any():
        raise EmptyMaskError(f"{what} has no foreground pixel (any non-zero pixel is the object)")
    return binary
