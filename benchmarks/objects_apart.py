"""Objects told apart: does the real-photo model follow its support, and does it say when an object is absent?

    python benchmarks/objects_apart.py CHECKPOINT [--config real_lite0] [--episodes 300] [--output DIR]

Run from the repository root with ``../shared/realdata`` beside it. Prints (and with ``--output``
writes as JSON):

* DAVIS-2016 val part (12 sequences, 1 shot, the first annotated frame the support): J mean, and the
  control J with another sequence's support (``sccan eval --video-root ... [--cross-support]``);
* held-out classes (the config's test classes, COCO-128 + clothing), 1-shot mIoU and the prior
  alone's (``sccan eval CKPT --config ... [--prior-only]``);
* presence over the same held-out episodes, each run twice: with its query (object present) and
  with a photo of the same source that holds no pixel of the class (absent): AUROC of the SDK's
  presence score (:mod:`sccan.sdk.presence`) and of other statistics, and, at the SDK's default
  threshold, the share of present objects kept and of absent ones emptied;
* the three PerSAM objects (duck toy, cat, sneaker) registered together through the SDK (an
  exported bundle, ONNX Runtime), 2 shots each (``_00``, ``_01``), each ``_02`` photo segmented:
  the IoU of the label map's pixels of that object against its mask.

The model runs in PyTorch for the first three (the SDK's own presence function reads its logits);
the fourth exports the checkpoint (about a minute) and runs the SDK.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sccan.sdk.presence import PRESENCE_THRESHOLD, PRESENCE_TOP_FRACTION, presence_scores
from sccan.sdk.preprocess import resize_to_frame, foreground_logit
from sccan.train.checkpoint import load_model
from sccan.train.config import load_config
from sccan.train.data.datasets import build_dataset
from sccan.train.data.episodes import Episode
from sccan.train.data.segmentation import read_image, read_label
from sccan.train.evaluate import IoUMeter, episode_tensors, model_predictor, prior_predictor
from sccan.train.video import evaluate_videos, list_sequences

REALDATA = Path("../shared/realdata")


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a present object > score of an absent one), ties half."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def logits_of(model, episode: Episode, size: int) -> tuple[np.ndarray, object]:
    q, s, m, place = episode_tensors(model, episode, size)
    with torch.no_grad():
        return model(q, s, m).float().numpy(), place


def statistics(logits: np.ndarray, place) -> dict[str, float]:
    """The SDK's presence score and the alternatives it was chosen among."""
    h, w = place.height, place.width
    out = {f"top{f}": float(presence_scores(logits, h, w, f)[0]) for f in (0.001, 0.01, 0.05)}
    fg = foreground_logit(logits)[0, :h, :w]
    out["area"] = float((fg > 0).mean())
    out["sdk"] = float(presence_scores(logits, h, w)[0])
    return out


def absent_photo(dataset, episode: Episode, rng: np.random.Generator) -> np.ndarray | None:
    """A photo of the episode's source with no pixel of its class (the test split's photos)."""
    source = dataset.sources[episode.class_id // 1000]
    cls = episode.class_id % 1000
    order = rng.permutation(len(source.index.items))
    for i in order[:200]:
        item = source.index.items[int(i)]
        image = read_image(item.image)
        raw = read_label(item.label, image.shape[:2])
        if not (raw == cls).any():
            if source.max_side and max(image.shape[:2]) > source.max_side:
                from sccan.train.data.segmentation import shrink

                image, _ = shrink(image, raw, source.max_side)
            return image
    return None


def held_out(model, config: dict, episodes: int, size: int) -> dict:
    data = config["data"]
    dataset = build_dataset(data, "test", seed=config["eval"]["seed"], episodes=episodes)
    meter, prior_meter = IoUMeter(), IoUMeter()
    prior = prior_predictor(model, size)
    present, absent = [], []
    rng = np.random.default_rng(2024)
    started = time.perf_counter()
    for i in range(len(dataset)):
        episode = dataset[i]
        logits, place = logits_of(model, episode, size)
        pred = (resize_to_frame(foreground_logit(logits), place)[0] > 0).astype(np.int64)
        meter.add(pred, episode.query_label, episode.class_id)
        prior_meter.add(prior(episode), episode.query_label, episode.class_id)
        present.append(statistics(logits, place))
        other = absent_photo(dataset, episode, rng)
        if other is not None:
            logits, place = logits_of(model, Episode(other, np.zeros(other.shape[:2], np.uint8), episode.support,
                                                     episode.support_labels, episode.class_id), size)
            absent.append(statistics(logits, place))
        if (i + 1) % 50 == 0:
            print(f"  held-out episode {i + 1}/{len(dataset)} ({time.perf_counter() - started:.0f} s)", flush=True)
    keys = present[0].keys()
    stats = {k: auroc([p[k] for p in present], [a[k] for a in absent]) for k in keys}
    sdk_present = np.array([p["sdk"] for p in present])
    sdk_absent = np.array([a["sdk"] for a in absent])
    return {"episodes": len(dataset), "miou": meter.miou, "fbiou": meter.fbiou, "prior_miou": prior_meter.miou,
            "presence": {"auroc": stats, "absent_episodes": len(absent), "threshold": PRESENCE_THRESHOLD,
                         "top_fraction": PRESENCE_TOP_FRACTION,
                         "kept_present": float((sdk_present >= PRESENCE_THRESHOLD).mean()),
                         "emptied_absent": float((sdk_absent < PRESENCE_THRESHOLD).mean()),
                         "present_scores": sdk_present.tolist(), "absent_scores": sdk_absent.tolist()}}


def davis(model, size: int) -> dict:
    sequences = list_sequences(REALDATA / "davis2016-val-part")
    predict = model_predictor(model, size)
    right = evaluate_videos(predict, sequences, 1, progress=False)
    cross = evaluate_videos(predict, sequences, 1, progress=False, cross_support=True)
    return {"j": right.to_dict()["j_mean"], "f": right.to_dict()["f_mean"],
            "cross_support_j": cross.to_dict()["j_mean"],
            "per_sequence_j": {r.name: r.j_mean for r in right.sequences}}


PERSAM = ("duck_toy", "cat", "colorful_sneaker")


def persam_together(checkpoint: Path, size: int) -> dict:
    from sccan.export.exporter import export_bundle
    from sccan.sdk import Segmenter
    from sccan.sdk.sources import read_mask

    root = REALDATA / "persam-examples" / "examples"
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(checkpoint, Path(tmp) / "bundle", size=size, max_shots=2, max_classes=len(PERSAM),
                               check_episodes=1, fp16=False, force=True, progress=False).bundle
        seg = Segmenter(bundle, backend="onnxruntime")
        for name in PERSAM:
            seg.add_class(name, [cv2.imread(str(root / f"{name}_{k:02d}.jpg")) for k in (0, 1)],
                          [read_mask(root / f"{name}_{k:02d}.png") > 0 for k in (0, 1)])
        out = {}
        for i, name in enumerate(PERSAM):
            result = seg.segment(cv2.imread(str(root / f"{name}_02.jpg")))
            truth = read_mask(root / f"{name}_02.png") > 0
            mine = result.label_map == i + 1
            union = (mine | truth).sum()
            # where the object's pixels went: its own label, another object's, or background
            labelled = {other: float((result.label_map[truth] == j + 1).mean()) for j, other in enumerate(PERSAM)}
            labelled["background"] = float((result.label_map[truth] == 0).mean())
            out[name] = {"label_map_iou": float((mine & truth).sum() / union) if union else 1.0,
                         "presence": {k: float(v) for k, v in getattr(result, "presence", {}).items()},
                         "pixels_labelled": labelled}
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--config", default="real_lite0", help="the held-out classes' config (data/eval sections)")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: davis,held_out,persam")
    parser.add_argument("--output", type=Path, help="write the figures as JSON there")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    size = config["data"]["size"]
    model = load_model(args.checkpoint)
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"checkpoint": str(args.checkpoint), "size": size}
    if "davis" not in skip:
        report["davis"] = davis(model, size)
        d = report["davis"]
        print(f"DAVIS val part, 1 shot: J {d['j']:.3f} (F {d['f']:.3f}); another video's support: J "
              f"{d['cross_support_j']:.3f}", flush=True)
    if "held_out" not in skip:
        report["held_out"] = held_out(model, config, args.episodes, size)
        h = report["held_out"]
        p = h["presence"]
        print(f"held-out classes, 1 shot, {h['episodes']} episodes: mIoU {h['miou']:.3f} (prior alone "
              f"{h['prior_miou']:.3f}, FB-IoU {h['fbiou']:.3f})")
        print("presence AUROC (" + ", ".join(f"{k} {v:.3f}" for k, v in p["auroc"].items()) +
              f"); at threshold {p['threshold']}: {p['kept_present']:.1%} of present kept, "
              f"{p['emptied_absent']:.1%} of absent emptied", flush=True)
    if "persam" not in skip:
        report["persam"] = persam_together(args.checkpoint, size)
        print("PerSAM objects registered together (2 shots), label-map IoU: " +
              ", ".join(f"{k} {v['label_map_iou']:.3f}" for k, v in report["persam"].items()))
        for k, v in report["persam"].items():
            print(f"  {k}'s pixels labelled: " + ", ".join(f"{o} {share:.0%}" for o, share in v["pixels_labelled"].items()))
    if args.output:
        from sccan.sdk.bundle import write_json_atomic

        args.output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.output / "objects_apart.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
