"""``sccan train`` and ``sccan eval``: thin shells over :mod:`sccan.train.trainer` and :mod:`.evaluate`."""

from __future__ import annotations

import argparse
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
    from .evaluate import evaluate, model_predictor, prior_predictor, save_grid

    config = load_config(args.config)
    data = config["data"]
    if args.shots:
        data["shots"] = args.shots
    model = load_model(args.checkpoint)
    size = args.size or data["size"]
    episodes = args.episodes or config["eval"]["episodes"]
    dataset = build_dataset(data, "test", seed=args.seed if args.seed is not None else config["eval"]["seed"],
                            episodes=episodes)
    predict = prior_predictor(model, size) if args.prior_only else model_predictor(model, size)
    result = evaluate(predict, (dataset[i] for i in range(len(dataset))), total=len(dataset),
                      progress=not args.quiet)
    print(result.table(getattr(dataset, "class_names", None)))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "eval.json", {"checkpoint": str(args.checkpoint), "size": size,
                                              "shots": data["shots"], **result.to_dict()})
        (out / "eval.txt").write_text(result.table(getattr(dataset, "class_names", None)) + "\n")
        print(f"wrote {out / 'eval.json'}, {out / 'eval.txt'} and {save_grid(result.samples, out / 'episodes.png')}")
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
    p = sub.add_parser("eval", help="mIoU / FB-IoU of a checkpoint by the benchmark protocol")
    p.add_argument("checkpoint", help="released or project checkpoint")
    p.add_argument("--config", required=True, help="YAML config whose data/eval sections name the benchmark")
    p.add_argument("--episodes", type=int, help="episodes (default: the config's, 1000 PASCAL / 4000 COCO)")
    p.add_argument("--seed", type=int, help="episode seed (default: the config's)")
    p.add_argument("--shots", type=int, help="shots per episode (default: the config's)")
    p.add_argument("--size", type=int, help="network input size (default: the config's)")
    p.add_argument("--prior-only", action="store_true", help="score the prior mask alone (a baseline)")
    p.add_argument("--output", help="directory for eval.json, eval.txt and episodes.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)
