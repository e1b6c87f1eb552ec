"""Training augmentation of the reference recipe, in numpy/OpenCV.

In order: random scale; with probability 0.5 a rotation within +-10 degrees (image padded with the
mean colour, label with 255); with probability 0.5 a 5 x 5 Gaussian blur; with probability 0.5 a
horizontal flip; a random crop to ``size`` (padding as for rotation) re-drawn up to 30 times until
it keeps at least 85% of the foreground pixels. Every random draw comes from the generator passed
in, so an episode's augmentation is a function of its seed.
"""

from __future__ import annotations

import cv2
import numpy as np

from sccan.sdk.preprocess import IGNORE_LABEL

PASCAL_SCALE = (0.9, 1.1)
COCO_SCALE = (0.8, 1.25)


def augment(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator,
            scale: tuple[float, float], mean: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 H x W x 3 image and uint8 label (0, 1, 255) -> ``size`` x ``size`` pair."""
    fill = tuple(float(m) for m in mean)
    s = rng.uniform(*scale)
    h, w = label.shape
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        angle = rng.uniform(-10, 10)
        m = cv2.getRotationMatrix2D((nw / 2, nh / 2), angle, 1.0)
        image = cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=fill)
        label = cv2.warpAffine(label, m, (nw, nh), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=IGNORE_LABEL)
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (5, 5), 0)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return crop(image, label, size, rng, fill)


def crop(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator,
         fill: tuple[float, ...], keep: float = 0.85, tries: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Pad to at least ``size`` (image with ``fill``, label with 255), then a random ``size`` crop that
    keeps >= ``keep`` of the foreground (label 1) pixels, re-drawn up to ``tries`` times."""
    h, w = label.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        top, left = ph // 2, pw // 2
        image = cv2.copyMakeBorder(np.ascontiguousarray(image), top, ph - top, left, pw - left,
                                   cv2.BORDER_CONSTANT, value=fill)
        label = cv2.copyMakeBorder(np.ascontiguousarray(label), top, ph - top, left, pw - left,
                                   cv2.BORDER_CONSTANT, value=IGNORE_LABEL)
    h, w = label.shape
    total = int((label == 1).sum())
    for _ in range(tries):
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        window = label[y:y + size, x:x + size]
        if total == 0 or (window == 1).sum() >= keep * total:
            break
    return np.ascontiguousarray(image[y:y + size, x:x + size]), np.ascontiguousarray(window)
