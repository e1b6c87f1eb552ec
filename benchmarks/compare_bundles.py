"""One bundle's frame against another's, in one process, frames alternating.

    python benchmarks/compare_bundles.py REFERENCE OTHER [--precision int8] [--rounds 10] [--other-per-round 3]
        [--frame 640x480] [--shots 1] [--threads 2]

Both Segmenters register the same synthetic class and segment the same frame. Each round times one
frame of REFERENCE, then --other-per-round frames of OTHER, so a change in the machine's speed
during the run moves both alike. Prints each bundle's median frame (the Segmenter's own "total"
timing) and OTHER / REFERENCE: issue 16's "Lite-0 INT8 frame at most 1/8 of the ResNet-50 INT8
frame" is ``compare_bundles.py r50_473 lite0_473 --precision int8``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

from tqdm import tqdm

from sccan.sdk import Segmenter, UngatedWarning
from sccan.sdk.bench import synthetic_scene


def compare(reference: str, other: str, precision: str | None, rounds: int, other_per_round: int,
            frame_size: tuple[int, int], shots: int, threads: int | None, progress: bool = True) -> dict[str, float]:
    """Median frame seconds of ``reference`` and ``other`` (keys of the result), timed alternately."""
    height, width = frame_size
    frame, _ = synthetic_scene(0, height, width)
    examples = [synthetic_scene(j + 1, height, width) for j in range(shots)]
    segmenters = {}
    for name in (reference, other):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UngatedWarning)  # timing only
            seg = Segmenter(name, backend="onnxruntime", precision=precision, threads=threads)
        seg.add_class("object", [e[0] for e in examples], [e[1] for e in examples])
        for _ in range(2):  # warm-up
            seg.segment(frame)
        segmenters[name] = seg
    times: dict[str, list[float]] = {reference: [], other: []}
    for _ in tqdm(range(rounds), desc="rounds", disable=not progress):
        for name, count in ((reference, 1), (other, other_per_round)):
            for _ in range(count):
                times[name].append(segmenters[name].segment(frame).timings["total"])
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reference")
    p.add_argument("other")
    p.add_argument("--precision", choices=["fp32", "int8"], default=None)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--other-per-round", type=int, default=3)
    p.add_argument("--frame", default="640x480")
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    try:
        width, height = (int(v) for v in args.frame.lower().split("x"))
    except ValueError:
        p.error(f"--frame must be WIDTHxHEIGHT, got {args.frame!r}")
    if args.rounds < 1 or args.other_per_round < 1 or args.shots < 1:
        p.error("--rounds, --other-per-round and --shots must be at least 1")
    medians = compare(args.reference, args.other, args.precision, args.rounds, args.other_per_round,
                      (height, width), args.shots, args.threads)
    ref, oth = medians[args.reference], medians[args.other]
    print(f"{args.reference}: {1000 * ref:.1f} ms, {args.other}: {1000 * oth:.1f} ms (medians, "
          f"{args.rounds} and {args.rounds * args.other_per_round} frames, {args.frame}, {args.threads} threads)")
    print(f"{args.other} / {args.reference} = {oth / ref:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
