"""``sccan segment``: register supports, segment an image, folder, video or camera, write overlays."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from .errors import SCCANError
from .segmenter import Segmenter
from .sources import open_source, read_image, read_mask


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.cuda_graph and args.backend != "tensorrt":
        raise SCCANError("--cuda-graph needs --backend tensorrt")
    seg = Segmenter(args.bundle, backend=args.backend, threads=args.threads, cuda_graph=args.cuda_graph)
    if args.load_support:
        seg.load_support(args.load_support)
    if args.support:
        if not args.class_name:
            raise SCCANError("give --class NAME for the --support examples")
        images, masks = [], []
        for pair in args.support:
            if ":" not in pair:
                raise SCCANError(f"--support takes IMAGE:MASK, got {pair!r}")
            image_path, mask_path = pair.rsplit(":", 1)
            images.append(read_image(image_path))
            masks.append(read_mask(mask_path))
        seg.add_class(args.class_name, images, masks)
    if args.save_support:
        seg.save_support(args.save_support)
    source = open_source(args.input)
    writer, frames, start = None, 0, time.perf_counter()
    bar = tqdm(source.frames, total=source.count, unit="frame", desc="segment")
    try:
        for name, frame in bar:
            result = seg.segment(frame, threshold=args.threshold)
            overlay = result.overlay(frame)
            frames += 1
            if source.stream:
                if writer is None:
                    h, w = overlay.shape[:2]
                    writer = cv2.VideoWriter(str(out / "segmented.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                             source.fps or 30.0, (w, h))
                writer.write(overlay)
                bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.1f}")
            else:
                cv2.imwrite(str(out / f"{name}_overlay.png"), overlay)
                cv2.imwrite(str(out / f"{name}_labels.png"), result.label_map.astype("uint8"))
            if args.max_frames and frames >= args.max_frames:
                break
    finally:
        if writer is not None:
            writer.release()
    elapsed = time.perf_counter() - start
    print(f"{frames} frame(s) in {elapsed:.2f} s ({frames / elapsed:.1f} FPS, backend {seg.backend.name}); "
          f"classes {seg.classes}; written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images, a folder, a video or a camera with a bundle")
    p.add_argument("--bundle", required=True, help="bundle directory from `sccan export`")
    p.add_argument("--class", dest="class_name", help="name of the class the --support examples show")
    p.add_argument("--support", action="append", metavar="IMAGE:MASK", help="an example and its mask (repeat: shots)")
    p.add_argument("--load-support", help="support file from --save-support (instead of, or besides, --support)")
    p.add_argument("--save-support", help="write the registered classes' support features here")
    p.add_argument("--input", required=True, help="image, folder, video, csi://0, v4l2:///dev/video0, rtsp://...")
    p.add_argument("--output", required=True, help="directory for overlay PNGs / segmented.mp4")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--threads", type=int, help="ONNX Runtime CPU threads")
    p.add_argument("--cuda-graph", action="store_true",
                   help="TensorRT: replay the per-frame work as CUDA graphs (needs cuda-python)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (streams)")
    p.set_defaults(func=run)
