"""What registering one more class costs the frames after it: classes added one by one.

    python benchmarks/register_classes.py BUNDLE [--precision int8] [--shots 5,5,1,5] [--frames 3]
        [--frame 640x480] [--threads 2]

One class per entry of --shots (that many synthetic examples each) is registered in turn. After
each registration the script times ``add_class``, the first frame (every registered class, as
``segment(frame)`` asks by default), then the median of --frames more. The first frame builds the
class batch the decoder reads. On the split INT8 decoder (``sccan quantize``) that batch is the
classes' parts, made by ``add_class`` (each class's product session, ``sccan.sdk.prior_product``),
so ``first - next`` is only the machine's noise there; elsewhere the batch is a copy of the
classes' arrays, made by the first frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

from sccan.sdk import Segmenter, UngatedWarning
from sccan.sdk.bench import synthetic_scene


def measure(bundle: str, precision: str | None, shots: list[int], frames: int, frame_size: tuple[int, int],
            threads: int | None) -> list[dict[str, float]]:
    """Per registration: seconds of ``add``, the ``first`` frame after it, the median ``next`` frame,
    and the frame's ``decode`` stage (first and next)."""
    height, width = frame_size
    frame, _ = synthetic_scene(0, height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UngatedWarning)  # timing only
        seg = Segmenter(bundle, backend="onnxruntime", precision=precision, threads=threads)
    rows = []
    for c, count in enumerate(shots):
        examples = [synthetic_scene(100 * (c + 1) + j, height, width) for j in range(count)]
        start = time.perf_counter()
        seg.add_class(f"class{c}", [e[0] for e in examples], [e[1] for e in examples])
        added = time.perf_counter() - start
        first = seg.segment(frame).timings
        more = [seg.segment(frame).timings for _ in range(frames)]
        rows.append({"shots": count, "add": added, "first": first["total"], "first_decode": first["decode"],
                     "next": statistics.median(t["total"] for t in more),
                     "next_decode": statistics.median(t["decode"] for t in more)})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--precision", choices=["fp32", "int8"], default=None)
    p.add_argument("--shots", default="5,5,1,5", help="shots of each class, in the order registered")
    p.add_argument("--frames", type=int, default=3, help="frames timed after the first, per registration")
    p.add_argument("--frame", default="640x480")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    try:
        width, height = (int(v) for v in args.frame.lower().split("x"))
        shots = [int(v) for v in args.shots.split(",")]
    except ValueError:
        p.error(f"--frame must be WIDTHxHEIGHT and --shots counts such as 5,5,1; got {args.frame!r}, {args.shots!r}")
    if args.frames < 1 or not shots or min(shots) < 1:
        p.error("--frames and every --shots count must be at least 1")
    rows = measure(args.bundle, args.precision, shots, args.frames, (height, width), args.threads)
    print(f"{'classes':>7} {'shots':>5} {'add ms':>8} {'first ms':>9} {'next ms':>8} {'first-next':>10} "
          f"{'decode first':>12} {'decode next':>11}")
    for c, row in enumerate(rows, 1):
        print(f"{c:>7} {row['shots']:>5} {1000 * row['add']:>8.0f} {1000 * row['first']:>9.0f} "
              f"{1000 * row['next']:>8.0f} {1000 * (row['first'] - row['next']):>10.0f} "
              f"{1000 * row['first_decode']:>12.0f} {1000 * row['next_decode']:>11.0f}")
    print(f"{args.bundle}, precision {args.precision or 'default'}, {args.frame}, {args.threads} threads; next: median "
          f"of {args.frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
