"""``sccan demo``: the whole path on this CPU in a minute or two.

Export the shipped synthetic few-shot model (trained with this project's trainer; ``--train``
trains it again here) to a bundle with the parity gate, register supports of held-out novel
classes through the SDK, segment their queries, and report IoU, per-stage latency (on the
episodes' frames and on a 640 x 480 frame) and an overlay grid.

The shipped checkpoint, ``sccan/train/weights/synthetic_lite0.pt``, is reproduced by::

    sccan train --config synthetic_lite0 --output runs/synthetic_lite0   # then take best.pt

(on an AVX-512 host; other instruction sets round differently and reach a slightly different model).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from sccan.sdk import SCCANError, Segmenter


#: The shipped demo model (see the module docstring for how it was made).
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "weights" / "synthetic_lite0.pt"


def _tile(image: np.ndarray, size: int = 160) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def run(args: argparse.Namespace) -> int:
    from sccan.train.config import load_config
    from sccan.train.data.datasets import build_dataset
    from sccan.train.evaluate import IoUMeter

    from .exporter import export_bundle

    if args.real:
        from .real_demo import run_real

        return run_real(args)
    if args.video or args.mask or args.sequence:
        raise SCCANError("--video, --mask and --sequence go with --real (the real-photo model)")
    if args.episodes < 1:
        raise SCCANError(f"--episodes must be at least 1, got {args.episodes}")
    if args.grid < 0:
        raise SCCANError(f"--grid must be 0 (no picture) or more, got {args.grid}")
    if args.checkpoint and args.train:
        raise SCCANError("give --checkpoint or --train, not both")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise SCCANError(f"checkpoint {args.checkpoint} does not exist")
    config = load_config(args.config)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
        print(f"[1/3] using checkpoint {checkpoint}")
    elif args.train:
        from sccan.train.trainer import train

        config["output"] = str(work / "train")
        print(f"[1/3] training the synthetic model ({args.config}) on this machine (several minutes)...")
        result = train(config, progress=not args.quiet)
        checkpoint = result.output / "best.pt"
        print(f"      {result.steps} steps, best validation mIoU {result.best_miou:.3f}")
    else:
        checkpoint = DEMO_CHECKPOINT
        if args.config != "synthetic_lite0":
            raise SCCANError("the shipped model is for the synthetic_lite0 config: pass --train or --checkpoint")
        print(f"[1/3] using the shipped synthetic model {checkpoint.name} (--train trains it again here)")
    size = config["data"]["size"]
    print("[2/3] exporting to an ONNX bundle (with the parity gate)...")
    bundle = export_bundle(checkpoint, work / "bundle", size=size, max_shots=max(2, config["data"]["shots"]),
                           max_classes=4, check_episodes=1, fp16=False, force=True, progress=not args.quiet).bundle
    seg = Segmenter(bundle, backend="onnxruntime")
    print(f"      bundle: input {seg.size} x {seg.size}, up to {seg.max_shots} shots and {seg.max_classes} classes "
          f"per decoder run; {config['data']['shots']} shot(s) per episode here")
    print(f"[3/3] segmenting {args.episodes} held-out episodes of novel classes with the SDK (ONNX Runtime, CPU)...")
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
    grid_path = None
    if rows:
        header = np.full((26, rows[0].shape[1], 3), 255, np.uint8)
        for j, text in enumerate(("support (outlined)", "query", "SCCAN (SDK)", "truth (outlined)")):
            cv2.putText(header, text, (j * 160 + 5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        grid_path = work / "demo_overlays.png"
        cv2.imwrite(str(grid_path), np.concatenate([header, *rows], axis=0))
    median = {k: 1000 * float(np.median([t[k] for t in timings])) for k in timings[0]}
    # The same model on a camera-sized frame: the episode's query scaled up to 640 x 480.
    seg.add_class(name, [s[..., ::-1] for s in episode.support], episode.support_labels)
    camera = cv2.resize(episode.query[..., ::-1], (640, 480), interpolation=cv2.INTER_LINEAR)
    seg.segment(camera, classes=[name])
    camera_timings = [seg.segment(camera, classes=[name]).timings for _ in range(5)]
    camera_median = {k: 1000 * float(np.median([t[k] for t in camera_timings])) for k in camera_timings[0]}
    side = episode.query.shape[0]
    print(f"\nnovel-class mIoU over {len(dataset)} episodes: {meter.miou:.3f} (FB-IoU {meter.fbiou:.3f})")
    print(f"median latency per {side} x {side} frame (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in median.items()))
    print("median latency per 640 x 480 frame (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in camera_median.items()))
    if grid_path:
        print(f"overlays: {grid_path}")
    print(f"bundle:   {bundle}\ntotal:    {time.perf_counter() - started:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="export and run the shipped synthetic few-shot model on this CPU")
    p.add_argument("--workdir", "--output", default="sccan-demo",
                   help="where the bundle and pictures go (default sccan-demo/)")
    p.add_argument("--config", default="synthetic_lite0", help="config (name or file) of the data and model")
    p.add_argument("--checkpoint", help="use this checkpoint instead of the shipped one")
    p.add_argument("--train", action="store_true",
                   help="train the model again on this machine with the project's trainer (several minutes)")
    p.add_argument("--episodes", type=int, default=40, help="held-out episodes to segment")
    p.add_argument("--grid", type=int, default=8, help="episodes drawn in the overlay grid (0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    real = p.add_argument_group("real photos (--real): the shipped real-photo edge model on your clip")
    real.add_argument("--real", action="store_true", help="register an object from a clip's first frame, segment "
                      "the rest, write an MP4 and a strip, print J and F where masks exist")
    real.add_argument("--video", help="a DAVIS-layout folder, a folder of frames or a video file")
    real.add_argument("--sequence", help="the sequence in a DAVIS-layout folder (default: the first)")
    real.add_argument("--mask", help="the first frame's mask (folder of frames or video file)")
    real.add_argument("--frames", type=int, default=60, help="frames to read at most (default 60)")
    real.add_argument("--fps", type=float, default=6.0, help="frame rate of the MP4 (default 6)")
    real.add_argument("--absent-frames", type=int, default=3, metavar="N",
                      help="on a DAVIS-layout folder, then segment N frames of the next sequence, where the object is "
                           "absent, and print its presence there (default 3; 0: none)")
    real.add_argument("--memory", type=int, default=0, metavar="M",
                      help="track mode: up to M confident frames join the object's support as the clip goes on; "
                           "prints J with and without it")
    p.set_defaults(func=run)
