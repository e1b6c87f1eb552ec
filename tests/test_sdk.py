"""The Segmenter on the ONNX Runtime backend: API, persistence, bad input, threads, parity."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import SMALL, randomize_bn, scene
from sccan.export.exporter import export_bundle
from sccan.sdk import (BadImageError, BadMaskError, BundleMismatchError, CorruptCacheError, EmptyMaskError,
                       SCCANError, Segmenter, UnknownClassError)
from sccan.sdk.preprocess import logits_to_original, normalize, resize_image, resize_label
from sccan.train.model import build_model

SIZE, SHOTS = 65, 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn(build_model("resnet50", **SMALL))
    bundle = export_bundle(model, tmp_path_factory.mktemp("sdk") / "bundle", size=SIZE, max_shots=SHOTS,
                           max_classes=2, check_episodes=1, progress=False).bundle
    return model, bundle


@pytest.fixture
def seg(exported):
    return Segmenter(exported[1])


def reference_probability(model, query_bgr, support_bgr, masks):
    """The PyTorch model through the reference pipeline (test-time resize, evaluation path)."""
    q, place = resize_image(query_bgr[..., ::-1], SIZE)
    s = [resize_image(img[..., ::-1], SIZE)[0] for img in support_bgr]
    m = [(resize_label((mk != 0).astype(np.uint8), SIZE) == 1).astype(np.float32) for mk in masks]
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(q, model.mean, model.std))[None],
                       torch.from_numpy(np.stack([normalize(x, model.mean, model.std) for x in s]))[None],
                       torch.from_numpy(np.stack(m))[None]).numpy()
    full = logits_to_original(logits, place)[0]
    e = np.exp(full - full.max(0))
    return e[1] / e.sum(0)


def test_probabilities_match_pytorch(exported, seg):
    model, _ = exported
    shots = [scene(1), scene(2, 64, 40)]  # shots of different sizes
    query, _ = scene(3, 45, 80)
    seg.add_class("thing", [s[0] for s in shots], [s[1] for s in shots])
    result = seg.segment(query)
    expected = reference_probability(model, query, [s[0] for s in shots], [s[1] for s in shots])
    assert result.probabilities["thing"].shape == (45, 80)
    np.testing.assert_allclose(result.probabilities["thing"], expected, atol=1e-3)
    assert set(result.timings) == {"preprocess", "backbone", "decode", "postprocess", "total"}


def test_multi_class_label_map_and_overlay(seg):
    a, b = scene(4), scene(5)
    seg.add_class("a", [a[0]], [a[1]])
    seg.add_class("b", [b[0], scene(6)[0]], [b[1], scene(6)[1]])
    seg.add_class("c", [scene(7)[0]], [scene(7)[1]])  # 3 classes > max_classes 2: decoded in chunks
    query = scene(8)[0]
    result = seg.segment(query, threshold=0.3)
    assert result.classes == ["a", "b", "c"]
    stacked = np.stack([result.probabilities[n] for n in result.classes])
    expected = np.where(stacked.max(0) > 0.3, stacked.argmax(0) + 1, 0)
    np.testing.assert_array_equal(result.label_map, expected)
    for i, n in enumerate(result.classes):
        np.testing.assert_array_equal(result.masks[n], result.probabilities[n] > 0.3)
    only_b = seg.segment(query, classes=["b"])
    np.testing.assert_allclose(only_b.probabilities["b"], result.probabilities["b"], atol=1e-5)
    out = result.overlay(query)
    assert out.shape == query.shape and out.dtype == np.uint8
    seg.remove_class("a")
    assert seg.classes == ["b", "c"]


def test_support_persistence_round_trip(seg, exported, tmp_path):
    img, mask = scene(9)
    seg.add_class("x", [img], [mask])
    query = scene(10)[0]
    before = seg.segment(query).probabilities["x"]
    path = seg.save_support(tmp_path / "support.npz")
    fresh = Segmenter(exported[1])
    assert fresh.load_support(path) == ["x"]
    np.testing.assert_array_equal(fresh.segment(query).probabilities["x"], before)
    data = path.read_bytes()
    (tmp_path / "corrupt.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptCacheError):
        fresh.load_support(tmp_path / "corrupt.npz")
    arrays = dict(np.load(path, allow_pickle=False))
    arrays["x/prototype"] = arrays["x/prototype"] + 1
    np.savez(tmp_path / "altered.npz", **arrays)
    with pytest.raises(CorruptCacheError, match="checksum"):
        fresh.load_support(tmp_path / "altered.npz")
    arrays = dict(np.load(path, allow_pickle=False))
    import json
    meta = json.loads(arrays["__meta__"].tobytes())
    meta["encoder_sha256"] = "0" * 64
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(BundleMismatchError, match="register the classes again"):
        fresh.load_support(tmp_path / "other.npz")
    assert fresh.classes == ["x"]  # still usable


def test_bad_input_gives_clear_errors_and_keeps_the_segmenter_usable(seg):
    img, mask = scene(11)
    with pytest.raises(UnknownClassError, match="add_class"):
        seg.segment(img)
    cases = [
        (BadImageError, "empty", lambda: seg.add_class("e", [np.zeros((0, 5, 3), np.uint8)], [np.ones((0, 5))])),
        (BadImageError, "NaN", lambda: seg.add_class("n", [np.full((20, 20, 3), np.nan, np.float32)], [np.ones((20, 20))])),
        (BadImageError, "shape", lambda: seg.add_class("c", [np.zeros((20, 20, 5), np.uint8)], [np.ones((20, 20))])),
        (BadImageError, "dtype", lambda: seg.add_class("d", [np.zeros((20, 20, 3), np.complex64)], [np.ones((20, 20))])),
        (BadMaskError, "but its image", lambda: seg.add_class("m", [img], [mask[:10]])),
        (EmptyMaskError, "no foreground", lambda: seg.add_class("z", [img], [np.zeros_like(mask)])),
        (BadImageError, "exceed", lambda: seg.add_class("k", [img] * (SHOTS + 1), [mask] * (SHOTS + 1))),
    ]
    for error, text, call in cases:
        with pytest.raises(error, match=text):
            call()
    thin = np.zeros((500, 500), np.uint8)
    thin[251, :] = 1  # one row of 500, not among those nearest-neighbour resizing to 64 samples
    with pytest.raises(EmptyMaskError, match="after resizing"):
        seg.add_class("thin", [np.zeros((500, 500, 3), np.uint8)], [thin])
    assert seg.classes == []
    seg.add_class("ok", [img], [mask])
    with pytest.raises(UnknownClassError, match="nope"):
        seg.segment(img, classes=["nope"])
    with pytest.raises(BadImageError):
        seg.segment(np.zeros((4, 4, 2), np.uint8))
    # grayscale and BGRA are converted; float 0..255 is accepted
    gray = seg.segment(img[..., 0])
    assert gray.label_map.shape == img.shape[:2]
    bgra = seg.segment(np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]))
    np.testing.assert_array_equal(bgra.probabilities["ok"], seg.segment(img).probabilities["ok"])
    np.testing.assert_allclose(seg.segment(img.astype(np.float32)).probabilities["ok"],
                               seg.segment(img).probabilities["ok"])
    assert issubclass(EmptyMaskError, SCCANError)


def test_bundle_problems_are_refused(exported, tmp_path):
    import shutil

    from sccan.sdk import BundleError

    copy = tmp_path / "b"
    shutil.copytree(exported[1], copy)
    (copy / "query_decoder.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="altered"):
        Segmenter(copy)
    with pytest.raises(BundleMismatchError, match="FP16 graphs are for TensorRT"):
        Segmenter(exported[1], backend="onnxruntime", precision="fp16")
    with pytest.raises(BundleMismatchError, match="TensorRT backend unavailable"):
        Segmenter(exported[1], backend="tensorrt")


def test_threads_give_the_same_results_as_one_thread(seg):
    for k in range(2):
        img, mask = scene(20 + k)
        seg.add_class(f"c{k}", [img], [mask])
    frames = [scene(40 + i)[0] for i in range(50)]
    expected = [seg.segment(f).label_map for f in frames]
    results: dict[tuple[int, int], np.ndarray] = {}

    def worker(t: int) -> None:
        for i, f in enumerate(frames):
            results[(t, i)] = seg.segment(f).label_map

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (t, i), got in results.items():
        np.testing.assert_array_equal(got, expected[i])
    clone = seg.clone()
    clone.remove_class("c0")
    assert seg.classes == ["c0", "c1"] and clone.classes == ["c1"]


def test_replacing_a_class_replaces_its_cached_features(exported, seg):
    """The decoder batches kept resident are rebuilt when a class is registered again."""
    first, second, query = scene(21), scene(22, 60, 40), scene(23)[0]

    def alone(shot):
        other = Segmenter(exported[1])
        other.add_class("thing", [shot[0]], [shot[1]])
        return other.segment(query).probabilities["thing"]

    seg.add_class("thing", [first[0]], [first[1]])
    seg.segment(query)  # builds and keeps the resident batch for ("thing",)
    seg.add_class("thing", [second[0]], [second[1]])
    got = seg.segment(query).probabilities["thing"]
    np.testing.assert_array_equal(got, alone(second))
    assert not np.allclose(got, alone(first))  # the two examples do give different answers
