"""Masks from a box or a click against the true masks: COCO-128 objects of at least 32 x 32 pixels.

    python benchmarks/prompts.py [--root ../shared/realdata/coco128-seg] [--objects 200] [--start 0] [--output DIR]
                                 [--held-out CHECKPOINT [--config real_lite0] [--episodes 300]]
                                 [--refine BUNDLE]

Each object is one polygon of the YOLO-seg labels (its instance, rasterised as the trainer does);
its box is the polygon's bounding box; its click is the object's innermost pixel (the maximum of
the distance transform, what a person aiming at the middle would hit). For each object the SDK's
``mask_from_prompt`` makes a mask from the box, from the click, and from both; the script prints
the mean IoU against the instance mask for each. Objects are taken in file order, every k-th one
so that ``--objects`` spread over the set, from the ``--start``-th (with 200 of the 521, ``--start 1``
takes the other objects: the set the settings were not chosen on).

``--refine BUNDLE``: the box-made mask refined by the model's own prediction on the support image
(the image registered with its GrabCut mask, then segmented; within the box): the prediction
alone, its intersection with the GrabCut mask, and its union, against the GrabCut mask alone.

``--held-out CHECKPOINT``: the config's held-out episodes (1 shot, the classes never trained on)
run twice in PyTorch, with the support's true mask and with the mask made from its box (the
bounding box of the true mask); the 1-shot mIoU of each. Where the box yields no mask, the box
itself is the mask (counted).
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


def held_out_boxes(checkpoint: Path, config_name: str, episodes: int) -> dict:
    """1-shot mIoU of the held-out episodes with true support masks and with masks from their boxes."""
    import torch

    from sccan.sdk.preprocess import foreground_logit, resize_to_frame
    from sccan.train.checkpoint import load_model
    from sccan.train.config import load_config
    from sccan.train.data.datasets import build_dataset
    from sccan.train.data.episodes import Episode
    from sccan.train.evaluate import IoUMeter, episode_tensors

    torch.set_grad_enabled(False)
    config = load_config(config_name)
    model = load_model(checkpoint).eval()
    size = config["data"]["size"]
    dataset = build_dataset(config["data"], "test", seed=config["eval"]["seed"], episodes=episodes)
    meters = {"true mask": IoUMeter(), "box": IoUMeter()}
    fallback, started = 0, time.perf_counter()
    for i in range(len(dataset)):
        episode = dataset[i]
        boxed = []
        for image, label in zip(episode.support, episode.support_labels):
            ys, xs = np.nonzero(label == 1)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            try:
                boxed.append(mask_from_prompt(np.ascontiguousarray(image), box=box).astype(np.uint8))
            except EmptyMaskError:
                fallback += 1
                rect = np.zeros(label.shape, np.uint8)
                rect[box[1]:box[3], box[0]:box[2]] = 1
                boxed.append(rect)
        for kind, shots in (("true mask", episode), ("box", Episode(episode.query, episode.query_label,
                                                                      episode.support, boxed, episode.class_id))):
            q, s, m, place = episode_tensors(model, shots, size)
            logits = model(q, s, m).float().numpy()
            pred = (resize_to_frame(foreground_logit(logits), place)[0] > 0).astype(np.int64)
            meters[kind].add(pred, episode.query_label, episode.class_id)
        if (i + 1) % 50 == 0:
            print(f"  held-out episode {i + 1}/{len(dataset)} ({time.perf_counter() - started:.0f} s)", flush=True)
    return {"checkpoint": str(checkpoint), "config": config_name, "episodes": len(dataset),
            "miou": {k: m.miou for k, m in meters.items()}, "box_fell_back_to_rectangle": fallback}


def refined(seg, image: np.ndarray, grabcut: np.ndarray, box: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """The model's prediction on ``image`` with ``grabcut`` as its own support, kept inside ``box``;
    and its intersection and union with the GrabCut mask."""
    try:
        seg.add_class("prompt", [image], [grabcut])
    except EmptyMaskError:  # too small a mask to register: nothing to refine with, GrabCut's stands
        same = grabcut > 0
        return {"box -> model": same, "box: GrabCut and model": same, "box: GrabCut or model": same}
    predicted = seg.segment(image, threshold=0.5, presence_threshold=0.0).masks["prompt"]
    inside = np.zeros(grabcut.shape, bool)
    inside[box[1]:box[3], box[0]:box[2]] = True
    model = predicted & inside
    return {"box -> model": model, "box: GrabCut and model": model & (grabcut > 0),
            "box: GrabCut or model": model | (grabcut > 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/realdata/coco128-seg"))
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--start", type=int, default=0,
                        help="the first of every k-th object (1: the objects the default run leaves out)")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--held-out", type=Path, metavar="CHECKPOINT",
                        help="also the held-out episodes with true masks against box-made ones, this model")
    parser.add_argument("--config", default="real_lite0", help="the held-out episodes' config (with --held-out)")
    parser.add_argument("--episodes", type=int, default=300, help="held-out episodes (with --held-out)")
    parser.add_argument("--refine", type=Path, metavar="BUNDLE",
                        help="also the box-made mask refined by this bundle's prediction on the support image")
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
    chosen = found[args.start::step][:args.objects]
    scores: dict[str, list[float]] = {"box": [], "click": [], "box + click": []}
    seg = None
    if args.refine:
        from sccan.sdk import Segmenter

        seg = Segmenter(args.refine, backend="onnxruntime")
        scores.update({"box -> model": [], "box: GrabCut and model": [], "box: GrabCut or model": []})
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
                mask = mask_from_prompt(image, **prompt)
                scores[kind].append(iou(mask, truth))
            except EmptyMaskError:
                mask = None
                scores[kind].append(0.0)
                empty[kind] += 1
            if kind == "box" and seg is not None:
                made = refined(seg, image, mask, box) if mask is not None else {}
                for name in ("box -> model", "box: GrabCut and model", "box: GrabCut or model"):
                    scores[name].append(iou(made[name], truth) if name in made else 0.0)
        if (n + 1) % 50 == 0:
            print(f"  {n + 1}/{len(chosen)} objects ({time.perf_counter() - started:.0f} s)", flush=True)
    report = {"objects": len(chosen), "of": len(found), "min_side": MIN_SIDE,
              "mean_iou": {k: float(np.mean(v)) for k, v in scores.items()},
              "median_iou": {k: float(np.median(v)) for k, v in scores.items()}, "empty": empty}
    print(f"{len(chosen)} COCO-128 objects of at least {MIN_SIDE} x {MIN_SIDE} px (of {len(found)}): mean IoU of "
          "the mask from " + ", ".join(f"a {k} {v:.3f}" for k, v in report["mean_iou"].items()))
    if args.held_out:
        report["held_out"] = held_out_boxes(args.held_out, args.config, args.episodes)
        h = report["held_out"]
        print(f"held-out episodes ({h['episodes']}, {h['config']}), 1-shot mIoU: true masks {h['miou']['true mask']:.3f}, "
              f"masks from boxes {h['miou']['box']:.3f} ({h['box_fell_back_to_rectangle']} boxes kept as rectangles)")
    if args.output:
        from sccan.sdk.bundle import write_json_atomic

        args.output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.output / "prompts.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
