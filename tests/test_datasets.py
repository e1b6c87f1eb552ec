"""PASCAL-5i, COCO-20i and folder datasets on tiny trees rendered here; augmentation labels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sccan.train.data import coco, pascal
from sccan.train.data.augment import augment, crop
from sccan.train.data.datasets import build_dataset
from sccan.train.data.segmentation import DatasetError

SIZE = 64


def _voc_tree(root, specs):
    """specs: name -> list of (class id, box side); boxes laid out left to right."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, objects in specs.items():
        label = np.zeros((SIZE, SIZE), np.uint8)
        x = 0
        for cls, side in objects:
            label[:side, x:x + side] = cls
            x += side
        label[-1, :] = 255
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "SegmentationClassAug" / f"{name}.png"), label)


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "voc"
    specs = {f"tr{i}": [(6 + i % 3, 50)] for i in range(6)}           # base classes 6-8 (fold 0)
    specs["tr_mixed"] = [(6, 50), (2, 12)]                               # shows a novel class: excluded
    specs["tr_small"] = [(7, 20)]                                        # 400 px < 2 x 32 x 32: excluded
    specs.update({f"va{i}": [(1 + i % 2, 50)] for i in range(6)})       # novel classes 1-2
    specs["va_small"] = [(3, 20)]
    _voc_tree(root, specs)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(n for n in specs if n.startswith("va")))
    return root


def test_pascal_folds():
    base, novel = pascal.fold_classes(2)
    assert novel == {11, 12, 13, 14, 15} and base == set(range(1, 21)) - novel
    with pytest.raises(DatasetError, match="0-3"):
        pascal.fold_classes(4)


def test_pascal_lists_generated_filtered_and_cached(voc):
    index = pascal.build_index(voc, fold=0, split="train", progress=False)
    assert set(index.by_class) == {6, 7, 8}
    names = {index.items[i].image.stem for ids in index.by_class.values() for i in ids}
    assert "tr_mixed" not in names and "tr_small" not in names and names == {f"tr{i}" for i in range(6)}
    cache = voc / "lists" / "pascal" / "fold0_train_classes.txt"
    assert cache.is_file() and len(cache.read_text().splitlines()) == 6
    again = pascal.build_index(voc, fold=0, split="train", progress=False)

    def stems(ix):
        return {c: sorted(ix.items[i].image.stem for i in ids) for c, ids in ix.by_class.items()}

    assert stems(again) == stems(index)
    test = pascal.build_index(voc, fold=0, split="test", progress=False)
    assert set(test.by_class) == {1, 2}  # class 3's only object is too small


def test_pascal_reads_bam_data_lists(voc):
    lists = voc / "lists" / "pascal"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("JPEGImages/va0.jpg SegmentationClassAug/va0.png\n"
                                   "JPEGImages/va2.jpg SegmentationClassAug/va2.png\n"
                                   "JPEGImages/va4.jpg SegmentationClassAug/va4.png\n")
    index = pascal.build_index(voc, fold=0, split="test", progress=False)
    assert {index.items[i].image.stem for i in index.by_class[1]} == {"va0", "va2", "va4"}


def test_pascal_episodes_are_seeded_and_binarized(voc):
    data = {"dataset": "pascal", "root": str(voc), "fold": 0, "size": 48, "shots": 2}
    a = build_dataset(data, "test", seed=3, episodes=5)
    b = build_dataset(data, "test", seed=3, episodes=5)
    for i in range(5):
        ea, eb = a[i], b[i]
        assert ea.class_id == eb.class_id and np.array_equal(ea.query, eb.query)
        assert set(np.unique(ea.query_label)) <= {0, 1, 255} and (ea.query_label == 1).any()
        assert (ea.query_label[-1] == 255).all()  # the ignore row stays ignored
    train = build_dataset({**data, "shots": 1}, "train", seed=3, episodes=4)
    e = train[0]
    assert e.query.shape == (48, 48, 3) and e.query_label.shape == (48, 48)
    assert e.class_id in (6, 7, 8)


def test_missing_root_and_too_few_images(tmp_path, voc):
    with pytest.raises(DatasetError, match="JPEGImages"):
        build_dataset({"dataset": "pascal", "root": str(tmp_path / "none"), "fold": 0, "size": 48, "shots": 1},
                      "train", seed=0)
    with pytest.raises(DatasetError, match="fewer than shots"):
        build_dataset({"dataset": "pascal", "root": str(voc), "fold": 0, "size": 48, "shots": 3}, "test", seed=0)


def test_unreadable_files_are_reported_not_fatal(voc):
    data = {"dataset": "pascal", "root": str(voc), "fold": 0, "size": 48, "shots": 1}
    ds = build_dataset(data, "test", seed=1, episodes=20)
    (voc / "JPEGImages" / "va0.jpg").write_bytes(b"broken")
    episodes = [ds[i] for i in range(20)]
    assert len(episodes) == 20 and "va0.jpg" in ds.error_summary()


def test_coco_partitions():
    base, novel = coco.fold_classes(1, "interleaved")
    assert sorted(novel)[:3] == [2, 6, 10] and len(novel) == 20 and not base & novel
    _, contiguous = coco.fold_classes(1, "contiguous")
    assert contiguous == set(range(21, 41))
    with pytest.raises(DatasetError, match="partition"):
        coco.fold_classes(0, "random")


def test_coco_from_instance_annotations(tmp_path):
    pytest.importorskip("pycocotools")
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    categories = [{"id": cid, "name": f"cat{cid}"} for cid in range(1, 91) if cid not in (12, 26, 29, 30, 45, 66,
                                                                                        68, 69, 71, 83)]
    assert len(categories) == 80
    images, annotations = [], []
    for i in range(4):
        name = f"COCO_val2014_{i:012d}.jpg"
        cv2.imwrite(str(root / "val2014" / name), np.full((SIZE, SIZE, 3), 100, np.uint8))
        images.append({"id": i, "file_name": name, "height": SIZE, "width": SIZE})
        # category id 2 is contiguous class 2 (novel in interleaved fold 1)
        annotations.append({"id": i, "image_id": i, "category_id": 2, "iscrowd": 0, "area": 2500,
                            "bbox": [0, 0, 50, 50], "segmentation": [[0, 0, 50, 0, 50, 50, 0, 50]]})
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    index = coco.build_index(root, fold=1, split="test", partition="interleaved", progress=False)
    assert set(index.by_class) == {2} and len(index.by_class[2]) == 4
    assert index.class_names[2] == "cat2"
    label = cv2.imread(str(index.items[0].label), cv2.IMREAD_GRAYSCALE)
    assert (label == 2).sum() >= 2500 and set(np.unique(label)) == {0, 2}
    with pytest.raises(DatasetError):  # contiguous fold 1 tests 21-40: none present
        coco.build_index(root, fold=1, split="test", partition="contiguous", progress=False).check_shots(1)


def test_folder_dataset(tmp_path):
    root = tmp_path / "mine"
    for cls in ("mug", "tool"):
        (root / cls / "images").mkdir(parents=True)
        (root / cls / "masks").mkdir()
        for i in range(3):
            cv2.imwrite(str(root / cls / "images" / f"{i}.jpg"), np.full((40, 50, 3), 80, np.uint8))
            mask = np.zeros((40, 50), np.uint8)
            mask[5:30, 5:30] = 7  # any non-zero value is the object
            cv2.imwrite(str(root / cls / "masks" / f"{i}.png"), mask)
    data = {"dataset": "folder", "root": str(root), "size": 33, "shots": 2, "train_classes": ["mug"],
            "test_classes": ["tool"]}
    e = build_dataset(data, "test", seed=0, episodes=2)[0]
    assert e.query.shape == (40, 50, 3) and set(np.unique(e.query_label)) == {0, 1}
    assert build_dataset(data, "train", seed=0, episodes=2)[0].query.shape == (33, 33, 3)
    (root / "tool" / "masks" / "2.png").unlink()
    with pytest.raises(DatasetError, match="no mask"):
        build_dataset(data, "test", seed=0)


def test_augmentation_keeps_ignore_labels_and_foreground():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    label = np.zeros((60, 80), np.uint8)
    label[20:40, 30:50] = 1
    label[:, -5:] = 255
    for seed in range(20):
        img, lab = augment(image, label, 57, np.random.default_rng(seed), (0.9, 1.1), (124.0, 116.0, 104.0))
        assert img.shape == (57, 57, 3) and lab.shape == (57, 57)
        assert set(np.unique(lab)) <= {0, 1, 255}
        assert (lab == 1).sum() > 0
    # padding: the label is padded with 255, the image with the mean colour
    img, lab = crop(image[:10, :10], label[:10, :10], 20, np.random.default_rng(0), (124.0, 116.0, 104.0))
    assert (lab == 255).sum() == 20 * 20 - 100 and (img[lab == 255] == [124, 116, 104]).all()
    # The crop is re-drawn until it keeps >= 85% of the foreground: one draw keeps this object in
    # about 30% of cases, 30 draws in all but ~2e-5 of them.
    big = np.zeros((200, 200), np.uint8)
    big[80:120, 80:120] = 1
    for seed in range(10):
        _, lab = crop(np.zeros((200, 200, 3), np.uint8), big, 100, np.random.default_rng(seed), (0, 0, 0))
        assert (lab == 1).sum() >= 0.85 * 1600
