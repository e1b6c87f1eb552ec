"""Evaluation by the benchmark protocol: per-class IoU accumulated over episodes, mIoU, FB-IoU.

Each episode goes through the one test-time pipeline (``sccan.sdk.preprocess``): query and
supports resized PFENet-style onto the input-size canvas, labels padded with 255, support masks
given to the network as ``label == 1``, logits taken back to the original label size by the
reference path, then argmax. A prediction function maps an :class:`Episode` to an H x W 0/1 map,
so a PyTorch model, the prior alone or an exported bundle are measured by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from sccan.sdk.preprocess import IGNORE_LABEL, foreground_logit, normalize, resize_image, resize_label, resize_to_frame
from sccan.train.data.episodes import Episode
from sccan.train.model import SCCAN
from sccan.train.model.ops import resize

Predictor = Callable[[Episode], np.ndarray]


@dataclass
class IoUMeter:
    """Intersection and union per class (foreground), and totals for FB-IoU; 255 is ignored."""

    intersection: dict[int, int] = field(default_factory=dict)
    union: dict[int, int] = field(default_factory=dict)
    fb_intersection: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    fb_union: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))

    def add(self, prediction: np.ndarray, label: np.ndarray, class_id: int) -> None:
        valid = label != IGNORE_LABEL
        pred, truth = (prediction == 1) & valid, (label == 1) & valid
        self.intersection[class_id] = self.intersection.get(class_id, 0) + int((pred & truth).sum())
        self.union[class_id] = self.union.get(class_id, 0) + int((pred | truth).sum())
        for k, (p, t) in enumerate(((~pred & valid, ~truth & valid), (pred, truth))):
            self.fb_intersection[k] += int((p & t).sum())
            self.fb_union[k] += int((p | t).sum())

    def per_class(self) -> dict[int, float]:
        return {c: self.intersection[c] / self.union[c] if self.union[c] else 0.0 for c in sorted(self.union)}

    @property
    def miou(self) -> float:
        ious = self.per_class()
        return float(np.mean(list(ious.values()))) if ious else 0.0

    @property
    def fbiou(self) -> float:
        return float(np.mean(self.fb_intersection / np.maximum(self.fb_union, 1)))


def episode_tensors(model: SCCAN, episode: Episode, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, object]:
    """Test-time inputs: query 1 x 3 x S x S, supports 1 x K x 3 x S x S, labels 1 x K x S x S."""
    query, place = resize_image(episode.query, size)
    support = [resize_image(s, size)[0] for s in episode.support]
    labels = [resize_label(l, size) for l in episode.support_labels]
    q = torch.from_numpy(normalize(query, model.mean, model.std))[None]
    s = torch.from_numpy(np.stack([normalize(x, model.mean, model.std) for x in support]))[None]
    m = torch.from_numpy(np.stack([(l == 1).astype(np.float32) for l in labels]))[None]
    return q, s, m, place


def model_predictor(model: SCCAN, size: int, device: str = "cpu") -> Predictor:
    """The network's prediction at the original label size."""
    model = model.eval()

    def predict(episode: Episode) -> np.ndarray:
        q, s, m, place = episode_tensors(model, episode, size)
        with torch.no_grad():
            logits = model(q.to(device), s.to(device), m.to(device)).float().cpu().numpy()
        return (resize_to_frame(foreground_logit(logits), place)[0] > 0).astype(np.int64)  # channel argmax

    return predict


def bundle_predictor(bundle: str | Path, backend: str = "auto", precision: str | None = None,
                     device: int = 0) -> Predictor:
    """An exported bundle's prediction through the SDK (:class:`sccan.sdk.Segmenter`), so a
    deployed model is measured by the same protocol as its checkpoint. See :func:`segmenter_predictor`."""
    from sccan.sdk import Segmenter

    return segmenter_predictor(Segmenter(bundle, backend=backend, precision=precision, device=device))


def segmenter_predictor(segmenter) -> Predictor:
    """Prediction through an existing Segmenter. Support masks go in as ``label == 1``. A support
    whose object vanishes at the network's input size cannot be registered (the SDK refuses it);
    that episode predicts background and is counted in ``predict.empty_supports``.
    ``predict.segmenter`` is the Segmenter used."""
    from sccan.sdk import EmptyMaskError

    def predict(episode: Episode) -> np.ndarray:
        try:
            segmenter.add_class("episode", episode.support, [label == 1 for label in episode.support_labels],
                                color="rgb")
        except EmptyMaskError:
            predict.empty_supports += 1
            return np.zeros(episode.query_label.shape, np.int64)
        return segmenter.segment(episode.query, color="rgb").masks["episode"].astype(np.int64)

    predict.empty_supports = 0
    predict.segmenter = segmenter
    return predict


def tracking_predictor(segmenter) -> Predictor:
    """Track mode through an existing Segmenter made with ``memory``: a sequence's support is
    registered once (when the episode's support list changes) and every query is segmented with
    ``remember=True``, so confident frames join the support as the sequence goes on. For
    :func:`sccan.train.video.evaluate_videos`, which hands every query of a sequence the same list."""
    state = {"support": None}

    def predict(episode: Episode) -> np.ndarray:
        if episode.support is not state["support"]:
            segmenter.add_class("episode", episode.support, [label == 1 for label in episode.support_labels],
                                color="rgb")
            segmenter.reset_memory()
            state["support"] = episode.support
        return segmenter.segment(episode.query, color="rgb", remember=True).masks["episode"].astype(np.int64)

    predict.segmenter = segmenter
    return predict


def prior_predictor(model: SCCAN, size: int, threshold: float = 0.5, device: str = "cpu") -> Predictor:
    """The prior mask alone (no trained parameters: backbone features only), thresholded."""
    model = model.eval()

    def predict(episode: Episode) -> np.ndarray:
        q, s, m, place = episode_tensors(model, episode, size)
        with torch.no_grad():
            b, k = s.shape[:2]
            mid, high = model.extract(s.reshape(b * k, *s.shape[2:]).to(device))
            features = model.encode_support_features(mid, high, m.to(device))
            _, q_high = model.extract(q.to(device))
            prior = model.prior(q_high, features["prior_keys"], features["prior_mask"], features["shot_valid"])
            p = resize(prior, size).float().cpu().numpy()
        return (resize_to_frame(p[:, 0], place)[0] > threshold).astype(np.int64)

    return predict


@dataclass
class EvalResult:
    miou: float
    fbiou: float
    per_class: dict[int, float]
    episodes: int
    samples: list[tuple[Episode, np.ndarray]]

    def to_dict(self) -> dict:
        return {"miou": self.miou, "fbiou": self.fbiou, "episodes": self.episodes,
                "per_class": {str(k): v for k, v in self.per_class.items()}}

    def table(self, class_names: dict[int, str] | None = None) -> str:
        lines = [f"{'class':<24}{'IoU':>8}"]
        for c, iou in self.per_class.items():
            name = class_names.get(c, str(c)) if class_names else str(c)
            lines.append(f"{name:<24}{iou:>8.4f}")
        lines += [f"{'mIoU':<24}{self.miou:>8.4f}", f"{'FB-IoU':<24}{self.fbiou:>8.4f}",
                  f"({self.episodes} episodes)"]
        return "\n".join(lines)


def evaluate(predict: Predictor, episodes: Iterable[Episode], total: int | None = None, keep_samples: int = 8,
             progress: bool = True) -> EvalResult:
    """Run ``predict`` over ``episodes`` and accumulate the benchmark metrics."""
    meter, samples, n = IoUMeter(), [], 0
    for episode in tqdm(episodes, total=total, desc="eval", unit="episode", disable=not progress, leave=False):
        prediction = predict(episode)
        meter.add(prediction, episode.query_label, episode.class_id)
        if len(samples) < keep_samples:
            samples.append((episode, prediction))
        n += 1
    return EvalResult(meter.miou, meter.fbiou, meter.per_class(), n, samples)


class CrossSupport:
    """A control over an episode set: episode ``i``'s query with the support of the next episode of
    another class (cyclically). A model that segments what its support shows drops; one that
    segments whatever is salient does not. Labels and class ids stay the query's."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.class_names = getattr(dataset, "class_names", {})

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Episode:
        episode, n = self.dataset[index], len(self.dataset)
        for k in range(1, n):
            other = self.dataset[(index + k) % n]
            if other.class_id != episode.class_id:
                return Episode(episode.query, episode.query_label, other.support, other.support_labels,
                               episode.class_id)
        raise ValueError("the cross-support control needs episodes of at least two classes")


def save_grid(samples: list[tuple[Episode, np.ndarray]], path: str | Path, tile: int = 160) -> Path:
    """A PNG, one row per episode: support | query | prediction | truth (masks drawn over the images)."""

    def fit(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)

    def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        out = image.astype(np.float32).copy()
        sel = mask == 1
        out[sel] = 0.45 * out[sel] + 0.55 * np.array(colour, np.float32)
        out = fit(out.clip(0, 255).astype(np.uint8))
        # A tint alone blends into coloured objects: outline the mask too (white, at tile size).
        small = cv2.resize(sel.astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
        return out

    rows = []
    for episode, prediction in samples:
        rows.append(np.concatenate([
            overlay(episode.support[0], episode.support_labels[0], (0, 120, 255)), fit(episode.query),
            overlay(episode.query, prediction, (255, 60, 60)), overlay(episode.query, episode.query_label, (60, 220, 60)),
        ], axis=1))
    header = np.full((24, tile * 4, 3), 255, np.uint8)
    for i, text in enumerate(("support", "query", "prediction", "truth")):
        cv2.putText(header, text, (i * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    grid = np.concatenate([header, *rows], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid[..., ::-1])
    return path


def write_json(path: str | Path, data: dict) -> None:
    from sccan.sdk.bundle import write_json_atomic

    write_json_atomic(path, data)


__all__ = ["IoUMeter", "EvalResult", "evaluate", "model_predictor", "prior_predictor", "save_grid"]
