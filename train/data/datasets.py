"""Build the episodic dataset a config's ``data`` section names."""

from __future__ import annotations

from typing import Any

from sccan.train.backbones import IMAGENET_MEAN

from . import coco, folder, labelpng, pascal, yoloseg
from .augment import COCO_SCALE, PASCAL_SCALE
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
    ``images``, ``labels`` (folders), ``class_list`` (file).
    """
    kind = data.get("dataset")
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
        classes = data.get("train_classes" if split == "train" else "test_classes") or []
        if not classes:
            raise DatasetError("the yolo dataset needs its class split in the config: data.train_classes and "
                               "data.test_classes (names from data.yaml)")
        folder_name = data.get("train_split" if split == "train" else "test_split") or data.get("split", "train")
        index = yoloseg.build_index(data["root"], classes, folder_name, data.get("names_file"))
        scale, binarize = COCO_SCALE, None
    elif kind == "labels":
        _require(data, "root", "test_classes")
        index = labelpng.build_index(data["root"], data["test_classes"], split, data.get("images", "images"),
                                     data.get("labels", "labels"), data.get("class_list", "classes.txt"),
                                     data.get("train_classes"), min_images=shots + 1)
        scale, binarize = PASCAL_SCALE, None
    else:
        raise DatasetError(f"unknown dataset {kind!r}; expected one of: synthetic, pascal, coco, folder, yolo, labels")
    # By default a training epoch is one pass over the (class, image) pairs, as in the authors' protocol.
    n = requested or (index.pairs if split == "train" else 1000)
    return SegmentationFewShot(index, split, shots, n, seed, size, scale, mean, binarize)



def _require(data: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if data.get(k) is None]
    if missing:
        raise DatasetError(f"data section of the config lacks {missing} for dataset {data.get('dataset')!r}")
