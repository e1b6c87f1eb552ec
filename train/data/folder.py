"""A user's own data: ``root/<class>/images/*`` with masks ``root/<class>/masks/*`` of the same stem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .segmentation import DatasetError, FewShotIndex, Item

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
LAYOUT = ("expected root/<class>/images/<name>.<ext> with root/<class>/masks/<name>.png (same stem; any "
          "non-zero mask pixel is the object)")


def build_index(root: str | Path, classes: list[str]) -> FewShotIndex:
    """Items of the named classes (ids 1.. in the given order)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"folder dataset root {root} does not exist: {LAYOUT}")
    if not classes:
        raise DatasetError("the folder dataset needs its class split in the config: data.train_classes and "
                           f"data.test_classes (class folders under {root})")
    items, by_class, names, problems = [], {}, {}, []
    for cid, name in enumerate(classes, start=1):
        folder = root / name
        if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
            problems.append(f"{folder}: missing images/ or masks/")
            continue
        masks = {p.stem: p for p in (folder / "masks").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        names[cid] = name
        for image in sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if image.stem not in masks:
                problems.append(f"{image}: no mask {folder / 'masks' / image.stem}.*")
                continue
            by_class.setdefault(cid, []).append(len(items))
            items.append(Item(image, masks[image.stem]))
    if problems:
        raise DatasetError(f"folder dataset {root}: " + "; ".join(problems[:10]) + f" ({LAYOUT})")
    return FewShotIndex(items, by_class, names)


def binarize_mask(raw: np.ndarray, cls: int) -> np.ndarray:
    """Any non-zero mask pixel is the object (masks hold only their own class)."""
    del cls
    return (raw != 0).astype(np.uint8)
