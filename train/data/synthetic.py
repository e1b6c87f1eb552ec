"""A synthetic few-shot segmentation set, generated deterministically from a seed.

A class is a (shape family, texture, hue) triple; no single attribute identifies a class, because
every shape, texture and hue is shared by many classes. Images are cluttered textured backgrounds
with one object of the episode's class and distractor objects of other classes, whose hue is at
least ``MIN_HUE_GAP`` away (within an image the colour tells the target apart; across the set it
does not). Base (training) and novel (test) classes are disjoint. The prior mask alone cannot
solve it (ImageNet features match shapes and textures more than hues, so it also fires on
distractors); a model has to learn.

There are many base classes (all 384 triples but the novel ones) on purpose: with 20, the model
memorised the base classes (0.55 mIoU on them, 0.27 on novel ones) instead of learning to match
the support; with hundreds, memorising is no shortcut.

Everything is a function of (seed, split, index): the same episode every run, on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .episodes import Episode

SHAPES = ("ellipse", "rectangle", "triangle", "cross")
TEXTURES = ("stripes", "checker", "dots", "solid")
HUES = tuple(range(0, 360, 15))  # degrees
#: Distractors differ from the episode's class by at least this hue distance (degrees).
MIN_HUE_GAP = 45


@dataclass(frozen=True)
class SyntheticClass:
    shape: str
    texture: str
    hue: int  # degrees


def class_table(num_classes: int | None = None) -> list[SyntheticClass]:
    """The fixed class definitions: every (shape, texture, hue) triple, in a fixed shuffled order
    (the last classes are the novel ones); the first ``num_classes`` of them (default: all 384)."""
    table = [SyntheticClass(shape, texture, hue) for hue in HUES for shape in SHAPES for texture in TEXTURES]
    order = np.random.default_rng(20231001).permutation(len(table))
    table = [table[i] for i in order]
    num_classes = len(table) if num_classes is None else num_classes
    if not 2 <= num_classes <= len(table):
        raise ValueError(f"num_classes must be within 2..{len(table)}, got {num_classes}")
    return table[:num_classes]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    hsv = np.array([[[h / 2.0, s * 255, v * 255]]], np.float32).clip(0, [179, 255, 255]).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size pattern in [0, 1]: how much of the second colour each pixel gets."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    period = rng.uniform(5, 9)
    if kind == "stripes":
        angle = rng.uniform(0, math.pi)
        return (np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    if kind == "dots":
        return ((((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2) < (period / 3.2) ** 2
                ).astype(np.float32)
    return np.zeros((size, size), np.float32)


def _shape_mask(kind: str, size: int, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    c, s = math.cos(angle), math.sin(angle)

    def pts(points):
        return np.array([[cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)] for x, y in points],
                        np.float32).round().astype(np.int32)

    if kind == "ellipse":
        cv2.ellipse(mask, (round(cx), round(cy)), (round(radius), round(radius * 0.65)), math.degrees(angle),
                    0, 360, 1, -1)
    elif kind == "rectangle":
        cv2.fillPoly(mask, [pts([(-1, -0.7), (1, -0.7), (1, 0.7), (-1, 0.7)])], 1)
    elif kind == "triangle":
        cv2.fillPoly(mask, [pts([(0, -1), (0.95, 0.8), (-0.95, 0.8)])], 1)
    elif kind == "cross":
        w = 0.33
        cv2.fillPoly(mask, [pts([(-1, -w), (1, -w), (1, w), (-1, w)])], 1)
        cv2.fillPoly(mask, [pts([(-w, -1), (w, -1), (w, 1), (-w, 1)])], 1)
    return mask.astype(bool)


def _paint(image: np.ndarray, cls: SyntheticClass, rng: np.random.Generator, cy: float, cx: float,
           radius: float) -> np.ndarray:
    size = image.shape[0]
    mask = _shape_mask(cls.shape, size, cy, cx, radius, rng.uniform(0, math.pi))
    hue = cls.hue + rng.uniform(-8, 8)
    base = _hsv_to_rgb(hue, rng.uniform(0.65, 0.9), rng.uniform(0.75, 0.95))
    second = _hsv_to_rgb(hue, rng.uniform(0.2, 0.4), rng.uniform(0.25, 0.45))
    pattern = _texture(cls.texture, size, rng)[..., None]
    colour = base * (1 - pattern) + second * pattern + rng.normal(0, 6, (size, size, 3))
    image[mask] = colour[mask]
    return mask


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency coloured noise plus random strokes: clutter with no class's signature."""
    coarse = rng.uniform(40, 200, (4, 4, 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 10, (size, size, 3))
    for _ in range(rng.integers(3, 7)):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2),
                 tuple(float(v) for v in rng.uniform(0, 255, 3)), int(rng.integers(1, 4)))
    return image


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


class SyntheticFewShot:
    """Episodes of the synthetic set.

    Args:
        split: ``"train"`` (base classes) or ``"test"`` (novel classes).
        size: image side in pixels.
        shots: support images per episode.
        episodes: episodes per epoch.
        seed: everything is generated from it.
        num_classes, num_novel: how much of the class table to use (default all) and how many of
            those (the last ones) are novel.
        query_distractors: objects of other classes in each query (supports have one).
    """

    def __init__(self, split: str = "train", size: int = 129, shots: int = 1, episodes: int = 1000,
                 seed: int = 0, num_classes: int | None = None, num_novel: int = 6, query_distractors: int = 2):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.table = class_table(num_classes)
        n = len(self.table)
        if not 1 <= num_novel < n:
            raise ValueError(f"num_novel must be within 1..{n - 1}, got {num_novel}")
        self.base = list(range(n - num_novel))
        self.novel = list(range(n - num_novel, n))
        self._distractors = [[j for j, other in enumerate(self.table) if _hue_distance(other.hue, c.hue) >= MIN_HUE_GAP]
                             for c in self.table]
        self.classes = self.base if split == "train" else self.novel
        self.split, self.size, self.shots, self.episodes, self.seed = split, size, shots, episodes, seed
        self.query_distractors = query_distractors
        self.epoch = 0

    def __len__(self) -> int:
        return self.episodes

    @property
    def class_names(self) -> dict[int, str]:
        """Class id -> ``shape/texture/hue`` (for tables and overlays)."""
        return {i: f"{c.shape}/{c.texture}/{c.hue}" for i, c in enumerate(self.table)}

    def set_epoch(self, epoch: int) -> None:
        """Training draws new episodes each epoch; evaluation keeps epoch 0."""
        self.epoch = epoch

    def image(self, cls: int, rng: np.random.Generator, distractors: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """One RGB uint8 image with an object of class ``cls`` and ``distractors`` objects of other
        classes; 0/1 label."""
        size = self.size
        image = _background(size, rng)
        label = np.zeros((size, size), np.uint8)
        objects = [cls] + list(rng.choice(self._distractors[cls], size=distractors, replace=False))
        order = rng.permutation(len(objects))
        for j in order:
            radius = rng.uniform(0.16, 0.26) * size
            cy, cx = rng.uniform(radius * 0.8, size - radius * 0.8, 2)
            mask = _paint(image, self.table[objects[j]], rng, cy, cx, radius)
            label[mask] = 1 if objects[j] == cls else 0
        # Keep a visible part of the target: redraw if distractors covered most of it.
        if label.sum() < 0.02 * size * size:
            return self.image(cls, rng, distractors)
        return image.clip(0, 255).astype(np.uint8), label

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.episodes:
            raise IndexError(index)
        split_code = 0 if self.split == "train" else 1
        rng = np.random.default_rng([self.seed, split_code, self.epoch, index])
        cls = self.classes[int(rng.integers(len(self.classes)))]
        # Queries hold more distractors than supports: segmenting every object then scores about
        # 1/3, so only matching the support does better (the set has no objectness shortcut).
        query, query_label = self.image(cls, rng, self.query_distractors)
        shots = [self.image(cls, rng, 1) for _ in range(self.shots)]
        return Episode(query, query_label, [s[0] for s in shots], [s[1] for s in shots], cls)
