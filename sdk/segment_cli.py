"""``sccan segment``: register supports, segment an image, folder, video or camera, write overlays.

Per image it writes ``NAME_overlay.png`` (the frame with the masks drawn), ``NAME_labels.png``
(the label map as 8-bit values: 0 = background, i = the i-th class; it looks black in a viewer)
and ``NAME_labels_color.png`` (the same map in the overlay's class colours). Streams give
``segmented.mp4``. Nothing is created when the arguments or the supports are wrong.

Several classes: repeat ``--class NAME --support IMAGE:MASK [--support ...]``, each ``--support``
belonging to the ``--class`` before it, e.g. ``--class mug --support m.jpg:m.png --class key
--support k1.jpg:k1.png --support k2.jpg:k2.png``; or register them once and ``--load-support``.
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


class _ClassAction(argparse.Action):
    """``--class NAME`` starts a class; the ``--support`` options after it are its shots."""

    def __call__(self, parser, namespace, values, option_string=None):
        classes = list(getattr(namespace, "classes", None) or [])
        classes.append([values, []])
        namespace.classes = classes


class _SupportAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        classes = list(getattr(namespace, "classes", None) or [])
        if not classes:  # supports before any --class belong to the first one
            namespace.pending = [*(getattr(namespace, "pending", None) or []), values]
            return
        classes[-1][1].append(values)
        namespace.classes = classes


def _check_support_args(args: argparse.Namespace) -> None:
    classes = args.classes or []
    if args.pending:
        if not classes:
            raise BadArgumentError("--support needs --class NAME: the name of the object the examples show")
        classes[0][1][:0] = args.pending
    for name, pairs in classes:
        if not pairs:
            raise BadArgumentError(f"--class {name} needs at least one --support IMAGE:MASK example")
    names = [name for name, _ in classes]
    if len(set(names)) != len(names):
        raise BadArgumentError(f"--class names must differ, got {names}")
    if not classes and not args.load_support:
        raise BadArgumentError("nothing to segment: give --class NAME --support IMAGE:MASK, or --load-support FILE")


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise BadArgumentError(f"{what} takes numbers separated by commas, got {text!r}") from None


def parse_support(spec: str) -> tuple[str, dict]:
    """``IMAGE:MASK``, ``IMAGE:box=x0,y0,x1,y1`` or ``IMAGE:points=x,y;x,y`` (optionally
    ``;neg=x,y;...`` after the points, or after a box with ``:``) -> (image path, prompt: ``mask``
    path, or ``box`` / ``points`` / ``negative_points``)."""
    if ":" not in spec:
        raise BadArgumentError(f"--support takes IMAGE:MASK, IMAGE:box=x0,y0,x1,y1 or IMAGE:points=x,y;..., "
                               f"got {spec!r}")
    image, rest = spec.split(":", 1) if ":box=" in spec or ":points=" in spec else spec.rsplit(":", 1)
    if not (rest.startswith("box=") or rest.startswith("points=")):
        return image, {"mask": rest}
    prompt: dict = {}
    for part in rest.split(":"):
        key, _, value = part.partition("=")
        if key == "box":
            prompt["box"] = tuple(_numbers(value, "box="))
        elif key == "points":
            positive, negative = [], []
            for item in value.split(";"):
                target = negative if item.startswith("neg=") else positive
                target.append(tuple(_numbers(item.removeprefix("neg="), "points=")))
            prompt["points"], prompt["negative_points"] = positive or None, negative or None
        else:
            raise BadArgumentError(f"--support {spec!r}: unknown prompt {key!r} (box= or points=)")
    return image, prompt


def _supports(args: argparse.Namespace, seg=None) -> list[tuple[str, list, dict]]:
    """Per class: its images and either its masks (``{"masks": [...]}``) or its prompts."""
    out = []
    for name, specs in args.classes or []:
        images, masks, prompts = [], [], []
        for spec in specs:
            image_path, prompt = parse_support(spec)
            images.append(read_image(image_path))
            if "mask" in prompt:
                masks.append(read_mask(prompt["mask"]))
            else:
                prompts.append(prompt)
        if masks and prompts:
            raise BadArgumentError(f"--class {name}: give every --support a mask, or every one a box / points")
        if masks:
            out.append((name, images, {"masks": masks}))
        else:
            out.append((name, images, {"boxes": [p.get("box") for p in prompts],
                                       "points": [p.get("points") for p in prompts],
                                       "negative_points": [p.get("negative_points") for p in prompts]}))
    return out


def run(args: argparse.Namespace) -> int:
    threshold = check_threshold(args.threshold)
    presence = None if args.presence_threshold is None else check_threshold(args.presence_threshold,
                                                                           "--presence-threshold")
    if args.cuda_graph and args.backend != "tensorrt":
        raise BadArgumentError("--cuda-graph needs --backend tensorrt")
    _check_support_args(args)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise BadArgumentError(f"--output {out} is a file; give a directory")
    if args.save_support and Path(args.save_support).is_dir():
        raise BadArgumentError(f"--save-support {args.save_support} is a directory; give a file path such as "
                               "classes.npz")
    supports = _supports(args)
    seg = Segmenter(args.bundle, backend=args.backend, threads=args.threads, precision=args.precision,
                    cuda_graph=args.cuda_graph, presence_threshold=presence)
    if args.load_support:
        seg.load_support(args.load_support)
    for name, images, given in supports:
        seg.add_class(name, images, **given)
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


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--threads`` and ``--precision``: how a command that segments opens its
    Segmenter (``sccan segment``, ``sccan app``)."""
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: TensorRT engines when usable here, else ONNX Runtime")
    p.add_argument("--threads", type=int, help="ONNX Runtime CPU threads (default: its own choice)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="graph precision (default: the backend's: FP16 on TensorRT, FP32 on a CPU); int8: the gated "
                        "graphs of `sccan quantize` (support files made in another precision are refused)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images, a folder, a video or a camera with a bundle",
                       description=__doc__.split("\n\n", 1)[1].strip() if __doc__ else None)
    p.add_argument("--bundle", required=True, help="bundle directory from `sccan export`")
    p.add_argument("--class", dest="classes", action=_ClassAction, metavar="NAME", default=[],
                   help="name of the class the --support examples after it show; repeat (each with its --support "
                        "options) for several classes")
    p.add_argument("--support", action=_SupportAction, metavar="IMAGE:MASK", dest="pending", default=[],
                   help="an example image and its mask (any non-zero pixel is the object), for the --class before "
                        "it; or IMAGE:box=x0,y0,x1,y1 (pixels) or IMAGE:points=x,y;x,y;neg=x,y (clicks on, and "
                        "off, the object) instead of a mask; repeat for more shots")
    p.add_argument("--load-support", metavar="FILE",
                   help="support file from --save-support (instead of, or besides, --support)")
    p.add_argument("--save-support", metavar="FILE", help="write the registered classes' support features here (.npz)")
    p.add_argument("--input", required=True, help="image, folder, video, csi://0, v4l2:///dev/video0, rtsp://...")
    p.add_argument("--output", required=True,
                   help="directory for NAME_overlay.png, NAME_labels.png (0 = background, i = class i), "
                        "NAME_labels_color.png, or segmented.mp4 for streams")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="foreground probability above which a pixel belongs to a class (0..1, default 0.5)")
    p.add_argument("--presence-threshold", type=float, default=None,
                   help="a class whose presence score is below it is judged absent from the frame: no pixels "
                        "(0..1; default: the bundle's calibrated threshold, or 0 where it has none)")
    add_runtime_options(p)
    p.add_argument("--cuda-graph", action="store_true",
                   help="TensorRT: replay the per-frame work as CUDA graphs (needs cuda-python)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (streams)")
    p.set_defaults(func=run)
