"""``sccan train`` and ``sccan eval``: thin shells over :mod:`sccan.train.trainer` and :mod:`.evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import train

    overrides: dict = {}
    if args.output:
        overrides["output"] = args.output
    if args.max_steps is not None:
        overrides["train"] = {"max_steps": args.max_steps}
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume, progress=not args.quiet)
    print(f"trained {result.steps} steps; best validation mIoU {result.best_miou:.4f}; "
          f"checkpoints in {result.output}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from sccan.sdk.bundle import write_json_atomic

    from .checkpoint import load_model
    from .config import load_config
    from .data.datasets import build_dataset
    from .evaluate import CrossSupport, bundle_predictor, evaluate, model_predictor, prior_predictor, save_grid

    if (args.checkpoint is None) == (args.bundle is None):
        print("sccan eval: give a checkpoint or --bundle DIR (one of them)", file=sys.stderr)
        return 2
    if args.bundle and (args.prior_only or args.size):
        print("sccan eval: --prior-only and --size apply to checkpoints (a bundle has its own input size)",
              file=sys.stderr)
        return 2
    if args.video_root:
        return run_video_eval(args)
    if not args.config:
        print("sccan eval: give --config (the benchmark's data and eval sections) or --video-root", file=sys.stderr)
        return 2
    config = load_config(args.config)
    data = config["data"]
    if args.shots:
        data["shots"] = args.shots
    episodes = args.episodes or config["eval"]["episodes"]
    dataset = build_dataset(data, "test", seed=args.seed if args.seed is not None else config["eval"]["seed"],
                            episodes=episodes)
    if args.cross_support:
        dataset = CrossSupport(dataset)
    if args.bundle:
        predict = bundle_predictor(args.bundle, backend=args.backend, precision=args.precision)
        segmenter = predict.segmenter
        size = segmenter.size
        if data["shots"] > segmenter.max_shots:
            print(f"sccan eval: {data['shots']} shots exceed the bundle's maximum of {segmenter.max_shots}",
                  file=sys.stderr)
            return 2
        source = {"bundle": str(args.bundle), "backend": segmenter.backend.name,
                  "precision": segmenter.backend.precision}
        print(f"evaluating bundle {args.bundle} through the SDK ({source['backend']}, {source['precision']})")
    else:
        model = load_model(args.checkpoint)
        size = args.size or data["size"]
        predict = prior_predictor(model, size) if args.prior_only else model_predictor(model, size)
        source = {"checkpoint": str(args.checkpoint), "prior_only": bool(args.prior_only)}
    source["cross_support"] = bool(args.cross_support)
    result = evaluate(predict, (dataset[i] for i in range(len(dataset))), total=len(dataset),
                      progress=not args.quiet)
    print(result.table(getattr(dataset, "class_names", None)))
    skipped = getattr(predict, "empty_supports", 0)
    if skipped:
        print(f"warning: {skipped} episode(s) had a support object that vanished at {size} x {size}; "
              "they count as empty predictions")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "eval.json", {**source, "size": size, "shots": data["shots"],
                                              "empty_supports": skipped, **result.to_dict()})
        (out / "eval.txt").write_text(result.table(getattr(dataset, "class_names", None)) + "\n")
        print(f"wrote {out / 'eval.json'}, {out / 'eval.txt'} and {save_grid(result.samples, out / 'episodes.png')}")
    return 0


def run_video_eval(args: argparse.Namespace) -> int:
    """``sccan eval --video-root``: one-shot video-object J and F (see :mod:`sccan.train.video`)."""
    from sccan.sdk.bundle import write_json_atomic

    from .checkpoint import load_model
    from .config import load_config
    from .evaluate import bundle_predictor, model_predictor, prior_predictor
    from .video import evaluate_videos, list_sequences

    shots = args.shots or 1
    sequences = list_sequences(args.video_root, args.sequences.split(",") if args.sequences else None)
    if args.memory and not args.bundle:
        print("sccan eval: --memory (track mode) runs through the SDK: give --bundle", file=sys.stderr)
        return 2
    if args.memory:
        from sccan.sdk import Segmenter

        from .evaluate import tracking_predictor

        segmenter = Segmenter(args.bundle, backend=args.backend, precision=args.precision)
        if shots + args.memory > segmenter.max_shots:
            print(f"sccan eval: {shots} shot(s) and --memory {args.memory} exceed the bundle's {segmenter.max_shots} "
                  f"shot slots (export with --max-shots {shots + args.memory})", file=sys.stderr)
            return 2
        predict = tracking_predictor(Segmenter(segmenter.bundle, backend=segmenter.backend, memory=args.memory))
        source = {"bundle": str(args.bundle), "backend": segmenter.backend.name,
                  "precision": segmenter.backend.precision, "size": segmenter.size, "memory": args.memory}
    elif args.bundle:
        predict = bundle_predictor(args.bundle, backend=args.backend, precision=args.precision)
        if shots > predict.segmenter.max_shots:
            print(f"sccan eval: {shots} shots exceed the bundle's maximum of {predict.segmenter.max_shots}",
                  file=sys.stderr)
            return 2
        source = {"bundle": str(args.bundle), "backend": predict.segmenter.backend.name,
                  "precision": predict.segmenter.backend.precision, "size": predict.segmenter.size}
    else:
        model = load_model(args.checkpoint)
        size = args.size or (load_config(args.config)["data"]["size"] if args.config else 473)
        predict = prior_predictor(model, size) if args.prior_only else model_predictor(model, size)
        source = {"checkpoint": str(args.checkpoint), "prior_only": bool(args.prior_only), "size": size}
    out = Path(args.output) if args.output else None
    result = evaluate_videos(predict, sequences, shots, strips=out / "strips" if out else None,
                             progress=not args.quiet, cross_support=args.cross_support)
    source["cross_support"] = bool(args.cross_support)
    if out:
        write_json_atomic(out / "video_eval.json", {**source, "video_root": str(args.video_root),
                                                    **result.to_dict()})
        (out / "video_eval.txt").write_text(result.table() + "\n")
        print(f"wrote {out / 'video_eval.json'}, {out / 'video_eval.txt'} and {out / 'strips'}/<sequence>.png")
    print(result.table())  # its last line: J mean 0.xxx, F mean 0.xxx over N sequences
    return 0


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="episodic meta-training (torchrun for several processes)")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--resume", help="checkpoint to continue from (last.pt)")
    p.add_argument("--output", help="run directory (overrides the config's output)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


def register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="mIoU / FB-IoU of a checkpoint or an exported bundle by the benchmark protocol")
    p.add_argument("checkpoint", nargs="?", help="released or project checkpoint")
    p.add_argument("--bundle", help="evaluate an exported bundle through the SDK instead of a checkpoint")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                   help="SDK backend for --bundle")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="bundle precision (default: the backend's; int8: the graphs of `sccan quantize`)")
    p.add_argument("--config", help="YAML config whose data/eval sections name the benchmark (not needed with "
                                     "--video-root)")
    p.add_argument("--video-root", help="one-shot video evaluation on DAVIS-layout folders: the first --shots "
                                        "annotated frames of each sequence are the support, the rest queries; "
                                        "prints J and F")
    p.add_argument("--sequences", help="comma-separated sequence names under --video-root (default: all)")
    p.add_argument("--episodes", type=int, help="episodes (default: the config's, 1000 PASCAL / 4000 COCO)")
    p.add_argument("--seed", type=int, help="episode seed (default: the config's)")
    p.add_argument("--shots", type=int, help="shots per episode (default: the config's; 1 with --video-root)")
    p.add_argument("--size", type=int, help="network input size (default: the config's; 473 with --video-root)")
    p.add_argument("--prior-only", action="store_true", help="score the prior mask alone (a baseline)")
    p.add_argument("--cross-support", action="store_true",
                   help="a control: each query segmented with another object's support (--video-root: the next "
                        "sequence's; episodes: the next episode of another class); what stays is what the model "
                        "finds without its support")
    p.add_argument("--memory", type=int, default=0, metavar="M",
                   help="--video-root with --bundle: track mode, up to M confident frames join each sequence's "
                        "support (the bundle needs shots + M shot slots)")
    p.add_argument("--output", help="directory for eval.json, eval.txt and episodes.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)
