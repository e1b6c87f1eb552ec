"""Training on cached backbone features: the CPU recipe (``train.feature_cache`` in a config).

The backbone is frozen, so the features of a training photo never change. Each photo is taken once
through the test-time pipeline (``sccan.sdk.preprocess``: longer side to ``data.size``, padded),
its mid and high features are stored as float16 ``.npy`` files (memory-mapped while training) and
its label at the canvas beside them. A step then runs only the trained part of the network (the
``down_*`` and merge layers, the SCCA transformer and the decoder), about 4x less work per episode
than image-level training on a CPU. The price: no image augmentation beyond horizontal flips of
the cached maps (features and labels flipped together).

Episodes are functions of ``(seed, step, slot)``, so ``--resume`` continues the same trajectory:

* **positive**: a class, two different photos holding it (a support, a query); for a video
  source (DAVIS layout, one object per sequence) two frames of one sequence;
* **negative** (``train.negative_ratio`` of the episodes): a support of a class and a query photo
  of the same source that does not hold it (for a video source: a frame of another sequence);
  the target is all background. Dice alone gives an empty target no gradient, so the loss adds
  ``train.ce_weight`` x the pixel cross-entropy.

Photos of held-out classes never enter the cache: the YOLO-seg and label-PNG sources are indexed by
the same builders as image-level training (images showing a ``test_classes`` class are left out).

Cache layout (``DIR``, one per model config, input size and source list; rebuilt when they change)::

    DIR/index.json           sources, photos, per-photo classes, the key it was built for
    DIR/mid.npy, high.npy    N x Cm x h x w and N x Ch x h x w float16
    DIR/labels.npy           N x S x S uint16: 1000 x source + class, 0 background, 65535 ignored
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sccan.sdk.preprocess import IGNORE_LABEL, normalize, resize_image, resize_label

from .checkpoint import backbone_digest, load_model, read_checkpoint, save_checkpoint
from .data.segmentation import DatasetError, read_image, read_label, shrink
from .losses import dice_loss
from .model import SCCAN, build_model
from .model.ops import resize

CACHE_IGNORE = 65535
#: A class counts as present in a cached photo when it covers this share of the canvas's image
#: pixels (PFENet's 2 x 32 x 32 pixels of a 500 x 375 photo is 1.1%).
MIN_SHARE = 0.005


@dataclass
class CachedPhoto:
    image: str
    source: int
    group: int  # video sequence (a video source), else -1
    classes: list[int]  # global ids present (>= MIN_SHARE)
    all_classes: list[int]  # every global id with a pixel


def _source_photos(k: int, section: dict[str, Any], shots: int) -> tuple[list[tuple[Path, Any, int]], dict[int, str]]:
    """(image, label reader, group) per training photo of one source section, and its class names."""
    from .data import labelpng, yoloseg

    kind = section.get("dataset")
    root = Path(section["root"])
    if kind == "yolo":
        index = yoloseg.build_index(root, None, section.get("train_split") or section.get("split", "train"),
                                    section.get("names_file"), exclude=section.get("test_classes") or (),
                                    min_images=shots + 1)
        used = sorted({i for v in index.by_class.values() for i in v})
        return ([(index.items[i].image, index.items[i].label, -1) for i in used], dict(index.class_names))
    if kind == "labels":
        if section.get("zero_is_class"):
            # Every pixel labelled (CamVid): value v is class v + 1, ``void`` is ignored.
            names = labelpng.load_class_list(root / section.get("class_list", "classes.txt"))
            void = int(section.get("void", 255))
            labels = {p.stem: p for p in (root / section.get("labels", "labels")).glob("*.png")}
            photos = [(p, ("shift", labels[p.stem], void), -1)
                      for p in sorted((root / section.get("images", "images")).iterdir())
                      if p.stem in labels]
            return photos, {v + 1: n for v, n in names.items() if v != void}
        index = labelpng.build_index(root, section.get("test_classes") or [], "train", section.get("images", "images"),
                                     section.get("labels", "labels"), section.get("class_list", "classes.txt"),
                                     section.get("train_classes"), min_images=shots + 1)
        used = sorted({i for v in index.by_class.values() for i in v})
        return ([(index.items[i].image, index.items[i].label, -1) for i in used], dict(index.class_names))
    if kind == "video":
        from .video import list_sequences

        photos, names = [], {}
        for g, seq in enumerate(list_sequences(root)):
            names[g + 1] = seq.name
            photos += [(f, ("video", m, g + 1), g) for f, m in zip(seq.frames, seq.masks)]
        return photos, names
    raise DatasetError(f"feature cache: source kind {kind!r} is not one of yolo, labels, video")


def _read_raw(image: np.ndarray, label: Any) -> np.ndarray:
    if isinstance(label, tuple) and label[0] == "shift":
        raw = cv2.imread(str(label[1]), cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise OSError(f"cannot read label {label[1]}")
        out = raw.astype(np.int32) + 1
        out[raw == label[2]] = IGNORE_LABEL
        return out
    if isinstance(label, tuple) and label[0] == "video":
        raw = cv2.imread(str(label[1]), cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise OSError(f"cannot read mask {label[1]}")
        return np.where(raw > 0, label[2], 0).astype(np.int32)
    return read_label(label, image.shape[:2]).astype(np.int32)


def cache_key(model: SCCAN, data: dict[str, Any]) -> str:
    """What a cache's contents depend on: the backbone's weights and layout, the input size, the sources."""
    spec = {"backbone": backbone_digest(model), "config": model.config.to_dict(), "size": data["size"],
            "max_side": data.get("max_side"), "sources": data["cache_sources"]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def build_feature_cache(model: SCCAN, data: dict[str, Any], directory: str | Path, progress: bool = True,
                        batch: int = 4) -> Path:
    """Compute (or reuse) the feature cache of ``data["cache_sources"]`` in ``directory``."""
    directory = Path(directory)
    key = cache_key(model, data)
    index_path = directory / "index.json"
    if index_path.is_file():
        try:
            if json.loads(index_path.read_text()).get("key") == key:
                return directory
        except (OSError, ValueError):
            pass
    size, shots = int(data["size"]), int(data.get("shots", 1))
    photos: list[tuple[Path, Any, int, int]] = []
    names: dict[int, str] = {}
    source_names = []
    for k, section in enumerate(data["cache_sources"]):
        found, class_names = _source_photos(k, section, shots)
        source_names.append(str(section.get("name", section["dataset"])))
        photos += [(p, lab, g, k) for p, lab, g in found]
        names.update({1000 * k + c: f"{source_names[-1]}/{n}" for c, n in class_names.items()})
    if not photos:
        raise DatasetError("feature cache: the sources hold no training photo")
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = model.eval()
    with torch.no_grad():
        probe_mid, probe_high = model.extract(torch.zeros(1, 3, size, size))
    g = probe_mid.shape[-1]
    mid = np.lib.format.open_memmap(tmp / "mid.npy", "w+", np.float16, (len(photos), probe_mid.shape[1], g, g))
    high = np.lib.format.open_memmap(tmp / "high.npy", "w+", np.float16, (len(photos), probe_high.shape[1], g, g))
    labels = np.lib.format.open_memmap(tmp / "labels.npy", "w+", np.uint16, (len(photos), size, size))
    records: list[CachedPhoto] = []
    bar = tqdm(total=len(photos), desc="caching backbone features", disable=not progress)
    for start in range(0, len(photos), batch):
        chunk = photos[start:start + batch]
        tensors = []
        for i, (image_path, label, group, k) in enumerate(chunk, start):
            image = read_image(image_path)
            raw = _read_raw(image, label)
            if data.get("max_side") and max(image.shape[:2]) > data["max_side"]:
                image, raw8 = shrink(image, raw.astype(np.uint16), data["max_side"])
                raw = raw8.astype(np.int32)
            canvas, _ = resize_image(image, size)
            tensors.append(normalize(canvas, model.mean, model.std))
            lab = resize_label(raw.astype(np.uint16), size).astype(np.int64)
            pad = resize_label(np.zeros(raw.shape, np.uint8), size) == IGNORE_LABEL
            ignore = (lab == IGNORE_LABEL) | pad
            glob = np.where(lab > 0, 1000 * k + lab, 0)
            glob[ignore] = CACHE_IGNORE
            labels[i] = glob.astype(np.uint16)
            valid = int((~pad).sum())
            ids, counts = np.unique(glob[~ignore], return_counts=True)
            present = [int(c) for c, n in zip(ids, counts) if c != 0 and n >= MIN_SHARE * valid]
            records.append(CachedPhoto(str(image_path), k, group if group < 0 else 1000 * k + group,
                                       present, [int(c) for c in ids if c != 0]))
        with torch.no_grad():
            m, h = model.extract(torch.from_numpy(np.stack(tensors)))
        mid[start:start + len(chunk)] = m.numpy().astype(np.float16)
        high[start:start + len(chunk)] = h.numpy().astype(np.float16)
        bar.update(len(chunk))
    bar.close()
    for array in (mid, high, labels):
        array.flush()
    del mid, high, labels
    (tmp / "index.json").write_text(json.dumps({
        "key": key, "size": size, "sources": source_names, "class_names": {str(c): n for c, n in names.items()},
        "photos": [vars(r) for r in records]}))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory


class CachedEpisodes:
    """Episodes over a feature cache; ``batch(step)`` is a function of (seed, step) alone."""

    def __init__(self, directory: str | Path, seed: int, negative_ratio: float, weights: list[float] | None = None):
        directory = Path(directory)
        meta = json.loads((directory / "index.json").read_text())
        self.photos = [CachedPhoto(**p) for p in meta["photos"]]
        self.class_names = {int(c): n for c, n in meta["class_names"].items()}
        self.mid = np.load(directory / "mid.npy", mmap_mode="r")
        self.high = np.load(directory / "high.npy", mmap_mode="r")
        self.labels = np.load(directory / "labels.npy", mmap_mode="r")
        self.seed, self.negative_ratio = seed, float(negative_ratio)
        if not 0.0 <= self.negative_ratio < 1.0:
            raise DatasetError(f"train.negative_ratio must be within [0, 1), got {negative_ratio}")
        self.by_class: dict[int, list[int]] = {}
        for i, p in enumerate(self.photos):
            for c in p.classes:
                self.by_class.setdefault(c, []).append(i)
        self.by_class = {c: v for c, v in self.by_class.items() if len(v) >= 2}
        sources = sorted({c // 1000 for c in self.by_class})
        self.classes_of = {k: sorted(c for c in self.by_class if c // 1000 == k) for k in sources}
        self.photos_of = {k: [i for i, p in enumerate(self.photos) if p.source == k] for k in sources}
        w = weights or [1.0] * (max(sources) + 1)
        self.sources = sources
        self.p = np.asarray([w[k] for k in sources], np.float64)
        self.p /= self.p.sum()

    def draw(self, step: int, slot: int) -> tuple[int, int, int, bool, bool, bool]:
        """(support photo, query photo, class, negative, flip support, flip query)."""
        rng = np.random.default_rng([self.seed, step, slot, 4099])
        k = self.sources[int(rng.choice(len(self.sources), p=self.p))]
        cls = self.classes_of[k][int(rng.integers(len(self.classes_of[k])))]
        members = self.by_class[cls]
        negative = bool(rng.random() < self.negative_ratio)
        s = members[int(rng.integers(len(members)))]
        if negative:
            group = self.photos[s].group
            pool = [i for i in self.photos_of[k] if cls not in self.photos[i].all_classes
                    and (group < 0 or self.photos[i].group != group)]
            if not pool:
                negative = False
        if negative:
            q = pool[int(rng.integers(len(pool)))]
        else:
            others = [i for i in members if i != s]
            q = others[int(rng.integers(len(others)))]
        return s, q, cls, negative, bool(rng.random() < 0.5), bool(rng.random() < 0.5)

    def batch(self, step: int, size: int) -> dict[str, torch.Tensor]:
        draws = [self.draw(step, j) for j in range(size)]

        def maps(array: np.ndarray, index: int, flip: bool) -> np.ndarray:
            x = np.asarray(array[index], np.float32)
            return x[..., ::-1] if flip else x

        s_mid = np.stack([maps(self.mid, d[0], d[4]) for d in draws])
        s_high = np.stack([maps(self.high, d[0], d[4]) for d in draws])
        q_mid = np.stack([maps(self.mid, d[1], d[5]) for d in draws])
        q_high = np.stack([maps(self.high, d[1], d[5]) for d in draws])
        support_masks, query_labels = [], []
        for s, q, cls, negative, fs, fq in draws:
            ls = np.asarray(self.labels[s])
            ls = ls[:, ::-1] if fs else ls
            support_masks.append((ls == cls).astype(np.float32))
            lq = np.asarray(self.labels[q])
            lq = lq[:, ::-1] if fq else lq
            target = np.where(lq == cls, 1, 0) if not negative else np.zeros(lq.shape, np.int64)
            target[lq == CACHE_IGNORE] = IGNORE_LABEL
            query_labels.append(target)
        return {"support_mid": torch.from_numpy(s_mid.copy()), "support_high": torch.from_numpy(s_high.copy()),
                "query_mid": torch.from_numpy(q_mid.copy()), "query_high": torch.from_numpy(q_high.copy()),
                "support_masks": torch.from_numpy(np.stack(support_masks)[:, None].copy()),
                "query_label": torch.from_numpy(np.stack(query_labels).astype(np.int64)),
                "negative": torch.tensor([d[3] for d in draws])}


def episode_loss(model: SCCAN, inputs: dict[str, torch.Tensor], ce_weight: float) -> torch.Tensor:
    """Dice (the reference recipe's loss) + ``ce_weight`` x pixel cross-entropy, at the label's size."""
    support = model.encode_support_features(inputs["support_mid"], inputs["support_high"], inputs["support_masks"])
    logits = model.decode_query_features(inputs["query_mid"], inputs["query_high"], support)
    label = inputs["query_label"]
    logits = resize(logits, tuple(label.shape[-2:]))
    loss = dice_loss(logits, label)
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(logits.float(), label, ignore_index=IGNORE_LABEL)
    return loss


def train_cached(config: dict[str, Any], resume: str | Path | None = None, progress: bool = True,
                 stop_after: int | None = None):
    """Fine-tune (``init_checkpoint``) or train the head on cached features; see the module docstring."""
    from .trainer import TrainingInterrupted, TrainResult, _fit_budget, _log, optimizers, poly_lr

    tcfg, dcfg = config["train"], config["data"]
    output = Path(config["output"])
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tcfg["seed"])
    model = build_model(**config["model"])
    if config.get("init_checkpoint") and not resume:
        model.load_state_dict(load_model(config["init_checkpoint"], model.config).state_dict(), strict=True)
    if not dcfg.get("cache_sources"):
        raise DatasetError("train.feature_cache needs data.cache_sources: the photo sources to cache")
    cache = build_feature_cache(model, dcfg, tcfg["feature_cache"], progress=progress)
    episodes = CachedEpisodes(cache, tcfg["seed"], tcfg.get("negative_ratio") or 0.0,
                              [float(s.get("weight", 1.0)) for s in dcfg["cache_sources"]])
    sgd, adamw = optimizers(model, tcfg)
    total_steps = int(tcfg.get("max_steps") or 0)
    if not total_steps:
        raise DatasetError("feature-cache training needs train.max_steps (or time_budget_s with a max_steps bound)")
    step, best = 0, -1.0
    if resume:
        state = read_checkpoint(resume)
        model.load_state_dict(state["state_dict"])
        sgd.load_state_dict(state["optimizer"])
        adamw.load_state_dict(state["optimizer_swin"])
        step = int(state["step"])
        total_steps = int(state.get("total_steps", total_steps))
        torch.set_rng_state(state["rng"]["torch"])
    log_path = output / "metrics.jsonl"
    if not resume and log_path.exists():
        log_path.unlink()
    ce_weight = float(tcfg.get("ce_weight") or 0.0)
    every = int(tcfg.get("checkpoint_every") or 100)
    budget = tcfg.get("time_budget_s")
    clock = {"start": time.perf_counter(), "first_step": step}
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    def checkpoint(name: str) -> Path:
        return save_checkpoint(model, output / name, epoch=0, step=step, best_miou=best, total_steps=total_steps,
                               optimizer=sgd.state_dict(), optimizer_swin=adamw.state_dict(),
                               rng={"torch": torch.get_rng_state()},
                               train_config=json.loads(json.dumps(config, default=str)))

    import threading

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    model.train()
    model.backbone.eval()
    bar = tqdm(total=total_steps, initial=step, desc="training on cached features", disable=not progress)
    started = step
    try:
        while step < total_steps:
            inputs = episodes.batch(step, int(tcfg["batch_size"]))
            sgd.param_groups[0]["lr"] = poly_lr(tcfg["lr"], step, total_steps, tcfg["power"])
            sgd.zero_grad(set_to_none=True)
            adamw.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = episode_loss(model, inputs, ce_weight)
                loss.backward()
            sgd.step()
            adamw.step()
            step += 1
            bar.update(1)
            if budget:
                fitted = _fit_budget(clock, step, total_steps, float(budget), log_path)
                if fitted != total_steps:
                    total_steps = fitted
                    bar.total = total_steps
            if step % tcfg["log_every"] == 0:
                rate = (step - started) / max(time.perf_counter() - clock["start"], 1e-9)
                _log(log_path, {"step": step, "loss": float(loss.detach()), "lr": sgd.param_groups[0]["lr"],
                                "steps_per_s": rate, "time": time.time()}, None)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if step % every == 0 or step >= total_steps:
                checkpoint("last.pt")
            if stop["signal"] is not None or step == stop_after:
                checkpoint("last.pt")
                if stop["signal"] is not None:
                    raise TrainingInterrupted(f"stopped by signal {stop['signal']} at step {step}; "
                                              f"resume with --resume {output / 'last.pt'}")
                return TrainResult(output, step, 0, best, output / "last.pt", interrupted=True)
    finally:
        bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return TrainResult(output, step, 0, best, output / "last.pt")


__all__ = ["build_feature_cache", "CachedEpisodes", "episode_loss", "train_cached", "cache_key"]
