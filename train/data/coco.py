"""COCO-20i: COCO 2014, 80 classes in 4 folds of 20, masks from instance annotations or label PNGs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .segmentation import DatasetError, FewShotIndex, Item, index_items, read_class_lists, write_class_lists

LAYOUT = ("expected a COCO root holding train2014/*.jpg and val2014/*.jpg, and either "
          "annotations/instances_{train,val}2014.json (read with pycocotools) or label PNGs "
          "labels/{train,val}2014/<image stem>.png with class ids 1-80 (0 background, 255 ignore)")


def fold_classes(fold: int, partition: str = "interleaved") -> tuple[set[int], set[int]]:
    """(base, novel) class ids 1-80 of fold 0-3.

    ``interleaved`` (``split_coco``, SCCAN's default): fold i tests classes i+1, i+5, ..., i+77.
    ``contiguous``: fold i tests classes 20i+1 .. 20i+20.
    """
    if fold not in range(4):
        raise DatasetError(f"COCO-20i fold must be 0-3, got {fold}")
    if partition == "interleaved":
        novel = set(range(fold + 1, 81, 4))
    elif partition == "contiguous":
        novel = set(range(20 * fold + 1, 20 * fold + 21))
    else:
        raise DatasetError(f"COCO partition must be 'interleaved' or 'contiguous', got {partition!r}")
    return set(range(1, 81)) - novel, novel


def render_labels(annotations: Path, images: Path, out: Path, progress: bool = True) -> tuple[list[Item], dict[int, str]]:
    """Label PNGs (contiguous class ids 1-80 in category-id order; overlaps: the later instance) from
    instance annotations; returns the items and class names."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise DatasetError("COCO instance annotations need pycocotools: pip install pycocotools") from exc
    coco = COCO(str(annotations))
    cat_ids = sorted(coco.getCatIds())
    contiguous = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    names = {contiguous[c["id"]]: c["name"] for c in coco.loadCats(cat_ids)}
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for image_id in tqdm(sorted(coco.getImgIds()), desc="rendering COCO masks", disable=not progress):
        info = coco.loadImgs(image_id)[0]
        target = out / f"{Path(info['file_name']).stem}.png"
        if not target.is_file():
            label = np.zeros((info["height"], info["width"]), np.uint8)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None)):
                label[coco.annToMask(ann) > 0] = 255 if ann.get("iscrowd") else contiguous[ann["category_id"]]
            cv2.imwrite(str(target), label)
        items.append(Item(images / info["file_name"], target))
    return items, names


def build_index(root: str | Path, fold: int, split: str, partition: str = "interleaved",
                cache: str | Path | None = None, progress: bool = True) -> FewShotIndex:
    root = Path(root)
    year = "train2014" if split == "train" else "val2014"
    images = root / year
    if not images.is_dir():
        raise DatasetError(f"COCO root {root} has no {year}/: {LAYOUT}")
    base, novel = fold_classes(fold, partition)
    cache_file = Path(cache) if cache else root / "lists" / "coco" / f"{partition}_fold{fold}_{split}_classes.txt"
    names: dict[int, str] = {}
    if cache_file.is_file():
        items, by_class = read_class_lists(cache_file, root)
        return FewShotIndex(items, by_class, names)
    annotations = root / "annotations" / f"instances_{year}.json"
    labels = root / "labels" / year
    if annotations.is_file():
        items, names = render_labels(annotations, images, root / "lists" / "coco" / "labels" / year, progress)
    elif labels.is_dir():
        items = [Item(images / f"{p.stem}.jpg", p) for p in sorted(labels.glob("*.png"))]
    else:
        raise DatasetError(f"COCO root {root} has neither {annotations} nor {labels}/: {LAYOUT}")
    by_class = index_items(items, base, novel, split, progress=progress)
    write_class_lists(cache_file, items, by_class, root)
    return FewShotIndex(items, by_class, names)
