"""Masks from a box or a click against the true masks: COCO-128 objects of at least 32 x 32 pixels.

    python benchmarks/prompts.py [--root ../shared/realdata/coco128-seg] [--objects 200] [--output DIR]

Each object is one polygon of the YOLO-seg labels (its instance, rasterised as the trainer does);
its box is the polygon's bounding box; its click is the object's innermost pixel (the maximum of
the distance transform, what a person aiming at the middle would hit). For each object the SDK's
``mask_from_prompt`` makes a mask from the box, from the click, and from both; the script prints
the mean IoU against the instance mask for each. Objects are taken in file order, every k-th one
so that ``--objects`` spread over the set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from sccan.sdk.errors import EmptyMaskError
from sccan.sdk.prompts import mask_from_prompt
from sccan.train.data.yoloseg import parse_polygons

MIN_SIDE = 32


def objects(root: Path) -> list[tuple[Path, np.ndarray]]:
    """(image path, polygon) of every polygon of the labels (sizes are checked by the caller)."""
    out = []
    for label in sorted((root / "labels" / "train2017").glob("*.txt")):
        image = root / "images" / "train2017" / f"{label.stem}.jpg"
        if not image.is_file():
            continue
        for _, points in parse_polygons(label):
            out.append((image, points))
    return out


def instance_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(points * (w, h) - 0.5).astype(np.int32)], 1)
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/realdata/coco128-seg"))
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    found = []
    for image_path, points in objects(args.root):
        image = cv2.imread(str(image_path))
        truth = instance_mask(points, image.shape[:2])
        ys, xs = np.nonzero(truth)
        if len(xs) == 0 or xs.max() - xs.min() + 1 < MIN_SIDE or ys.max() - ys.min() + 1 < MIN_SIDE:
            continue
        found.append((image_path, points))
    step = max(1, len(found) // args.objects)
    chosen = found[::step][:args.objects]
    scores: dict[str, list[float]] = {"box": [], "click": [], "box + click": []}
    empty = {k: 0 for k in scores}
    started = time.perf_counter()
    for n, (image_path, points) in enumerate(chosen):
        image = cv2.imread(str(image_path))
        truth = instance_mask(points, image.shape[:2])
        ys, xs = np.nonzero(truth)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        inner = cv2.distanceTransform(truth, cv2.DIST_L2, 5)
        cy, cx = np.unravel_index(int(np.argmax(inner)), inner.shape)
        for kind, prompt in (("box", {"box": box}), ("click", {"points": [(cx, cy)]}),
                             ("box + click", {"box": box, "points": [(cx, cy)]})):
            try:
                scores[kind].append(iou(mask_from_prompt(image, **prompt), truth))
            except EmptyMaskError:
                scores[kind].append(0.0)
                empty[kind] += 1
        if (n + 1) % 50 == 0:
            print(f"  {n + 1}/{len(chosen)} objects ({time.perf_counter() - started:.0f} s)", flush=True)
    report = {"objects": len(chosen), "of": len(found), "min_side": MIN_SIDE,
              "mean_iou": {k: float(np.mean(v)) for k, v in scores.items()},
              "median_iou": {k: float(np.median(v)) for k, v in scores.items()}, "empty": empty}
    print(f"{len(chosen)} COCO-128 objects of at least {MIN_SIDE} x {MIN_SIDE} px (of {len(found)}): mean IoU of "
          "the mask from " + ", ".join(f"a {k} {v:.3f}" for k, v in report["mean_iou"].items()))
    if args.output:
        from sccan.sdk.bundle import write_json_atomic

        args.output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.output / "prompts.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
