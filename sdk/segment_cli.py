"""``sccan segment``: register supports, segment an image, folder, video or camera, write overlays.

Per image it writes ``NAME_overlay.png`` (the frame with the masks drawn), ``NAME_labels.png``
(the label map as 8-bit values: 0 = background, i = the i-th class; it looks black in a viewer)
and ``NAME_labels_color.png`` (the same map in the overlay's class colours). Streams give
``segmented.mp4``. Nothing is created when the arguments or the supports are wrong.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from .errors import BadArgumentError, SCCANError
from .segmenter import BACKENDS, Segmenter, check_threshold
from .sources import open_source, read_image, read_mask


def _check_support_args(args: argparse.Namespace) -> None:
    if args.support and not args.class_name:
        raise BadArgumentError("--support needs --class NAME: the name of the object the examples show")
    if args.class_name and not args.support:
        raise BadArgumentError(f"--class {args.class_name} needs at least one --support IMAGE:MASK example")
    if not args.support and not args.load_support:
        raise BadArgumentError("nothing to segment: give --class NAME --support IMAGE:MASK, or --load-support FILE")


def _supports(args: argparse.Namespace) -> tuple[list, list]:
    images, masks = [], []
    for pair in args.support or []:
        if ":" not in pair:
            raise BadArgumentError(f"--support takes IMAGE:MASK (two paths joined by ':'), got {pair!r}")
        image_path, mask_path = pair.rsplit(":", 1)
        images.append(read_image(image_path))
        masks.append(read_mask(mask_path))
    return images, masks


def run(args: argparse.Namespace) -> int:
    threshold = check_threshold(args.threshold)
    if args.cuda_graph and args.backend != "tensorrt":
        raise BadArgumentError("--cuda-graph needs --backend tensorrt")
    _check_support_args(args)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise BadArgumentError(f"--output {out} is a file; give a directory")
    if args.save_support and Path(args.save_support).is_dir():
        raise BadArgumentError(f"--save-support {args.save_support} is a directory; give a file path such as "
                               "classes.npz")
    images, masks = _supports(args)
    seg = Segmenter(args.bundle, backend=args.backend, threads=args.threads, precision=args.precision,
                    cuda_graph=args.cuda_graph)
    if args.load_support:
        seg.load_support(args.load_support)
    if images:
        seg.add_class(args.class_name, images, masks)
    source = open_source(args.input)
    if args.save_support:
        seg.save_support(args.save_support)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    writer, frames, start = None, 0, time.perf_counter()
    bar = tqdm(source.frames, total=source.count, unit="frame", desc="segment")
    try:
        for name, frame in bar:
            result = seg.segment(frame, threshold=threshold)
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
                cv2.imwrite(str(out / f"{name}_labels_color.png"), result.label_colors())
            if args.max_frames and frames >= args.max_frames:
                break
    finally:
        if writer is not None:
            writer.release()
        bar.close()
        if created and frames == 0 and not any(out.iterdir()):
            out.rmdir()
    for path, why in source.skipped:
        print(f"skipped {path}: {why}")
    if frames == 0:
        raise SCCANError(f"no frame could be read from {args.input}")
    elapsed = time.perf_counter() - start
    print(f"{frames} frame(s) in {elapsed:.2f} s ({frames / elapsed:.1f} FPS, backend {seg.backend.name}); "
          f"classes {seg.classes}; written to {out}"
          + (f"; {len(source.skipped)} unreadable file(s) skipped" if source.skipped else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images, a folder, a video or a camera with a bundle",
                       description=__doc__.split("\n\n", 1)[1].strip() if __doc__ else None)
    p.add_argument("--bundle", required=True, help="bundle directory from `sccan export`")
    p.add_argument("--class", dest="class_name", help="name of the class the --support examples show")
    p.add_argument("--support", action="append", metavar="IMAGE:MASK",
                   help="an example image and its mask (any non-zero pixel is the object); repeat for more shots")
    p.add_argument("--load-support", metavar="FILE",
                   help="support file from --save-support (instead of, or besides, --support)")
    p.add_argument("--save-support", metavar="FILE", help="write the registered classes' support features here (.npz)")
    p.add_argument("--input", required=True, help="image, folder, video, csi://0, v4l2:///dev/video0, rtsp://...")
    p.add_argument("--output", required=True,
                   help="directory for NAME_overlay.png, NAME_labels.png (0 = background, i = class i), "
                        "NAME_labels_color.png, or segmented.mp4 for streams")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="foreground probability above which a pixel belongs to a class (0..1, default 0.5)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: TensorRT engines when usable here, else ONNX Runtime")
    p.add_argument("--threads", type=int, help="ONNX Runtime CPU threads (default: its own choice)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="graph precision (default: the backend's: FP16 on TensorRT, FP32 on a CPU); int8: the gated "
                        "graphs of `sccan quantize` (support files made in another precision are refused)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="TensorRT: replay the per-frame work as CUDA graphs (needs cuda-python)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (streams)")
    p.set_defaults(func=run)
