"""Copy a dataset folder with its photos downscaled (``python -m sccan.train.data.shrink SRC DST
--max-side 352``): what ``data.max_side`` does on every read, done once, so that a copy to carry to
another machine is small and its reads are fast. JPEGs are re-encoded (quality 95 by default); label PNGs
beside them (same stem, a folder whose name contains ``label``, ``mask`` or ``annotation``) are
resized with nearest neighbours to the same size; every other file is copied as it is.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
from tqdm import tqdm

from .segmentation import shrunk_size

LABEL_DIRS = ("label", "mask", "annotation")


def shrink_tree(src: Path, dst: Path, max_side: int, quality: int = 95) -> int:
    """Returns the number of images downscaled."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    labels = {p for p in files
              if p.suffix.lower() == ".png" and any(k in p.parent.as_posix().lower() for k in LABEL_DIRS)}
    sizes: dict[str, tuple[int, int]] = {}  # photo stem -> its new (height, width)
    for p in tqdm([p for p in files if p not in labels], desc="photos"):
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(p), cv2.IMREAD_COLOR) if p.suffix.lower() in (".jpg", ".jpeg") else None
        if image is not None and max(image.shape[:2]) > max_side:
            h, w = shrunk_size(image.shape[:2], max_side)
            cv2.imwrite(str(out), cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA),
                        [cv2.IMWRITE_JPEG_QUALITY, quality])
            sizes[p.stem] = (h, w)
        else:
            shutil.copy2(p, out)
    for p in tqdm(sorted(labels), desc="labels"):
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        label = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if p.stem in sizes and label is not None:
            h, w = sizes[p.stem]
            cv2.imwrite(str(out), cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))
        else:
            shutil.copy2(p, out)
    return len(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--max-side", type=int, default=352)
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the downscaled photos")
    args = parser.parse_args()
    print(f"{shrink_tree(args.src, args.dst, args.max_side, args.quality)} photos downscaled into {args.dst}")


if __name__ == "__main__":
    main()
