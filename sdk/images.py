"""Checking and converting the images and masks users hand to the SDK.

Decisions: colour images are H x W x 3 (BGR by default, OpenCV's order; ``color="rgb"`` otherwise).
Grayscale (H x W or H x W x 1) is converted to three equal channels; BGRA/RGBA (H x W x 4) has its
alpha dropped. uint8 is the native type; float images are accepted when every value is finite and
within 0..255 (the same scale as uint8). Masks are H x W (or H x W x 1) of any numeric or bool
type; any non-zero pixel is foreground; their size must equal their image's.
"""

from __future__ import annotations

import numpy as np

from .errors import BadImageError, BadMaskError, EmptyMaskError
from .preprocess import to_rgb


def as_rgb(image: object, color: str = "bgr", what: str = "image") -> np.ndarray:
    """A valid H x W x 3 uint8 RGB image from what the user gave, or :class:`BadImageError`."""
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
        if image.min() < 0 or image.max() > 255:
            raise BadImageError(f"float {what} must hold values within 0..255, got {image.min():g}..{image.max():g}")
        image = np.round(image).astype(np.uint8)
    elif image.dtype == bool or np.issubdtype(image.dtype, np.integer):
        if image.min() < 0 or image.max() > 255:
            raise BadImageError(f"{what} of dtype {image.dtype} must hold values within 0..255")
        image = image.astype(np.uint8)
    else:
        raise BadImageError(f"{what} has unsupported dtype {image.dtype} (use uint8)")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        image = image[..., :3]
    if color not in ("rgb", "bgr"):
        raise BadImageError(f"color must be 'rgb' or 'bgr', got {color!r}")
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
