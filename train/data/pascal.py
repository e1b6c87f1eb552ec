"""PASCAL-5i: VOC2012 + SBD (``SegmentationClassAug``), 4 folds of 5 novel classes."""

from __future__ import annotations

from pathlib import Path

from .segmentation import DatasetError, FewShotIndex, Item, index_items, read_class_lists, write_class_lists

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
LAYOUT = ("expected a VOC2012 root holding JPEGImages/*.jpg and SegmentationClassAug/*.png (SBD-augmented "
          "labels, class ids 0-20, 255 = boundary), and either the BAM/SCCAN data lists "
          "(lists/pascal/voc_sbd_merge_noduplicate.txt, lists/pascal/val.txt: 'image label' per line) or "
          "ImageSets/Segmentation/val.txt to split train and val")


def fold_classes(fold: int) -> tuple[set[int], set[int]]:
    """(base, novel) class ids of fold 0-3: fold i tests classes 5i+1 .. 5i+5."""
    if fold not in range(4):
        raise DatasetError(f"PASCAL-5i fold must be 0-3, got {fold}")
    novel = set(range(5 * fold + 1, 5 * fold + 6))
    return set(range(1, 21)) - novel, novel


def data_list(root: Path, split: str, list_file: str | Path | None) -> list[Item]:
    """Items of the train or val split from a data list, or generated from the raw layout."""
    if not (root / "JPEGImages").is_dir() or not (root / "SegmentationClassAug").is_dir():
        raise DatasetError(f"PASCAL root {root} is incomplete: {LAYOUT}")
    default = root / "lists" / "pascal" / ("voc_sbd_merge_noduplicate.txt" if split == "train" else "val.txt")
    path = Path(list_file) if list_file else default
    if path.is_file():
        items = []
        for line in path.read_text().splitlines():
            if line.strip():
                image, label = line.split()[:2]
                items.append(Item(root / image, root / label))
        return items
    val_ids = root / "ImageSets" / "Segmentation" / "val.txt"
    if not val_ids.is_file():
        raise DatasetError(f"no data list {path} and no {val_ids} to generate one: {LAYOUT}")
    val = set(val_ids.read_text().split())
    labels = sorted((root / "SegmentationClassAug").glob("*.png"))
    chosen = [p for p in labels if (p.stem in val) == (split != "train")]
    return [Item(root / "JPEGImages" / f"{p.stem}.jpg", p) for p in chosen
            if (root / "JPEGImages" / f"{p.stem}.jpg").is_file()]


def build_index(root: str | Path, fold: int, split: str, list_file: str | Path | None = None,
                cache: str | Path | None = None, progress: bool = True) -> FewShotIndex:
    """Per-class items of a fold/split; the per-class lists are cached (generated when absent)."""
    root = Path(root)
    base, novel = fold_classes(fold)
    cache_file = Path(cache) if cache else root / "lists" / "pascal" / f"fold{fold}_{split}_classes.txt"
    names = {i + 1: n for i, n in enumerate(CLASSES)}
    if cache_file.is_file():
        items, by_class = read_class_lists(cache_file, root)
        return FewShotIndex(items, by_class, names)
    items = data_list(root, split, list_file)
    by_class = index_items(items, base, novel, split, progress=progress)
    write_class_lists(cache_file, items, by_class, root)
    return FewShotIndex(items, by_class, names)
