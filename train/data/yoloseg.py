"""YOLO-seg folders, the format most robotics teams label in (Ultralytics' layout):
``root/images/<split>/<name>.<ext>`` with ``root/labels/<split>/<name>.txt``, one object per line,
``class x1 y1 x2 y2 ...`` (a polygon, coordinates normalised to 0..1), and the class names in
``root/data.yaml`` (``names:`` as a list or an id -> name map) or a names file (``id<TAB>name``
or one name per line).

Labels are rasterised when read (:func:`read_yolo_label`): the value of a pixel is the class id + 1
(0 is background), polygons drawn in file order, larger ones first, so a small object on a large
one stays visible. An image holds a class when one of its polygons covers at least
:data:`MIN_AREA_FRACTION` of the image (PFENet's 2 x 32 x 32 pixels on a 640 x 480 image), so
that the index is built without reading a single image.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from .segmentation import MIN_OBJECT_PIXELS, DatasetError, FewShotIndex, Item

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MIN_AREA_FRACTION = MIN_OBJECT_PIXELS / (640 * 480)
LAYOUT = ("expected root/images/<split>/<name>.jpg with root/labels/<split>/<name>.txt ('class x1 y1 x2 y2 ...', "
          "normalised polygons) and the class names in root/data.yaml (names:) or a names file")


def load_names(root: Path, names_file: str | Path | None = None) -> dict[int, str]:
    """Class id -> name, from ``names_file``, ``root/data.yaml`` or a ``*names*.txt`` in ``root``."""
    candidates = [Path(names_file)] if names_file else [root / "data.yaml", *sorted(root.glob("*names*.txt"))]
    for path in candidates:
        if not path.is_file():
            continue
        if path.suffix in (".yaml", ".yml"):
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise DatasetError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, list):
                return dict(enumerate(str(n) for n in names))
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
            raise DatasetError(f"{path} has no 'names:' list or map")
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if all("\t" in ln for ln in lines):
            return {int(a): b.strip() for a, b in (ln.split("\t", 1) for ln in lines)}
        return dict(enumerate(ln.strip() for ln in lines))
    raise DatasetError(f"YOLO-seg root {root}: no class names ({LAYOUT})")


def parse_polygons(path: Path) -> list[tuple[int, np.ndarray]]:
    """(class id, N x 2 normalised polygon) per line; malformed lines raise OSError (skipped as unreadable)."""
    polygons = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        if len(values) < 7 or len(values) % 2 == 0:
            raise OSError(f"{path}:{number}: expected 'class x1 y1 x2 y2 x3 y3 ...', got {len(values)} values")
        try:
            polygons.append((int(values[0]), np.array(values[1:], np.float64).reshape(-1, 2)))
        except ValueError:
            raise OSError(f"{path}:{number}: not numbers") from None
    return polygons


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a polygon (in the points' units)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def read_yolo_label(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The label image (class id + 1 per pixel, 0 background) of a YOLO-seg file for an image of ``shape``."""
    height, width = shape
    label = np.zeros((height, width), np.uint8)
    polygons = sorted(parse_polygons(path), key=lambda p: -polygon_area(p[1]))
    for cls, points in polygons:
        if not 0 <= cls < 254:
            raise OSError(f"{path}: class id {cls} outside 0..253")
        pixels = np.round(points * (width, height) - 0.5).astype(np.int32)  # pixel centres
        cv2.fillPoly(label, [pixels], int(cls) + 1)
    return label


def build_index(root: str | Path, classes: list[str | int] | None, split: str = "train2017",
                names_file: str | Path | None = None, exclude: list[str | int] | tuple = (),
                min_images: int = 1) -> FewShotIndex:
    """Items of ``split`` holding the named classes. Class ids in the index are YOLO ids + 1 (the
    label values); ``classes`` are names or YOLO ids (None: every class not in ``exclude``).
    Images showing an ``exclude`` class at any size are left out; classes with fewer than
    ``min_images`` images are dropped (when ``classes`` is None) or an error (when named)."""
    root = Path(root)
    images, labels = root / "images" / split, root / "labels" / split
    if not images.is_dir() or not labels.is_dir():
        raise DatasetError(f"YOLO-seg root {root}: no images/{split} or labels/{split} ({LAYOUT})")
    names = load_names(root, names_file)
    by_name = {v: k for k, v in names.items()}

    def class_id(c: str | int) -> int:
        cid = c if isinstance(c, int) else by_name.get(str(c))
        if cid is None or cid not in names:
            raise DatasetError(f"YOLO-seg root {root}: unknown class {c!r}; known: {sorted(by_name)[:20]}...")
        return cid

    banned = {class_id(c) + 1 for c in exclude}
    chosen = [class_id(c) for c in classes] if classes is not None else [c for c in names if c + 1 not in banned]
    wanted = {cid + 1: names[cid] for cid in chosen}
    if set(wanted) & banned:
        raise DatasetError(f"classes both wanted and excluded: {sorted(names[c - 1] for c in set(wanted) & banned)}")
    items, by_class = [], {}
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label = labels / f"{image.stem}.txt"
        if not label.is_file():
            continue
        try:
            polygons = parse_polygons(label)
        except OSError:
            continue  # reported when an episode reads it
        if banned & {cls + 1 for cls, _ in polygons}:
            continue
        present = {cls + 1 for cls, pts in polygons if polygon_area(pts) >= MIN_AREA_FRACTION} & set(wanted)
        if present:
            for cid in present:
                by_class.setdefault(cid, []).append(len(items))
            items.append(Item(image, label))
    if classes is None:
        by_class = {c: v for c, v in by_class.items() if len(v) >= min_images}
        wanted = {c: n for c, n in wanted.items() if c in by_class}
    if not items or not by_class:
        raise DatasetError(f"YOLO-seg root {root}: no image in {split} holds the classes {list(wanted.values())}")
    return FewShotIndex(items, by_class, wanted)
