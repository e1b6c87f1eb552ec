"""``sccan demo``: the whole path on this CPU in a few minutes.

Train the synthetic few-shot model with the project's own trainer (or reuse a checkpoint), export
it to a bundle (with the parity gate), register supports of held-out novel classes through the
SDK, segment their queries, and report IoU, per-stage latency and an overlay grid.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from sccan.sdk import Segmenter
from sccan.train.config import load_config
from sccan.train.data.datasets import build_dataset
from sccan.train.evaluate import IoUMeter

from .exporter import export_bundle


def _tile(image: np.ndarray, size: int = 160) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config, {"output": str(work / "train")})
    started = time.perf_counter()
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "train" / "best.pt"
    if args.checkpoint:
        print(f"[1/3] using checkpoint {checkpoint}")
    elif checkpoint.is_file() and not args.retrain:
        print(f"[1/3] reusing {checkpoint} (pass --retrain to train again)")
    else:
        from sccan.train.trainer import train

        print(f"[1/3] training the synthetic model ({args.config}) on this machine...")
        result = train(config, progress=not args.quiet)
        print(f"      {result.steps} steps, best validation mIoU {result.best_miou:.3f}")
    size = config["data"]["size"]
    print("[2/3] exporting to an ONNX bundle (with the parity gate)...")
    bundle = export_bundle(checkpoint, work / "bundle", size=size, max_shots=max(2, config["data"]["shots"]),
                           max_classes=4, check_episodes=1, fp16=False, force=True, progress=not args.quiet).bundle
    print(f"[3/3] segmenting {args.episodes} held-out episodes of novel classes with the SDK (ONNX Runtime, CPU)...")
    seg = Segmenter(bundle, backend="onnxruntime")
    dataset = build_dataset(config["data"], "test", seed=config["eval"]["seed"], episodes=args.episodes)
    names = getattr(dataset, "class_names", {})
    meter, rows, timings = IoUMeter(), [], []
    for i in range(len(dataset)):
        episode = dataset[i]
        name = names.get(episode.class_id, f"class{episode.class_id}")
        # The SDK takes BGR (OpenCV's order); episodes are RGB.
        seg.add_class(name, [s[..., ::-1] for s in episode.support], episode.support_labels)
        result = seg.segment(episode.query[..., ::-1], classes=[name])
        seg.remove_class(name)
        meter.add(result.masks[name].astype(np.int64), episode.query_label, episode.class_id)
        timings.append(result.timings)
        if len(rows) < args.grid:
            support = episode.support[0][..., ::-1].copy()
            contours, _ = cv2.findContours(episode.support_labels[0].astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(support, contours, -1, (255, 255, 255), 2)
            truth = episode.query[..., ::-1].copy()
            contours, _ = cv2.findContours((episode.query_label == 1).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(truth, contours, -1, (60, 220, 60), 2)
            rows.append(np.concatenate([_tile(support), _tile(episode.query[..., ::-1]),
                                        _tile(result.overlay(episode.query[..., ::-1])), _tile(truth)], axis=1))
    header = np.full((26, rows[0].shape[1], 3), 255, np.uint8)
    for j, text in enumerate(("support (outlined)", "query", "SCCAN (SDK)", "truth (outlined)")):
        cv2.putText(header, text, (j * 160 + 5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    grid_path = work / "demo_overlays.png"
    cv2.imwrite(str(grid_path), np.concatenate([header, *rows], axis=0))
    median = {k: 1000 * float(np.median([t[k] for t in timings])) for k in timings[0]}
    print(f"\nnovel-class mIoU over {len(dataset)} episodes: {meter.miou:.3f} (FB-IoU {meter.fbiou:.3f})")
    print("median latency per frame (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in median.items()))
    print(f"overlays: {grid_path}\nbundle:   {bundle}\ntotal:    {time.perf_counter() - started:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, export and run the synthetic few-shot model on this CPU")
    p.add_argument("--workdir", default="sccan-demo", help="where the run, bundle and pictures go")
    p.add_argument("--config", default="synthetic_lite0", help="training config (name or file)")
    p.add_argument("--checkpoint", help="skip training: use this checkpoint")
    p.add_argument("--retrain", action="store_true", help="train even if the workdir holds a model")
    p.add_argument("--episodes", type=int, default=40, help="held-out episodes to segment")
    p.add_argument("--grid", type=int, default=8, help="episodes drawn in the overlay grid")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
