"""Label-PNG folders with a class list: ``root/<images>/<name>.jpg``, ``root/<labels>/<name>.png``
whose pixel values index ``root/<class list>`` (``id<TAB>name`` per line, or one name per line
for ids 0, 1, ...). Value 0 is background and 255 is ignored (as in PASCAL). The clothing set in
``shared/realdata/ccp-clothing`` is such a folder (``photos``, ``labels_png``, ``label_list.txt``).

The test split uses ``test_classes``; training uses the other classes, on images that show none
of the test classes (:func:`~sccan.train.data.segmentation.index_items`).
"""

from __future__ import annotations

from pathlib import Path

from .segmentation import DatasetError, FewShotIndex, Item, index_items

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
LAYOUT = "expected root/<images>/<name>.jpg, root/<labels>/<name>.png (class indices) and a class list file"


def load_class_list(path: Path) -> dict[int, str]:
    if not path.is_file():
        raise DatasetError(f"class list {path} does not exist ({LAYOUT})")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if all("\t" in ln for ln in lines):
        return {int(a): b.strip() for a, b in (ln.split("\t", 1) for ln in lines)}
    return dict(enumerate(ln.strip() for ln in lines))


def build_index(root: str | Path, test_classes: list[str], split: str, images: str = "images",
                labels: str = "labels", class_list: str = "classes.txt", train_classes: list[str] | None = None,
                min_images: int = 2, progress: bool = False) -> FewShotIndex:
    """Items and, per class of ``split``, the images holding it (at least PFENet's 2 x 32 x 32 pixels).
    Training leaves out classes with fewer than ``min_images`` such images (shots + 1)."""
    root = Path(root)
    image_dir, label_dir = root / images, root / labels
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise DatasetError(f"label-PNG root {root}: no {images}/ or {labels}/ ({LAYOUT})")
    names = load_class_list(root / class_list)
    ids = {v: k for k, v in names.items()}
    unknown = [c for c in [*test_classes, *(train_classes or [])] if c not in ids]
    if unknown:
        raise DatasetError(f"label-PNG root {root}: unknown classes {unknown}; the class list has "
                           f"{sorted(ids)[:30]}...")
    novel = {ids[c] for c in test_classes}
    base = {ids[c] for c in train_classes} if train_classes else set(names) - novel - {0}
    if base & novel:
        raise DatasetError(f"classes both in training and test: {sorted(names[c] for c in base & novel)}")
    stems = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".png"}
    items = [Item(p, stems[p.stem]) for p in sorted(image_dir.iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in stems]
    if not items:
        raise DatasetError(f"label-PNG root {root}: no image has a label of the same name ({LAYOUT})")
    # Training keeps images whose classes are all base classes; classes outside both sets (skin,
    # hair, ...) count as base so that they do not exclude every image.
    by_class = index_items(items, set(names) - novel - {0}, novel, split, progress=progress)
    if split == "train":
        by_class = {c: v for c, v in by_class.items() if c in base and len(v) >= min_images}
    wanted = novel if split == "test" else set(by_class)
    return FewShotIndex(items, by_class, {c: names[c] for c in wanted})
