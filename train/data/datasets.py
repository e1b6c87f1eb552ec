"""Build the episodic dataset a config's ``data`` section names."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from sccan.train.backbones import IMAGENET_MEAN

from . import coco, folder, labelpng, pascal, yoloseg
from .augment import COCO_SCALE, PASCAL_SCALE
from .episodes import Episode
from .segmentation import DatasetError, SegmentationFewShot
from .synthetic import SyntheticFewShot

__all__ = ["build_dataset", "DatasetError"]


def build_dataset(data: dict[str, Any], split: str, seed: int, episodes: int | None = None):
    """The ``split`` ("train"/"test") episodes of the dataset ``data["dataset"]`` names.

    Common keys: ``size``, ``shots``, ``train_episodes``, ``test_episodes``. PASCAL: ``root``,
    ``fold``, optional ``train_list``/``val_list``. COCO: ``root``, ``fold``, ``partition``
    (``interleaved`` or ``contiguous``). Folder: ``root``, ``train_classes``, ``test_classes``.
    YOLO-seg: ``root``, ``train_classes``, ``test_classes`` (names), ``train_split``/``test_split``
    (folders under ``images/``, default ``split`` or ``train``), optional ``names_file``.
    Label PNGs: ``root``, ``test_classes`` (names), optional ``train_classes`` (default: all others),
    ``images``, ``labels`` (folders), ``class_list`` (file). Any real dataset: ``max_side`` (downscale
    photos whose longer side is larger, before augmentation). Mixed: ``sources``, a list of such
    sections (each may set ``weight``, default 1, and ``name``), sharing ``size``, ``shots``, ``max_side``.
    """
    kind = data.get("dataset")
    if kind == "mixed":
        return _mixed(data, split, seed, episodes)
    requested = episodes or data.get("train_episodes" if split == "train" else "test_episodes")
    size, shots = data["size"], data["shots"]
    if kind == "synthetic":
        n = requested or (2000 if split == "train" else 1000)
        return SyntheticFewShot(split, size=size, shots=shots, episodes=n, seed=seed,
                                num_classes=data.get("num_classes"), num_novel=data.get("num_novel", 6),
                                query_distractors=data.get("query_distractors", 2))
    mean = tuple(data.get("pad_mean", IMAGENET_MEAN))
    if kind == "pascal":
        _require(data, "root", "fold")
        list_file = data.get("train_list" if split == "train" else "val_list")
        index, scale, binarize = pascal.build_index(data["root"], data["fold"], split, list_file), PASCAL_SCALE, None
    elif kind == "coco":
        _require(data, "root", "fold")
        index = coco.build_index(data["root"], data["fold"], split, data.get("partition", "interleaved"))
        scale, binarize = COCO_SCALE, None
    elif kind == "folder":
        _require(data, "root")
        classes = data.get("train_classes" if split == "train" else "test_classes") or []
        index, scale, binarize = folder.build_index(data["root"], classes), PASCAL_SCALE, folder.binarize_mask
    elif kind == "yolo":
        _require(data, "root")
        test_classes = data.get("test_classes") or []
        classes = data.get("train_classes") if split == "train" else test_classes
        if not classes and not (split == "train" and test_classes):
            raise DatasetError("the yolo dataset needs its class split in the config: data.test_classes and "
                               "optionally data.train_classes (names from data.yaml; default: all the others)")
        folder_name = data.get("train_split" if split == "train" else "test_split") or data.get("split", "train")
        # Training never sees an image that shows a test class (PFENet's rule).
        index = yoloseg.build_index(data["root"], classes or None, folder_name, data.get("names_file"),
                                    exclude=test_classes if split == "train" else (),
                                    min_images=shots + 1 if split == "train" else 1)
        scale, binarize = COCO_SCALE, None
    elif kind == "labels":
        _require(data, "root", "test_classes")
        index = labelpng.build_index(data["root"], data["test_classes"], split, data.get("images", "images"),
                                     data.get("labels", "labels"), data.get("class_list", "classes.txt"),
                                     data.get("train_classes"), min_images=shots + 1)
        scale, binarize = PASCAL_SCALE, None
    else:
        raise DatasetError(f"unknown dataset {kind!r}; expected one of: synthetic, pascal, coco, folder, yolo, labels, "
                           "mixed")
    # By default a training epoch is one pass over the (class, image) pairs, as in the authors' protocol.
    n = requested or (index.pairs if split == "train" else 1000)
    return SegmentationFewShot(index, split, shots, n, seed, size, scale, mean, binarize, data.get("max_side"))


class MixedFewShot:
    """Episodes drawn from several datasets: each episode picks a source by weight (a function of
    seed, epoch and index, like every episode here), then one of its episodes. Class ids become
    ``1000 * source + id`` so that per-class results stay apart; names are ``source/name``."""

    def __init__(self, sources: list, names: list[str], weights: list[float], split: str, episodes: int,
                 seed: int):
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise DatasetError(f"mixed dataset: source weights must be >= 0 with a positive sum, got {weights}")
        self.sources, self.split, self.episodes, self.seed = sources, split, episodes, seed
        self.p = np.asarray(weights, np.float64) / sum(weights)
        self.epoch = 0
        self.class_names = {1000 * k + c: f"{names[k]}/{n}" for k, src in enumerate(sources)
                            for c, n in getattr(src, "class_names", {}).items()}

    def __len__(self) -> int:
        return self.episodes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for src in self.sources:
            src.set_epoch(epoch)

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.episodes:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, self.epoch, index, 7919])
        k = int(rng.choice(len(self.sources), p=self.p))
        episode = self.sources[k][int(rng.integers(len(self.sources[k])))]
        return replace(episode, class_id=1000 * k + int(episode.class_id))

    def error_summary(self) -> str:
        return "\n".join(s for s in (src.error_summary() for src in self.sources) if s)


def _mixed(data: dict[str, Any], split: str, seed: int, episodes: int | None) -> MixedFewShot:
    sections = data.get("sources")
    if not isinstance(sections, list) or not sections or not all(isinstance(s, dict) for s in sections):
        raise DatasetError("the mixed dataset needs data.sources: a list of dataset sections")
    shared = {k: data[k] for k in ("size", "shots", "max_side", "pad_mean") if k in data}
    built, names, weights = [], [], []
    for k, section in enumerate(sections):
        section = {**shared, **section}
        if section.get("dataset") in (None, "mixed"):
            raise DatasetError(f"data.sources[{k}] needs a dataset kind other than mixed")
        names.append(str(section.pop("name", section["dataset"])))
        weights.append(float(section.pop("weight", 1.0)))
        built.append(build_dataset(section, split, seed + k))
    requested = episodes or data.get("train_episodes" if split == "train" else "test_episodes")
    n = requested or (sum(len(b) for b in built) if split == "train" else 1000)
    return MixedFewShot(built, names, weights, split, n, seed)



def _require(data: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if data.get(k) is None]
    if missing:
        raise DatasetError(f"data section of the config lacks {missing} for dataset {data.get('dataset')!r}")
