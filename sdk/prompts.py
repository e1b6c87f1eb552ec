"""Masks from prompts: a box or clicks on the object, instead of a drawn mask.

No model weights: OpenCV's GrabCut (iterated graph cuts on colour models) is seeded by the prompt.

* **box** ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive): outside it is background, inside it is
  probably the object;
* **points** ``[(x, y), ...]``: clicks on the object (positive), and ``negative_points`` clicks on
  what is not the object. Clicks alone make a region around the positive ones (their bounding box
  grown by a third of the image's shorter side), within which GrabCut decides; each click marks a
  small disc as sure object or sure background;
* both: the box, with the clicks as corrections.

The result keeps the connected parts that hold a positive click (or, for a box alone, the largest
part), with their holes filled. Where GrabCut keeps under :data:`MIN_BOX_FILL` of a box (it found
no object there that differs from the surroundings in colour), the mask is the ellipse inscribed in
the box instead (with the clicks' discs added or taken away): on COCO-128's photos that is closer
to the object than GrabCut's sliver or nothing (``benchmarks/prompts.py``). A prompt that leaves no
object (clicks only) raises :class:`EmptyMaskError`, as does a box on a featureless region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from .errors import BadArgumentError, BadImageError, EmptyMaskError

#: GrabCut iterations.
ITERATIONS = 5
#: The least share of a box GrabCut's mask must cover; below it the box's inscribed ellipse is used.
MIN_BOX_FILL = 0.15

Box = Sequence[float]
Point = Sequence[float]


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise BadArgumentError(f"{what} must be a finite number of pixels, got {value!r}")
    return float(value)


def check_box(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` as integers inside a ``height`` x ``width`` image, else BadArgumentError."""
    if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4:
        raise BadArgumentError(f"a box is (x0, y0, x1, y1) in pixels, got {box!r}")
    x0, y0, x1, y1 = (_number(v, f"box {name}") for v, name in zip(box, ("x0", "y0", "x1", "y1")))
    if x1 <= x0 or y1 <= y0:
        raise BadArgumentError(f"box {tuple(box)}: x1 must exceed x0 and y1 exceed y0 (corners reversed, or no area)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise BadArgumentError(f"box {tuple(box)} reaches outside the {width} x {height} image")
    x0i, y0i, x1i, y1i = int(math.floor(x0)), int(math.floor(y0)), int(math.ceil(x1)), int(math.ceil(y1))
    if x1i - x0i < 2 or y1i - y0i < 2:
        raise BadArgumentError(f"box {tuple(box)} is under 2 pixels wide or high")
    return x0i, y0i, x1i, y1i


def check_points(points: Sequence[Point] | None, height: int, width: int, what: str) -> list[tuple[int, int]]:
    if points is None:
        return []
    if not isinstance(points, (list, tuple, np.ndarray)):
        raise BadArgumentError(f"{what} are a list of (x, y) pixels, got {points!r}")
    out = []
    for p in points:
        if not isinstance(p, (list, tuple, np.ndarray)) or len(p) != 2:
            raise BadArgumentError(f"each of the {what} is (x, y) in pixels, got {p!r}")
        x, y = _number(p[0], f"{what} x"), _number(p[1], f"{what} y")
        if not (0 <= x < width and 0 <= y < height):
            raise BadArgumentError(f"{what[:-1]} ({x:g}, {y:g}) is outside the {width} x {height} image")
        out.append((int(x), int(y)))
    return out


def mask_from_prompt(image: np.ndarray, box: Box | None = None, points: Sequence[Point] | None = None,
                     negative_points: Sequence[Point] | None = None) -> np.ndarray:
    """An H x W uint8 mask (1 = object) of ``image`` (H x W x 3 uint8, either colour order) from a
    box and/or clicks; see the module docstring. Raises BadArgumentError for a bad prompt and
    EmptyMaskError when the prompt leaves no object."""
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 2:
        raise BadArgumentError(f"prompts need an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    positive = check_points(points, h, w, "points")
    negative = check_points(negative_points, h, w, "negative points")
    if box is None and not positive:
        raise BadArgumentError("give a box or at least one positive point on the object"
                               + (" (only negative points were given)" if negative else ""))
    if box is not None:
        x0, y0, x1, y1 = check_box(box, h, w)
    else:
        grow = min(h, w) // 3
        xs, ys = [p[0] for p in positive], [p[1] for p in positive]
        x0, y0 = max(0, min(xs) - grow), max(0, min(ys) - grow)
        x1, y1 = min(w, max(xs) + grow + 1), min(h, max(ys) + grow + 1)
    labels = np.full((h, w), cv2.GC_BGD, np.uint8)
    labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    radius = max(2, round(0.01 * math.hypot(h, w)))
    for x, y in positive:
        cv2.circle(labels, (x, y), radius, int(cv2.GC_FGD), -1)
    for x, y in negative:
        cv2.circle(labels, (x, y), radius, int(cv2.GC_BGD), -1)
    if (labels[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] == cv2.GC_BGD).sum() == 0 and \
            (x0, y0, x1, y1) == (0, 0, w, h):  # GrabCut needs background samples: the border's pixels
        labels[[0, -1], :] = cv2.GC_PR_BGD
        labels[:, [0, -1]] = cv2.GC_PR_BGD
    if float(image[y0:y1, x0:x1].reshape(-1, 3).std(axis=0).max()) < 1.0:
        raise EmptyMaskError(f"the prompt's region ({x0}, {y0}, {x1}, {y1}) is featureless: no object to separate")
    # GrabCut on the region around the prompt: the background's colour model is then the object's
    # surroundings, not the whole photo (and the cut is faster).
    mx, my = max(8, (x1 - x0) // 2), max(8, (y1 - y0) // 2)
    cx0, cy0, cx1, cy1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
    crop = np.ascontiguousarray(labels[cy0:cy1, cx0:cx1])
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(image[cy0:cy1, cx0:cx1]), crop, None, background, foreground, ITERATIONS,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error as exc:  # a uniform image: no colour model can be fit
        raise EmptyMaskError(f"the prompt's region could not be separated from the background ({exc.msg})") from None
    labels[cy0:cy1, cx0:cx1] = crop
    mask = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    mask = _keep_prompted(mask, positive)
    if box is not None and mask[y0:y1, x0:x1].sum() < MIN_BOX_FILL * (x1 - x0) * (y1 - y0):
        mask = _inscribed_ellipse(h, w, (x0, y0, x1, y1), positive, radius)
    for x, y in negative:  # what the person marked as not the object stays out (holes were filled)
        cv2.circle(mask, (x, y), radius, 0, -1)
    if not mask.any():
        raise EmptyMaskError("the prompt leaves no object: draw the box tighter around it, or click on it")
    return mask


def _inscribed_ellipse(h: int, w: int, box: tuple[int, int, int, int], positive: list[tuple[int, int]],
                       radius: int) -> np.ndarray:
    """The ellipse inscribed in ``box`` with the positive clicks' discs added; the parts holding a
    positive click (or the largest) kept."""
    x0, y0, x1, y1 = box
    mask = np.zeros((h, w), np.uint8)
    # the ellipse through the box's edge midpoints (pixel centres x0 .. x1 - 1, y0 .. y1 - 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    mask[y0:y1, x0:x1] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    for x, y in positive:
        cv2.circle(mask, (x, y), radius, 1, -1)
    return _keep_prompted(mask, positive)


def _keep_prompted(mask: np.ndarray, positive: list[tuple[int, int]]) -> np.ndarray:
    """The connected parts holding a positive click (none: the largest part), holes filled."""
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    keep = {int(parts[y, x]) for x, y in positive if parts[y, x] > 0}
    if not keep:
        keep = {1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))}
    kept = np.isin(parts, list(keep)).astype(np.uint8)
    # fill holes: what the outside (flood-filled from a padded border) does not reach
    padded = np.pad(kept, 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 1)
    holes = (outside == 0)[1:-1, 1:-1]
    return (kept.astype(bool) | holes).astype(np.uint8)


__all__ = ["mask_from_prompt", "check_box", "check_points"]


ShotPrompt = tuple[Box | None, Sequence[Point] | None, Sequence[Point] | None]


def shot_prompts(name: str, images: Sequence[np.ndarray] | np.ndarray, masks: object,
                 boxes: Sequence[Box | None] | None, points: Sequence[Sequence[Point] | None] | None,
                 negative_points: Sequence[Sequence[Point] | None] | None
                 ) -> tuple[list[np.ndarray], list[ShotPrompt] | None]:
    """``add_class``'s arguments checked the same way by every runtime (``Segmenter``,
    ``RemoteSegmenter``): the images as a list (one image may be given bare) and, where prompts
    replace the masks, each image's ``(box, points, negative_points)``; ``None`` where masks were
    given. BadArgumentError for masks and prompts both, neither, or a prompt list whose length is
    not the number of images; BadImageError for no image."""
    prompts = (boxes, points, negative_points)
    if masks is not None and any(p is not None for p in prompts):
        raise BadArgumentError(f"class {name!r}: give masks or prompts (boxes, points), not both")
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images]
    images = list(images)
    if masks is not None:
        return images, None
    if all(p is None for p in prompts):
        raise BadArgumentError(f"class {name!r}: give a mask, a box or points for each image")
    if not images:
        raise BadImageError(f"class {name!r}: give at least one example image")
    per_image = []
    for what, prompt in zip(("boxes", "points", "negative_points"), prompts):
        if prompt is not None and len(prompt) != len(images):
            raise BadArgumentError(f"class {name!r}: {len(images)} images but {len(prompt)} {what}")
        per_image.append(list(prompt) if prompt is not None else [None] * len(images))
    return images, list(zip(*per_image))


def masks_from_prompts(name: str, rgbs: Sequence[np.ndarray], prompts: Sequence[ShotPrompt]) -> list[np.ndarray]:
    """One mask per RGB uint8 image from its ``(box, points, negative_points)``
    (:func:`mask_from_prompt`); an error names the class and the shot."""
    masks = []
    for k, (rgb, (box, positive, negative)) in enumerate(zip(rgbs, prompts)):
        try:
            masks.append(mask_from_prompt(rgb, box=box, points=positive, negative_points=negative))
        except (BadArgumentError, EmptyMaskError) as exc:
            raise type(exc)(f"class {name!r} shot {k}: {exc}") from None
    return masks
