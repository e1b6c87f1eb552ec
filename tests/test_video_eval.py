"""One-shot video evaluation: J and F on hand-made masks (against brute-force definitions), the DAVIS
reader on the real folders, and `sccan eval --video-root` on two real sequences."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sccan.train.data.segmentation import DatasetError
from sccan.train.video import boundary, boundary_measure, list_sequences, read_mask, region_similarity

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "davis2016-val-part"


def square(size: int = 64, top: int = 10, left: int = 10, side: int = 20) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top:top + side, left:left + side] = 1
    return mask


def brute_force_f(prediction: np.ndarray, truth: np.ndarray) -> float:
    """F from its definition, pixel by pixel: contour pixels matched within ceil(0.008 x diagonal)."""
    radius = max(1, math.ceil(0.008 * math.hypot(*prediction.shape)))

    def contour(mask):
        pts = []
        for y, x in zip(*np.nonzero(mask)):
            neighbours = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
            if any(not (0 <= a < mask.shape[0] and 0 <= b < mask.shape[1]) or not mask[a, b] for a, b in neighbours):
                pts.append((y, x))
        return np.array(pts, float)

    p, t = contour(prediction), contour(truth)
    d = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    precision, recall = (d.min(1) <= radius).mean(), (d.min(0) <= radius).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_region_similarity_and_boundary_measure_on_hand_made_masks():
    a = square()
    assert region_similarity(a, a) == 1.0 and boundary_measure(a, a) == 1.0
    half = square(left=20)  # overlaps the left square on a 20 x 10 strip
    assert region_similarity(a, half) == pytest.approx(200 / 600)
    assert boundary(a).sum() == 4 * 20 - 4
    empty = np.zeros_like(a)
    assert region_similarity(empty, empty) == 1.0 and boundary_measure(empty, empty) == 1.0
    assert region_similarity(a, empty) == 0.0 and boundary_measure(a, empty) == 0.0
    # radius here is ceil(0.008 x 90.5) = 1: a 1-pixel shift keeps every contour pixel matched
    assert boundary_measure(a, square(left=11)) == 1.0
    # shifted, disjoint, and nested (contours of different lengths: precision and recall differ)
    for other in (square(left=20), square(top=13, left=12), square(top=30, left=30, side=10), square(side=12)):
        assert boundary_measure(a, other) == pytest.approx(brute_force_f(a, other))
        assert boundary_measure(a, other) < 1.0
    # a larger image: radius ceil(0.008 x 565.7) = 5, so a 4-pixel shift still matches fully
    big = square(400, 100, 100, 150)
    assert boundary_measure(big, square(400, 104, 100, 150)) == 1.0
    assert boundary_measure(big, square(400, 112, 100, 150)) < 1.0


@pytest.mark.skipif(not DAVIS.is_dir(), reason="../shared/realdata is not beside the repository")
def test_davis_reader_on_the_real_folders(tmp_path):
    sequences = list_sequences(DAVIS)
    assert len(sequences) == 12 and sequences[0].name == "blackswan"
    for seq in sequences:
        assert [p.stem for p in seq.frames] == [p.stem for p in seq.masks] and len(seq.frames) >= 5
    mask = read_mask(sequences[0].masks[0])
    assert mask.shape == (480, 854) and set(np.unique(mask)) == {0, 1}
    with pytest.raises(DatasetError, match="no sequence.*'nope'"):
        list_sequences(DAVIS, ["nope"])
    with pytest.raises(DatasetError, match="DAVIS layout"):
        list_sequences(tmp_path)


@pytest.mark.skipif(not DAVIS.is_dir(), reason="../shared/realdata is not beside the repository")
def test_sccan_eval_video_root_on_two_sequences(small_export, tmp_path):
    _, bundle = small_export
    out = tmp_path / "video"
    run = subprocess.run([sys.executable, "-m", "sccan.sdk.cli", "eval", "--video-root", str(DAVIS),
                          "--sequences", "blackswan,libby", "--bundle", str(bundle), "--output", str(out),
                          "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("J mean ") and last.endswith("over 2 sequences"), last
    report = json.loads((out / "video_eval.json").read_text())
    assert set(report["sequences"]) == {"blackswan", "libby"} and report["shots"] == 1
    frames = {s.name: len(s.frames) for s in list_sequences(DAVIS, ["blackswan", "libby"])}
    for name, seq in report["sequences"].items():
        assert seq["frames"] == frames[name] - 1  # every annotated frame after the support is a query
        assert all(0.0 <= v <= 1.0 for v in seq["j"] + seq["f"])
    assert f"J mean {report['j_mean']:.3f}, F mean {report['f_mean']:.3f}" in last
    assert (out / "strips" / "blackswan.png").stat().st_size > 10_000
    # track mode through the same command: the memory is recorded, and it needs a bundle with room
    run = subprocess.run([sys.executable, "-m", "sccan.sdk.cli", "eval", "--video-root", str(DAVIS),
                          "--sequences", "blackswan", "--bundle", str(bundle), "--memory", "2", "--output",
                          str(tmp_path / "memory"), "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "memory" / "video_eval.json").read_text())["memory"] == 2
    for args, text in ((["--bundle", str(bundle), "--memory", "3"], "exceed the bundle's 3 shot slots"),
                       (["model.pt", "--memory", "2"], "give --bundle")):
        run = subprocess.run([sys.executable, "-m", "sccan.sdk.cli", "eval", "--video-root", str(DAVIS), *args],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 2 and text in run.stderr, run.stderr


# -- YOLO-seg folders (the format robotics teams label in) ------------------------------------------

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "coco128-seg"


@pytest.mark.skipif(not COCO128.is_dir(), reason="../shared/realdata is not beside the repository")
def test_yolo_seg_labels_equal_their_polygons_and_make_episodes():
    import cv2
    from skimage.draw import polygon as fill

    from sccan.train.data.datasets import build_dataset
    from sccan.train.data.segmentation import read_image, read_label
    from sccan.train.data.yoloseg import build_index, parse_polygons

    index = build_index(COCO128, ["person", "car", "cup"])
    assert index.class_names == {1: "person", 3: "car", 42: "cup"}
    assert len(index.by_class[1]) > 20 and len(index.by_class[42]) >= 5
    checked = 0
    for item in index.items[:12]:
        image = read_image(item.image)
        label = read_label(item.label, image.shape[:2])
        assert label.shape == image.shape[:2]
        h, w = label.shape
        polygons = parse_polygons(item.label)
        for cls in {c for c, _ in polygons}:
            reference = np.zeros((h, w), bool)  # the class's polygons filled by skimage, independently
            for c, points in polygons:
                if c == cls:
                    rr, cc = fill(points[:, 1] * h - 0.5, points[:, 0] * w - 0.5, (h, w))
                    reference[rr, cc] = True
            if reference.sum() < 0.01 * h * w:
                continue
            ours = label == cls + 1
            # where another class's object lies on top, the label holds that class: compare elsewhere
            keep = ~((label > 0) & ~ours)
            # OpenCV fills edge pixels that skimage (pixel centres inside) leaves out, on vertices
            # rounded to whole pixels: the two differ within two pixels of the edge, and elsewhere on
            # at most 1% of the object (slivers thinner than a pixel: the zero-width bridges that
            # join an object's parts into one YOLO polygon)
            kernel = np.ones((5, 5), np.uint8)
            band = cv2.dilate(reference.astype(np.uint8), kernel) > cv2.erode(reference.astype(np.uint8), kernel)
            differ = (ours ^ reference) & keep
            assert (differ & ~band).sum() <= 0.01 * reference.sum(), (item.label.name, cls)
            iou = (ours & reference & keep).sum() / max(1, ((ours | reference) & keep).sum())
            assert iou > 0.9, (item.label.name, cls, iou)
            checked += 1
    assert checked >= 10
    data = {"dataset": "yolo", "root": str(COCO128), "size": 129, "shots": 1, "train_split": "train2017",
            "test_split": "train2017", "train_classes": ["person", "car"], "test_classes": ["cup", "dining table"]}
    episodes = build_dataset(data, "test", seed=0, episodes=6)
    for i in range(6):
        e = episodes[i]
        assert e.class_id in (42, 61) and set(np.unique(e.query_label)) <= {0, 1, 255}
        assert (e.query_label == 1).any() and (e.support_labels[0] == 1).any()
    train = build_dataset(data, "train", seed=0, episodes=2)
    assert train[0].query.shape == (129, 129, 3)
    with pytest.raises(DatasetError, match="unknown class 'unicorn'"):
        build_index(COCO128, ["unicorn"])


CCP = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "ccp-clothing"


@pytest.mark.skipif(not CCP.is_dir(), reason="../shared/realdata is not beside the repository")
def test_label_png_folders_make_episodes_of_held_out_classes():
    import cv2

    from sccan.train.data.datasets import build_dataset

    data = {"dataset": "labels", "root": str(CCP), "images": "photos", "labels": "labels_png",
            "class_list": "label_list.txt", "test_classes": ["hat", "sunglasses", "belt"], "size": 129, "shots": 1}
    test = build_dataset(data, "test", seed=0, episodes=6)
    assert set(test.class_names.values()) == {"hat", "sunglasses", "belt"}
    for i in range(6):
        e = test[i]
        assert (e.query_label == 1).any() and (e.support_labels[0] == 1).any()
        assert set(np.unique(e.query_label)) <= {0, 1, 255}
    # the masks are the label PNG's pixels of the episode's class, nothing else
    item = test.index.items[test.index.by_class[e.class_id][0]]
    raw = cv2.imread(str(item.label), cv2.IMREAD_GRAYSCALE)
    assert (raw == e.class_id).sum() >= 2 * 32 * 32
    train = build_dataset(data, "train", seed=0, episodes=4)
    assert not set(train.class_names.values()) & {"hat", "sunglasses", "belt", "null"}
    for c, members in list(train.index.by_class.items())[:3]:  # no training image shows a held-out class
        for m in members[:5]:
            values = set(np.unique(cv2.imread(str(train.index.items[m].label), cv2.IMREAD_GRAYSCALE)).tolist())
            assert not values & {test_id for test_id in test.class_names}
    with pytest.raises(DatasetError, match="unknown classes .*unicorn"):
        build_dataset({**data, "test_classes": ["unicorn"]}, "test", seed=0)


def test_cross_support_control_gives_each_sequence_the_next_ones_support():
    from sccan.train.video import evaluate_videos, read_frame

    sequences = list_sequences(DAVIS, ["blackswan", "libby", "car-shadow"])
    first = {s.name: int(read_frame(s.frames[0]).sum()) for s in sequences}
    seen: list[tuple[int, int]] = []

    def predict(episode):  # a predictor that answers with the support's own mask
        seen.append((int(episode.support[0].sum()), int(episode.query.sum())))
        return episode.support_labels[0]

    own = evaluate_videos(predict, sequences, progress=False)
    assert {s for s, _ in seen} == set(first.values())
    seen.clear()
    cross = evaluate_videos(predict, sequences, cross_support=True, progress=False)
    queries = [len(s.frames) - 1 for s in sequences]
    expected = [first["libby"]] * queries[0] + [first["car-shadow"]] * queries[1] + [first["blackswan"]] * queries[2]
    assert [s for s, _ in seen] == expected
    # the first frame's mask predicts its own later frames far better than another object's mask does
    assert own.j_mean > cross.j_mean + 0.3, (own.j_mean, cross.j_mean)
