"""``sccan quantize``: the command-line shell over :mod:`sccan.export.quantize`."""

from __future__ import annotations

import argparse

from .limits import J_DROP, MASK_AGREEMENT, MIOU_DROP


def run(args: argparse.Namespace) -> int:
    from .quantize import quantize_bundle

    result = quantize_bundle(args.bundle, args.calibration, precision=args.precision, images=args.images,
                             gate_data=args.gate, gate_episodes=args.gate_episodes, video_root=args.video_root,
                             skip_gate=args.skip_gate, sweep_samples=args.sweep_samples, seed=args.seed,
                             progress=not args.quiet)
    print(result.summary())
    files = sorted(result.bundle.glob("*.int8*.onnx"))
    print(f"wrote {', '.join(f.name for f in files)} in {result.bundle}; precision plan in manifest.json "
          "(precision_plan.int8)")
    if result.gate is None:
        print("warning: the INT8 graphs are UNGATED (--skip-gate): for timing only; the Segmenter warns when it "
              "loads them")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="INT8 graphs for a bundle: calibrated on real data, sensitivity sweep, "
                                        "accuracy gate",
                       description="Quantize a bundle's backbone and query decoder to INT8 (explicit Q/DQ, symmetric, "
                                   "per-channel weights: the form TensorRT builds INT8 engines from; ONNX Runtime runs "
                                   "the same graph). Calibration episodes register real supports, a per-node "
                                   "sensitivity sweep keeps the most sensitive nodes in FP32, and a gate on photos not "
                                   f"used for calibration requires masks agreeing with FP32 on >= {100 * MASK_AGREEMENT:.0f}% "
                                   f"of pixels, an mIoU drop <= {MIOU_DROP} and (with --video-root) a DAVIS J drop "
                                   f"<= {J_DROP}. A failed gate writes nothing.")
    p.add_argument("bundle", help="bundle directory from `sccan export`")
    p.add_argument("--calibration", required=True,
                   help="a DAVIS-layout folder (JPEGImages/, Annotations/) or a data config (YAML path or shipped "
                        "name) naming any dataset the project reads (yolo, labels, folder, coco, pascal); its test "
                        "split is used")
    p.add_argument("--precision", default="int8", choices=("int8", "bf16"),
                   help="int8 (default); bf16 is refused with the reason where ONNX Runtime's CPU provider has no "
                        "BF16 kernels")
    p.add_argument("--images", type=int, default=32, help="calibration episodes (default 32)")
    p.add_argument("--gate", help="data for the gate's held-out photos (default: other photos of --calibration; "
                                  "with a DAVIS folder, the other half of its sequences)")
    p.add_argument("--gate-episodes", type=int, default=40, help="held-out episodes in the gate (default 40)")
    p.add_argument("--video-root", help="also gate on J over these DAVIS-layout videos (drop <= 0.01)")
    p.add_argument("--sweep-samples", type=int, default=4, help="calibration samples the sensitivity sweep "
                                                                "measures on (default 4)")
    p.add_argument("--seed", type=int, default=0, help="episode seed (default 0)")
    p.add_argument("--skip-gate", action="store_true",
                   help="write the graphs without the gate, marked ungated in the manifest (for timing only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
