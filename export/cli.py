"""``sccan export``: the command-line shell over :mod:`sccan.export.exporter`."""

from __future__ import annotations

import argparse



def run(args: argparse.Namespace) -> int:
    from .exporter import ExportError, check_bundle, export_bundle

    if args.check:
        print(check_bundle(args.check), end="")
        return 0
    if not args.checkpoint or not args.output:
        raise ExportError("give CHECKPOINT and -o BUNDLE (or --check BUNDLE)")
    result = export_bundle(args.checkpoint, args.output, size=args.size, max_shots=args.max_shots,
                           max_classes=args.max_classes, check_episodes=args.check_episodes,
                           fp16=not args.no_fp16, force=args.force, patch_align=args.patch_align)
    print(result.report_text, end="")
    print(f"bundle written to {result.bundle}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="checkpoint -> ONNX model bundle (split graphs, FP16 plan, checks)",
                       description="Export a checkpoint to a model bundle: backbone, support encoder and "
                                   "query decoder graphs (FP32 and FP16), checked against TensorRT's ONNX "
                                   "parser and against the PyTorch model.")
    p.add_argument("checkpoint", nargs="?", help="released or project checkpoint (.pth/.pt)")
    p.add_argument("-o", "--output", help="bundle directory to write")
    p.add_argument("--size", type=int, default=473, help="input size (8k + 1; default 473)")
    p.add_argument("--max-shots", type=int, default=5, help="most shots per class (default 5)")
    p.add_argument("--max-classes", type=int, default=8, help="most classes per decode (default 8)")
    p.add_argument("--check-episodes", type=int, default=2, help="parity-gate episodes (default 2)")
    p.add_argument("--no-fp16", action="store_true", help="skip the FP16 graphs")
    p.add_argument("--patch-align", default="standard-ops", choices=("standard-ops", "plugin", "both"),
                   help="patch alignment as standard ONNX ops (default), as one SccanPatchAlign node per block "
                        "(TensorRT: libsccan_trt_plugin.so; ONNX Runtime: onnxruntime-extensions), or both: "
                        "standard graphs plus a plugin decoder that `sccan build` falls back to")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--check", metavar="BUNDLE", help="verify an existing bundle instead of exporting")
    p.set_defaults(func=run)
