"""The INT8 gate of ``sccan quantize`` again, on a bundle already quantized, on this host's kernels.

    python benchmarks/int8_gate.py BUNDLE --calibration DATA [--images 32] [--gate-episodes 40]
        [--seed 0] [--video-root DAVIS]

The held-out episodes are drawn as ``sccan quantize`` draws them (seed + 1, avoiding every photo of
the first --images calibration episodes); pass the arguments the bundle was quantized with. Where
every calibration episode was usable, the episodes are the same, so on the host that quantized
the bundle the figures repeat the manifest's. Elsewhere they show what the INT8 graphs give on
that host's kernels: ``python tools/avx2_kernels.py -- python benchmarks/int8_gate.py ...`` is
how BENCHMARKS.md's AVX2 rows were measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sccan.export.quantize import DataSource, calibration_and_gate_parts, run_gate
from sccan.sdk import Segmenter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--calibration", required=True, help="what the bundle was quantized with")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--gate-episodes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video-root", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    source = DataSource(args.calibration)
    cal_part, gate_part = calibration_and_gate_parts(source, same=True)
    used = {d for s in source.samples(args.images, args.seed, cal_part) for d in s.digests}
    held_out = list(source.samples(args.gate_episodes, args.seed + 1, gate_part, avoid=used))
    fp32 = Segmenter(args.bundle, backend="onnxruntime", precision="fp32")
    int8 = Segmenter(args.bundle, backend="onnxruntime", precision="int8")
    gate = run_gate(fp32, int8, held_out, args.video_root, progress=sys.stderr.isatty())
    print(gate.text())
    print(json.dumps(gate.to_dict()))
    print(f"{time.perf_counter() - start:.0f} s")
    return 0 if gate.ok else 1


if __name__ == "__main__":
    sys.exit(main())
