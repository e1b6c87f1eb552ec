"""Few-shot episodes from semantic-segmentation data (PASCAL-5i, COCO-20i, a user's folders).

A source provides (image path, label path) items whose labels hold class ids; a fold splits the
classes into base (training) and novel (test) ones. Episodes pick a class, a query image of it and
K other images of it as supports; the chosen class becomes 1, every other class 0, 255 stays.
Sampling is a function of (seed, epoch, index), so evaluation episodes are identical run to run.
Unreadable files are skipped (another deterministic draw replaces the episode) and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sccan.sdk.errors import SCCANError
from sccan.sdk.preprocess import IGNORE_LABEL

from .augment import augment
from .episodes import Episode

#: Objects smaller than this many pixels are not used as training or test targets (PFENet's rule).
MIN_OBJECT_PIXELS = 2 * 32 * 32


class DatasetError(SCCANError):
    """A dataset that cannot be built or read (the message names the expected layout)."""


@dataclass
class Item:
    image: Path
    label: Path


@dataclass
class FewShotIndex:
    """For each class of a split, the items that hold a usable object of it."""

    items: list[Item]
    by_class: dict[int, list[int]]
    class_names: dict[int, str] = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        """Number of (class, image) pairs."""
        return sum(len(v) for v in self.by_class.values())

    def check_shots(self, shots: int) -> None:
        """Every class needs shots + 1 images (a query and K distinct supports)."""
        short = {c: len(v) for c, v in self.by_class.items() if len(v) < shots + 1}
        if short:
            names = ", ".join(f"{self.class_names.get(c, c)} ({n})" for c, n in sorted(short.items()))
            raise DatasetError(f"classes with fewer than shots + 1 = {shots + 1} images: {names}")
        if not self.by_class:
            raise DatasetError("no class has any usable image in this split")


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return image[..., ::-1].copy()  # RGB


def read_label(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A label image; a YOLO-seg ``.txt`` is rasterised at ``shape`` (its image's height, width)."""
    if path.suffix == ".txt":
        from .yoloseg import read_yolo_label

        return read_yolo_label(path, shape)
    label = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if label is None:
        raise OSError(f"cannot read label {path}")
    return label


class SegmentationFewShot:
    """Episodes over a :class:`FewShotIndex`.

    Args:
        index: the items and, per class, which items hold it.
        split: "train" (augmented to ``size`` x ``size``) or "test" (original sizes; evaluation
            applies the test-time resize).
        binarize: raw label + class id -> 0/1/255 label.
    """

    def __init__(self, index: FewShotIndex, split: str, shots: int, episodes: int, seed: int, size: int,
                 scale: tuple[float, float], mean: tuple[float, float, float],
                 binarize: Callable[[np.ndarray, int], np.ndarray] | None = None, max_side: int | None = None):
        index.check_shots(shots)
        self.max_side = max_side
        self.index, self.split, self.shots, self.episodes = index, split, shots, episodes
        self.seed, self.size, self.scale, self.mean = seed, size, scale, mean
        self.classes = sorted(index.by_class)
        self.class_names = index.class_names
        self.binarize = binarize or binarize_class
        self.epoch = 0
        self.errors: dict[str, str] = {}

    def __len__(self) -> int:
        return self.episodes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, item: Item, cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(item.image)
        raw = read_label(item.label, image.shape[:2])
        if image.shape[:2] != raw.shape:
            raise OSError(f"image {item.image} is {image.shape[:2]} but its label {item.label} is {raw.shape}")
        if self.max_side and max(image.shape[:2]) > self.max_side:
            image, raw = shrink(image, raw, self.max_side)
        label = self.binarize(raw, cls)
        if self.split == "train":
            image, label = augment(image, label, self.size, rng, self.scale, self.mean)
        return image, label

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.episodes:
            raise IndexError(index)
        split_code = 0 if self.split == "train" else 1
        for attempt in range(100):
            rng = np.random.default_rng([self.seed, split_code, self.epoch, index, attempt])
            cls = self.classes[int(rng.integers(len(self.classes)))]
            members = self.index.by_class[cls]
            chosen = rng.choice(len(members), size=self.shots + 1, replace=False)
            items = [self.index.items[members[int(i)]] for i in chosen]
            try:
                loaded = [self._load(item, cls, rng) for item in items]
            except OSError as exc:  # reported at the end, never a crash mid-epoch
                self.errors[str(items[0].image)] = str(exc)
                continue
            (query, qlabel), shots = loaded[0], loaded[1:]
            return Episode(query, qlabel, [s[0] for s in shots], [s[1] for s in shots], cls)
        raise DatasetError(f"100 draws in a row failed to read; last errors: {list(self.errors.values())[-3:]}")

    def error_summary(self) -> str:
        if not self.errors:
            return ""
        lines = [f"{len(self.errors)} unreadable files were skipped:"] + [f"  {v}" for v in self.errors.values()]
        return "\n".join(lines)


def shrink(image: np.ndarray, label: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Downscale an image (area) and its label (nearest) so that the longer side is ``max_side``.

    PFENet's recipe crops ``size`` from the image at its own scale; photos much larger than
    ``size`` (a 825-px fashion photo for a 321 crop) would show only part of the object, while
    test images are resized whole. ``data.max_side`` brings such sources to PASCAL's proportions.
    """
    nh, nw = shrunk_size(label.shape, max_side)
    return (cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA),
            cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST))


def shrunk_size(shape: tuple[int, ...], max_side: int) -> tuple[int, int]:
    """(height, width) of ``shape`` scaled so that the longer side is ``max_side``."""
    h, w = shape[:2]
    f = max_side / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def binarize_class(raw: np.ndarray, cls: int) -> np.ndarray:
    """The chosen class becomes 1, every other class 0, 255 stays 255."""
    label = np.zeros_like(raw)
    label[raw == cls] = 1
    label[raw == IGNORE_LABEL] = IGNORE_LABEL
    return label


def index_items(items: list[Item], base: set[int], novel: set[int], split: str,
                min_pixels: int = MIN_OBJECT_PIXELS, progress: bool = False) -> dict[int, list[int]]:
    """Per class of the split, the items with an object of at least ``min_pixels``.

    Training keeps only images all of whose classes are base classes (an image that shows a novel
    class is never seen in training); testing uses the novel classes.
    """
    from tqdm import tqdm

    by_class: dict[int, list[int]] = {}
    wanted = base if split == "train" else novel
    for i, item in enumerate(tqdm(items, desc="indexing labels", disable=not progress)):
        raw = read_label(item.label)
        present = set(np.unique(raw).tolist()) - {0, IGNORE_LABEL}
        if split == "train" and not present <= base:
            continue
        for c in present & wanted:
            if int((raw == c).sum()) >= min_pixels:
                by_class.setdefault(c, []).append(i)
    return by_class


def write_class_lists(path: Path, items: list[Item], by_class: dict[int, list[int]], root: Path) -> None:
    """Per-class file lists: one ``class image label`` line per usable (class, item), paths relative to
    ``root`` (labels may live elsewhere, e.g. rendered COCO masks: then they are absolute)."""
    from sccan.sdk.bundle import write_text_atomic

    def rel(p: Path) -> str:
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    write_text_atomic(path, "".join(f"{c} {rel(items[i].image)} {rel(items[i].label)}\n"
                                    for c in sorted(by_class) for i in by_class[c]))


def read_class_lists(path: Path, root: Path) -> tuple[list[Item], dict[int, list[int]]]:
    items, by_class, seen = [], {}, {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        c, image, label = line.split()
        key = (image, label)
        if key not in seen:
            seen[key] = len(items)
            items.append(Item(root / image, root / label))
        by_class.setdefault(int(c), []).append(seen[key])
    return items, by_class
