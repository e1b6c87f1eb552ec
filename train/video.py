"""One-shot video-object evaluation: the robot's use case measured on DAVIS-layout folders.

Each sequence's first K annotated frames are the support; every later annotated frame is a query.
Per frame: J, the region similarity (the IoU of the predicted and true masks), and F, the boundary
measure of the DAVIS benchmark (Perazzi et al., CVPR 2016): the F1 score of the predicted contour
against the true one, a contour pixel counting as matched when the other contour passes within
``0.008 x`` the image diagonal (rounded up). Two empty masks score 1 on both; one empty mask
against a non-empty one scores 0.

Layout: ``ROOT/JPEGImages/480p/<seq>/<frame>.jpg`` with ``ROOT/Annotations/480p/<seq>/<frame>.png``
(any non-zero pixel is the object). ``ROOT/JPEGImages/<seq>/`` and ``ROOT/Annotations/<seq>/``
(no resolution folder) are read too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .data.episodes import Episode
from .data.segmentation import DatasetError

LAYOUT = ("expected ROOT/JPEGImages/480p/<sequence>/<frame>.jpg and ROOT/Annotations/480p/<sequence>/<frame>.png "
          "(the DAVIS layout; the 480p level may be absent)")
BOUNDARY_TOLERANCE = 0.008
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class VideoSequence:
    name: str
    frames: list[Path]  # annotated frames, in order
    masks: list[Path]


def list_sequences(root: str | Path, names: Sequence[str] | None = None) -> list[VideoSequence]:
    """The annotated sequences under ``root`` (all, or ``names``), frames in file-name order."""
    root = Path(root)
    images, annotations = root / "JPEGImages" / "480p", root / "Annotations" / "480p"
    if not images.is_dir():
        images, annotations = root / "JPEGImages", root / "Annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise DatasetError(f"video root {root}: no JPEGImages/ and Annotations/ folders: {LAYOUT}")
    available = sorted(p.name for p in images.iterdir() if p.is_dir())
    wanted = list(names) if names else available
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise DatasetError(f"video root {root}: no sequence(s) {unknown}; found {available}")
    sequences = []
    for name in wanted:
        masks = {p.stem: p for p in (annotations / name).glob("*.png")} if (annotations / name).is_dir() else {}
        frames = sorted(p for p in (images / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                        and p.stem in masks)
        if frames:
            sequences.append(VideoSequence(name, frames, [masks[p.stem] for p in frames]))
    if not sequences:
        raise DatasetError(f"video root {root}: no annotated frames: {LAYOUT}")
    return sequences


def read_frame(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read frame {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"cannot read mask {path}")
    return (mask > 0).astype(np.uint8)


# -- measures -------------------------------------------------------------------------------------


def region_similarity(prediction: np.ndarray, truth: np.ndarray) -> float:
    """J: intersection over union of two binary masks (1.0 when both are empty)."""
    p, t = prediction.astype(bool), truth.astype(bool)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum()) / float(union)


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's contour pixels: object pixels with a 4-neighbour outside the object (the image
    border counts as outside)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1]
    interior = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return inner & ~interior


def boundary_measure(prediction: np.ndarray, truth: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F: the F1 score of the predicted contour against the true one, matched within
    ``ceil(tolerance x diagonal)`` pixels (1.0 when both masks are empty, 0.0 when one is)."""
    p, t = boundary(prediction), boundary(truth)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    radius = max(1, math.ceil(tolerance * math.hypot(*prediction.shape)))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = (yy * yy + xx * xx <= radius * radius).astype(np.uint8)  # within ``radius`` (Euclidean)
    near_t = cv2.dilate(t.astype(np.uint8), disk).astype(bool)
    near_p = cv2.dilate(p.astype(np.uint8), disk).astype(bool)
    precision = float((p & near_t).sum()) / float(p.sum())
    recall = float((t & near_p).sum()) / float(t.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# -- evaluation -----------------------------------------------------------------------------------


@dataclass
class SequenceResult:
    name: str
    j: list[float] = field(default_factory=list)
    f: list[float] = field(default_factory=list)

    @property
    def j_mean(self) -> float:
        return float(np.mean(self.j)) if self.j else float("nan")

    @property
    def f_mean(self) -> float:
        return float(np.mean(self.f)) if self.f else float("nan")


@dataclass
class VideoResult:
    shots: int
    sequences: list[SequenceResult]

    @property
    def j_mean(self) -> float:
        """Mean over sequences of each sequence's mean J (the DAVIS convention)."""
        return float(np.mean([s.j_mean for s in self.sequences if s.j]))

    @property
    def f_mean(self) -> float:
        return float(np.mean([s.f_mean for s in self.sequences if s.f]))

    def to_dict(self) -> dict:
        return {"shots": self.shots, "j_mean": self.j_mean, "f_mean": self.f_mean,
                "sequences": {s.name: {"j_mean": s.j_mean, "f_mean": s.f_mean, "frames": len(s.j), "j": s.j,
                                       "f": s.f} for s in self.sequences}}

    def table(self) -> str:
        lines = [f"{'sequence':<24}{'frames':>7}{'J':>8}{'F':>8}"]
        lines += [f"{s.name:<24}{len(s.j):>7}{s.j_mean:>8.3f}{s.f_mean:>8.3f}" for s in self.sequences]
        lines.append(f"J mean {self.j_mean:.3f}, F mean {self.f_mean:.3f} over {len(self.sequences)} sequences")
        return "\n".join(lines)


def evaluate_videos(predict: Callable[[Episode], np.ndarray], sequences: Sequence[VideoSequence], shots: int = 1,
                    strips: str | Path | None = None, progress: bool = True, cross_support: bool = False
                    ) -> VideoResult:
    """Score ``predict`` (an episode -> query mask predictor of :mod:`sccan.train.evaluate`) on each
    sequence; with ``strips``, write a PNG per sequence there (support, then queries with the
    prediction in red and the truth's outline in green).

    ``cross_support`` is a control: each sequence's queries get the support of the next sequence
    (another object). A model that segments what its support shows drops; one that segments the
    most salient object (DAVIS frames hold one) does not.
    """
    results = []
    queries = sum(max(0, len(s.frames) - shots) for s in sequences)
    bar = tqdm(total=queries, desc="video eval", unit="frame", disable=not progress, leave=False)
    for seq in sequences:
        if len(seq.frames) <= shots:
            continue
        source = seq
        if cross_support:
            others = [s for s in sequences if s.name != seq.name and len(s.frames) >= shots]
            if not others:
                raise DatasetError("cross_support needs a second sequence with a support")
            source = others[(sequences.index(seq)) % len(others)]
        support = [read_frame(p) for p in source.frames[:shots]]
        labels = [read_mask(p) for p in source.masks[:shots]]
        result, tiles = SequenceResult(seq.name), [_tile(support[0], labels[0], None)]
        for frame_path, mask_path in zip(seq.frames[shots:], seq.masks[shots:]):
            frame, truth = read_frame(frame_path), read_mask(mask_path)
            prediction = predict(Episode(frame, truth, support, labels, 1)).astype(np.uint8)
            result.j.append(region_similarity(prediction, truth))
            result.f.append(boundary_measure(prediction, truth))
            if strips is not None and len(tiles) < 8:
                tiles.append(_tile(frame, prediction, truth))
            bar.update()
        if strips is not None:
            path = Path(strips) / f"{seq.name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.concatenate(tiles, axis=1)[..., ::-1])
        results.append(result)
    bar.close()
    if not results:
        raise DatasetError(f"no sequence has more than {shots} annotated frames (the support)")
    return VideoResult(shots, results)


def _tile(image: np.ndarray, mask: np.ndarray, truth: np.ndarray | None, height: int = 160) -> np.ndarray:
    """One strip tile (RGB): the mask tinted (blue for the support, red for a prediction), the
    truth's outline in green."""
    out = image.astype(np.float32).copy()
    colour = np.array((0, 120, 255) if truth is None else (255, 60, 60), np.float32)
    sel = mask.astype(bool)
    out[sel] = 0.45 * out[sel] + 0.55 * colour
    out = out.clip(0, 255).astype(np.uint8)
    if truth is not None:
        contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (60, 220, 60), 2)
    width = round(image.shape[1] * height / image.shape[0])
    return cv2.resize(out, (width, height), interpolation=cv2.INTER_AREA)
