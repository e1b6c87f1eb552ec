"""7-bit weights for CPUs without VNNI: the measurements of BENCHMARKS.md's session 15.

    python benchmarks/weights_7bit.py make BUNDLE OUT
    python benchmarks/weights_7bit.py check GRAPH.onnx
    python benchmarks/weights_7bit.py bench -- SCCAN_BENCH_ARGS...

Without VNNI, ONNX Runtime's UINT8 x INT8 kernels add pairs of byte products in saturating 16-bit
arithmetic, so the SDK runs every INT8 product as UINT8 x UINT8 there (``sccan.sdk.int8_kernels``).
With weights in [-63, 63] the pairs cannot saturate (255 x 63 x 2 = 32130 < 32767):

- ``make`` copies an INT8 bundle with its backbone's ONNX Runtime encoding requantized to 7 bits per
  channel (each weight tensor's scale x 127/63), re-hashed so that the SDK loads it: for
  ``benchmarks/int8_gate.py``, which tells whether the gate still holds;
- ``check`` runs a graph with UINT8 x UINT8 sessions and with UINT8 x INT8 ones and says whether
  the outputs are the same (run it under ``tools/avx2_kernels.py``: with 8-bit weights they differ
  there, with 7-bit ones they are equal);
- ``bench`` runs ``sccan bench`` with the SDK's INT8 sessions running UINT8 x INT8 wherever the
  second operand is a constant (no session entries), whatever the CPU: the speed 7-bit weights
  would give (a product's speed does not depend on its values; its results are wrong where the
  weights are 8-bit and the kernels saturate).

The bundle made by ``make`` is an experiment, not a product: its gate figures in the manifest are
those of the 8-bit graphs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

#: Largest magnitude of a 7-bit weight: |w| <= 63 keeps 255 x |w| x 2 within int16.
LIMIT = 63


def requantize_7bit(model: onnx.ModelProto) -> int:
    """Requantize, in place, every INT8 weight (an initializer read by a DequantizeLinear) to
    [-63, 63] with its scale x 127/63 (per channel where the scale is). Returns how many."""
    inits = {i.name: i for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        weights = numpy_helper.to_array(inits[node.input[0]])
        if weights.dtype != np.int8:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        shape = [1] * weights.ndim
        if scale.size > 1:
            shape[next((a.i for a in node.attribute if a.name == "axis"), 1)] = scale.size
        values = weights.astype(np.float32) * scale.reshape(shape)
        scale7 = (scale * np.float32(127 / LIMIT)).astype(np.float32)
        weights7 = np.clip(np.round(values / scale7.reshape(shape)), -LIMIT, LIMIT).astype(np.int8)
        inits[node.input[0]].CopyFrom(numpy_helper.from_array(weights7, node.input[0]))
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(scale7.reshape(scale.shape), node.input[1]))
        count += 1
    return count


def make(bundle: Path, out: Path) -> None:
    from sccan.sdk.bundle import MANIFEST, sha256_file, write_manifest

    if out.exists():
        raise SystemExit(f"{out} exists: choose a new folder")
    shutil.copytree(bundle, out)
    name = "backbone.int8.onnxruntime.onnx"
    model = onnx.load(str(out / name))
    count = requantize_7bit(model)
    onnx.save(model, str(out / name))
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][name] = sha256_file(out / name)
    write_manifest(out, manifest)
    print(f"{count} weight tensors of {name} requantized to 7 bits in {out}")


def check(graph: Path) -> bool:
    import onnxruntime as ort

    outputs = []
    for entries in ({"session.x64quantprecision": "1"}, {}):  # UINT8 x UINT8, then UINT8 x INT8
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
                 for i in session.get_inputs()}
        outputs.append(session.run(None, feeds))
    same = all(np.array_equal(a, b) for a, b in zip(*outputs))
    worst = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(*outputs))
    print(f"{graph.name}: UINT8 x UINT8 and UINT8 x INT8 outputs {'equal' if same else 'differ'} "
          f"(largest difference {worst:.2e} of the output's range)")
    return same


def bench(args: list[str]) -> int:
    import sccan.sdk.patch_align_op as sessions
    from sccan.sdk.cli import main

    sessions.int8_session_entries = lambda: {}
    return main(["bench", *args])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return bench(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make")
    p.add_argument("bundle", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("check")
    p.add_argument("graph", type=Path)
    sub.add_parser("bench", help="sccan bench with UINT8 x INT8 products: bench -- ARGS")
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args.bundle, args.out)
        return 0
    return 0 if check(args.graph) else 1


if __name__ == "__main__":
    sys.exit(main())
