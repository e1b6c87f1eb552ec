"""``sccan build``: the command-line shell over :mod:`sccan.export.engines`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .limits import DEFAULT_CONTEXTS, PATCH_ALIGN_CHOICES


def _options(args: argparse.Namespace):
    from .engines import BuildOptions

    precisions = ("fp16", "fp32") if args.precision == "both" else (args.precision,)
    return BuildOptions(precisions=precisions, max_classes=args.max_classes, opt_classes=args.opt_classes,
                        contexts=args.contexts, workspace_mib=args.workspace,
                        timing_cache=Path(args.timing_cache) if args.timing_cache else None, force=args.force,
                        hardware_compatible=args.hardware_compatible,
                        plugin_library=Path(args.plugin_library) if args.plugin_library else None,
                        device=args.device, patch_align=args.patch_align)


def run(args: argparse.Namespace) -> int:
    from .engines import build_engines, check_build

    options = _options(args)
    if args.check:
        print(check_build(args.bundle, options), end="")
        return 0
    result = build_engines(args.bundle, options, progress=not args.quiet)
    print(result.summary(), end="")
    if result.built:
        print(f"engines recorded in {Path(args.bundle) / 'manifest.json'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="TensorRT engines for a bundle, on this GPU, checked against the graphs",
                       description="Build strongly typed TensorRT engines from a bundle's graphs on this machine's "
                                   "GPU, check them against the FP32 graphs in ONNX Runtime, and record them in the "
                                   "bundle's manifest. Needs TensorRT >= 10.3 and an NVIDIA GPU.")
    p.add_argument("bundle", help="model bundle directory (from `sccan export`)")
    p.add_argument("--precision", default="fp16", choices=("fp16", "fp32", "int8", "both"),
                   help="engines from the FP16 graphs (default), the FP32 graphs (TF32 off), both, or the INT8 graphs "
                        "of `sccan quantize` (strongly typed: the graph's Q/DQ nodes set the precision; gated against "
                        "the INT8 graphs in ONNX Runtime)")
    p.add_argument("--max-classes", type=int, default=None,
                   help="most classes per decode in the engines (default: the bundle's)")
    p.add_argument("--opt-classes", type=int, default=1, help="class count TensorRT tunes for (default 1)")
    p.add_argument("--contexts", type=int, default=DEFAULT_CONTEXTS,
                   help="optimisation profiles: Segmenters and clones in use at once (default 2)")
    p.add_argument("--workspace", type=int, default=None, metavar="MIB",
                   help="builder workspace limit in MiB (default: TensorRT's, the device memory)")
    p.add_argument("--timing-cache", metavar="DIR", default=None,
                   help="directory of timing caches, keyed by TensorRT version, GPU and flags "
                        "(default ~/.cache/sccan/tensorrt)")
    p.add_argument("--hardware-compatible", action="store_true",
                   help="engines that run on any Ampere or newer GPU (slower; not for Jetson)")
    p.add_argument("--plugin-library", metavar="SO", default=None,
                   help="libsccan_trt_plugin.so for bundles exported with --patch-align plugin")
    p.add_argument("--patch-align", default="auto", choices=PATCH_ALIGN_CHOICES,
                   help="auto (default): the standard-op decoder, falling back to the plugin variant (bundles "
                        "exported with --patch-align both) when TensorRT's parser rejects it or it fails the gate; "
                        "or force standard-ops or plugin")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--force", action="store_true", help="rebuild engines that are already built for this system")
    p.add_argument("--check", action="store_true", help="preflight only: what would be built, what is usable here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
