"""The Segmenter on the ONNX Runtime backend: API, persistence, bad input, threads, parity."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import scene
from sccan.sdk import (BadArgumentError, BadImageError, BadMaskError, BundleMismatchError, CorruptCacheError, EmptyMaskError,
                       SCCANError, Segmenter, UnknownClassError)

SIZE, SHOTS = 65, 3


@pytest.fixture(scope="module")
def exported(small_export):
    return small_export


@pytest.fixture
def seg(exported):
    return Segmenter(exported[1])


#: The reference recipe's constants (sccan-reference.md), written here rather than read from the
#: model or the SDK: RGB order, ImageNet mean and std in 0..255 units.
REFERENCE_MEAN = np.array([0.485, 0.456, 0.406]) * 255
REFERENCE_STD = np.array([0.229, 0.224, 0.225]) * 255
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "persam-examples" / "examples"


def reference_probability(model, query_bgr, support_bgr, masks, size=SIZE):
    """The PyTorch model through the reference pipeline, computed independently of the SDK's
    preprocessing (numpy and OpenCV from the recipe in sccan-reference.md): RGB, the PFENet test-time
    resize (longer side to ``size``, both sides floored to a multiple of 8, top-left on a canvas of
    zeros, bilinear on float pixels), ``(x - mean) / std``; the logits resized with align corners to
    the square of the longer side, cropped, softmax."""
    def canvas(image, interpolation, fill):
        h, w = image.shape[:2]
        new_h, new_w = (max(8, int(n * size / max(h, w)) // 8 * 8) for n in (h, w))
        out = np.full((size, size, *image.shape[2:]), fill, np.float32)
        out[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation).reshape(
            new_h, new_w, *image.shape[2:])
        return out

    def image_tensor(bgr):
        rgb = canvas(bgr[:, :, [2, 1, 0]].astype(np.float32), cv2.INTER_LINEAR, 0)
        return torch.from_numpy(((rgb - REFERENCE_MEAN) / REFERENCE_STD).astype(np.float32).transpose(2, 0, 1))

    labels = [canvas((mk > 0).astype(np.uint8), cv2.INTER_NEAREST, 255) for mk in masks]
    with torch.no_grad():
        logits = model(image_tensor(query_bgr)[None], torch.stack([image_tensor(x) for x in support_bgr])[None],
                       torch.from_numpy(np.stack([(lb == 1).astype(np.float32) for lb in labels]))[None])
    side = max(query_bgr.shape[:2])
    full = torch.nn.functional.interpolate(logits, size=(side, side), mode="bilinear",
                                           align_corners=True)[0, :, :query_bgr.shape[0], :query_bgr.shape[1]]
    return torch.softmax(full, 0)[1].numpy()


def photo(name: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A real photo (BGR) and its 0/255 mask, shrunk to ``width`` pixels wide: colour that matters."""
    image = cv2.imread(str(PHOTOS / f"{name}.jpg"))
    mask = cv2.imread(str(PHOTOS / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    height = round(image.shape[0] * width / image.shape[1])
    return (cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA),
            cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST))


def test_probabilities_match_pytorch(exported, seg):
    """The SDK's probabilities equal the PyTorch model's through an independent reference pipeline,
    on a model whose output spreads (std > 0.1) and real colour photos: reversed mean/std or swapped
    colour order move them 10-100 x more than the tolerance (tests/test_mutants.py plants both)."""
    model, _ = exported
    shots = [photo("duck_toy_00", 70), photo("duck_toy_01", 40)]  # shots of different sizes
    query, _ = photo("duck_toy_02", 80)
    seg.add_class("thing", [s[0] for s in shots], [s[1] for s in shots])
    result = seg.segment(query)
    expected = reference_probability(model, query, [s[0] for s in shots], [s[1] for s in shots])
    assert result.probabilities["thing"].shape == query.shape[:2]
    assert expected.std() > 0.1  # decisive: a constant is far from it
    np.testing.assert_allclose(result.probabilities["thing"], expected, atol=5e-5)
    assert set(result.timings) == {"preprocess", "backbone", "decode", "postprocess", "total"}


def test_multi_class_label_map_and_overlay(seg):
    a, b = scene(4), scene(5)
    seg.add_class("a", [a[0]], [a[1]])
    seg.add_class("b", [b[0], scene(6)[0]], [b[1], scene(6)[1]])
    seg.add_class("c", [scene(7)[0]], [scene(7)[1]])  # 3 classes > max_classes 2: decoded in chunks
    query = scene(8)[0]
    result = seg.segment(query, threshold=0.6)
    assert result.classes == ["a", "b", "c"]
    stacked = np.stack([result.probabilities[n] for n in result.classes])
    expected = np.where(stacked.max(0) > 0.6, stacked.argmax(0) + 1, 0)
    np.testing.assert_array_equal(result.label_map, expected)
    for i, n in enumerate(result.classes):
        np.testing.assert_array_equal(result.masks[n], result.probabilities[n] > 0.6)
    only_b = seg.segment(query, classes=["b"])
    np.testing.assert_allclose(only_b.probabilities["b"], result.probabilities["b"], atol=1e-5)
    # the label map has background and the classes, and the overlay tints each class's pixels
    assert (result.label_map == 0).mean() > 0.1 and len(np.unique(result.label_map)) >= 3, np.unique(result.label_map)
    out = result.overlay(query)
    assert out.shape == query.shape and out.dtype == np.uint8
    inner = cv2.erode((result.label_map > 0).astype(np.uint8), np.ones((7, 7)))
    moved = np.abs(out.astype(int) - query.astype(int)).max(2)
    assert (moved[inner > 0] >= 10).mean() > 0.7, (moved[inner > 0] >= 10).mean()  # tinted
    far = cv2.dilate((result.label_map > 0).astype(np.uint8), np.ones((9, 9))) == 0
    assert far.sum() > 100 and (moved[far] == 0).mean() > 0.7  # background untouched (but for name boxes)
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
    # metadata altered where the arrays' checksum cannot see it: its own checks refuse it
    for key, value, message in (("classes", ["x", "x"], "distinct names"), ("classes", ["x", ""], "distinct names"),
                                ("classes", "x", "distinct names"), ("shots", {"x": 0}, "shot count"),
                                ("shots", {}, "shot count"), ("shots", {"x": "1"}, "shot count")):
        arrays = dict(np.load(path, allow_pickle=False))
        meta = json.loads(arrays["__meta__"].tobytes())
        meta[key] = value
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(tmp_path / "meta.npz", **arrays)
        with pytest.raises(CorruptCacheError, match=message):
            fresh.load_support(tmp_path / "meta.npz")
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
        (BadArgumentError, "exceed", lambda: seg.add_class("k", [img] * (SHOTS + 1), [mask] * (SHOTS + 1))),
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


def test_a_batch_of_frames_equals_frame_by_frame(seg):
    """``segment_batch`` (what a server's batcher calls): frames of different sizes, more of them than
    the backbone's image batch (two backbone runs), each result equal to ``segment``'s."""
    seg.add_class("a", [scene(4)[0]], [scene(4)[1]])
    seg.add_class("b", [scene(5)[0], scene(6)[0]], [scene(5)[1], scene(6)[1]])
    frames = [scene(40 + i, 40 + 7 * i, 70 - 5 * i)[0] for i in range(SHOTS + 1)]
    batch = seg.segment_batch(frames, threshold=0.6)
    assert len(batch) == len(frames) and batch[0].timings["frames"] == SHOTS and batch[-1].timings["frames"] == 1
    for frame, got in zip(frames, batch):
        want = seg.segment(frame, threshold=0.6)
        assert got.classes == want.classes and got.label_map.shape == frame.shape[:2]
        for name in want.classes:
            np.testing.assert_allclose(got.probabilities[name], want.probabilities[name], atol=1e-6)
        np.testing.assert_array_equal(got.label_map, want.label_map)
    assert not np.allclose(batch[0].probabilities["a"][:40, :60], batch[1].probabilities["a"][:40, :60], atol=1e-2)
    assert seg.segment_batch([]) == []


def test_rgb_colour_order_is_honoured_for_supports_and_frames(exported, seg):
    """``color="rgb"`` for a support and for a frame gives what the BGR call gives on the swapped
    image, and differs from reading the RGB image as BGR."""
    image, mask = photo("cat_00", 60)
    query = photo("cat_01", 70)[0]
    seg.add_class("cat", [image], [mask])
    want = seg.segment(query).probabilities["cat"]
    rgb = Segmenter(exported[1])
    rgb.add_class("cat", [np.ascontiguousarray(image[..., ::-1])], [mask], color="rgb")
    got = rgb.segment(np.ascontiguousarray(query[..., ::-1]), color="rgb").probabilities["cat"]
    np.testing.assert_allclose(got, want, atol=1e-6)
    wrong = rgb.segment(np.ascontiguousarray(query[..., ::-1])).probabilities["cat"]  # RGB read as BGR
    assert np.abs(wrong - want).max() > 1e-3


def test_saving_some_classes_writes_only_those(exported, seg, tmp_path):
    for i, name in enumerate(["a", "b", "c"]):
        seg.add_class(name, [scene(50 + i)[0]], [scene(50 + i)[1]])
    query = scene(53)[0]
    before = seg.segment(query, classes=["c", "a"])
    path = seg.save_support(tmp_path / "two.npz", classes=["c", "a"])
    fresh = Segmenter(exported[1])
    assert fresh.load_support(path) == ["c", "a"] and fresh.classes == ["c", "a"]
    after = fresh.segment(query)
    for name in ("a", "c"):
        np.testing.assert_array_equal(after.probabilities[name], before.probabilities[name])
    assert fresh.load_support(seg.save_support(tmp_path / "one.npz", classes="b")) == ["b"]
    with pytest.raises(UnknownClassError):
        seg.save_support(tmp_path / "bad.npz", classes=["a", "zzz"])
    assert not (tmp_path / "bad.npz").exists()


# -- every bad input: an SCCANError subclass that says what was expected, and nothing changed ------

def _support_file(seg, tmp_path, edit=None):
    """A support file of class "x" from ``seg``; ``edit(meta, arrays)`` may alter it."""
    import json

    img, mask = scene(9)
    seg.add_class("x", [img], [mask])
    path = seg.save_support(tmp_path / "good.npz")
    seg.remove_class("x")
    if edit is None:
        return path
    arrays = dict(np.load(path, allow_pickle=False))
    meta = json.loads(arrays.pop("__meta__").tobytes())
    meta = edit(meta, arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "edited.npz", **arrays)
    return tmp_path / "edited.npz"


def _drop_class_arrays(meta, arrays):
    for key in [k for k in arrays if k.startswith("x/")]:
        arrays["y/" + key[2:]] = arrays.pop(key)
    meta["classes"] = ["y", "x"]  # "y" is complete, "x" has no arrays: nothing may be added
    meta["shots"] = {"x": 1, "y": 1}
    from sccan.sdk.segmenter import _checksum

    meta["checksum"] = _checksum(arrays)
    return meta


BAD_SUPPORT_FILES = {
    "missing file": (lambda seg, tmp: tmp / "missing.npz", "MissingFileError", "does not exist"),
    "a directory": (lambda seg, tmp: tmp, "MissingFileError", "is a directory"),
    "a text file": (lambda seg, tmp: (tmp / "t.npz").write_text("hello") and tmp / "t.npz", "CorruptCacheError",
                    "not an SCCAN support file"),
    "a PNG file": (lambda seg, tmp: (tmp / "p.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)) and tmp / "p.png",
                   "CorruptCacheError", "not an SCCAN support file"),
    "metadata without shots": (lambda seg, tmp: _support_file(seg, tmp, lambda m, a: {k: v for k, v in m.items()
                                                                                       if k != "shots"}),
                               "CorruptCacheError", "'shots'"),
    "metadata as a list": (lambda seg, tmp: _support_file(seg, tmp, lambda m, a: [m]), "CorruptCacheError",
                           "no valid metadata"),
    "a class without arrays": (lambda seg, tmp: _support_file(seg, tmp, _drop_class_arrays), "CorruptCacheError",
                               "'x' is listed but its arrays are incomplete"),
    "another format version": (lambda seg, tmp: _support_file(seg, tmp, lambda m, a: {**m, "version": 2}),
                               "CorruptCacheError", "version 2"),
}


@pytest.mark.parametrize("case", list(BAD_SUPPORT_FILES))
def test_bad_support_files_change_nothing(seg, tmp_path, case):
    import sccan.sdk.errors as errors

    make, error, text = BAD_SUPPORT_FILES[case]
    path = make(seg, tmp_path)
    seg.add_class("kept", [scene(12)[0]], [scene(12)[1]])
    with pytest.raises(getattr(errors, error), match=text) as info:
        seg.load_support(path)
    assert "allow_pickle" not in str(info.value)
    assert seg.classes == ["kept"]  # nothing half-added
    if error == "MissingFileError":
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, SCCANError)


def _tiny_object():
    mask = np.zeros((4000, 4000), np.uint8)
    mask[2000, 2000] = 1
    return np.zeros((4000, 4000, 3), np.uint8), mask


BAD_CALLS = {
    "empty class name": (lambda seg, img, mask: seg.add_class("", [img], [mask]), "BadArgumentError", "class name"),
    "class name 123": (lambda seg, img, mask: seg.add_class(123, [img], [mask]), "BadArgumentError", "got 123"),
    "threshold 2.0": (lambda seg, img, mask: seg.segment(img, threshold=2.0), "BadArgumentError", r"\[0, 1\]"),
    "threshold NaN": (lambda seg, img, mask: seg.segment(img, threshold=float("nan")), "BadArgumentError", "nan"),
    "colour order xyz on grayscale": (lambda seg, img, mask: seg.segment(img[..., 0], color="xyz"),
                                      "BadArgumentError", "'xyz'"),
    "colour order xyz on add_class": (lambda seg, img, mask: seg.add_class("c", [img], [mask], color="xyz"),
                                      "BadArgumentError", "'bgr'"),
    "uint16 image": (lambda seg, img, mask: seg.segment(img.astype(np.uint16) * 257), "BadImageError", "/ 257"),
    "1-pixel object in 4000 x 4000": (lambda seg, img, mask: seg.add_class("t", *map(lambda a: [a], _tiny_object())),
                                      "EmptyMaskError", "crop the image around the object"),
    "save_support to a directory": (lambda seg, img, mask: seg.save_support(Path(__file__).parent),
                                    "BadArgumentError", "is a directory"),
    "mask of another size": (lambda seg, img, mask: seg.add_class("m", [img], [mask[:10]]), "BadMaskError",
                             "but its image"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_calls_raise_our_errors_and_change_nothing(seg, case):
    import sccan.sdk.errors as errors

    img, mask = scene(13)
    seg.add_class("kept", [img], [mask])
    before = seg.segment(img).probabilities["kept"]
    call, error, text = BAD_CALLS[case]
    with pytest.raises(getattr(errors, error), match=text) as info:
        call(seg, img, mask)
    assert isinstance(info.value, SCCANError)
    assert seg.classes == ["kept"]
    np.testing.assert_array_equal(seg.segment(img).probabilities["kept"], before)


def test_bad_constructor_arguments(exported):
    from sccan.sdk import BadArgumentError

    for kwargs, text in (({"backend": "cuda"}, "'cuda'"), ({"precision": "int3"}, "'int3'"),
                         ({"cuda_graph": True, "backend": "onnxruntime"}, "TensorRT")):
        with pytest.raises(BadArgumentError, match=text):
            Segmenter(exported[1], **kwargs)


def test_float_images_in_0_to_1_get_a_warning(seg):
    img, mask = scene(14)
    seg.add_class("w", [img], [mask])
    with pytest.warns(UserWarning, match="multiply by 255"):
        seg.segment(img.astype(np.float32) / 255.0)


MANIFEST_EDITS = {
    "input_size edited": lambda m: m.update(input_size=m["input_size"] + 8),
    "normalisation edited": lambda m: m["normalization"].update(mean=[0.0, 0.0, 0.0]),
    "a key deleted": lambda m: m.pop("max_classes"),
    "graph dropped from files": lambda m: m["files"].pop("query_decoder.onnx"),
}


@pytest.mark.parametrize("case", list(MANIFEST_EDITS))
def test_edited_manifests_are_refused(exported, tmp_path, case):
    import json
    import shutil

    from sccan.sdk import BundleError

    copy = tmp_path / "b"
    shutil.copytree(exported[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    MANIFEST_EDITS[case](manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    if case == "graph dropped from files":
        (copy / "query_decoder.onnx").write_bytes(b"corrupted")
    with pytest.raises(BundleError, match="edited after it was written"):
        Segmenter(copy)
    # Even a manifest re-stamped with a valid hash must still make sense.
    if case in ("a key deleted", "graph dropped from files"):
        from sccan.sdk.bundle import write_manifest

        write_manifest(copy, manifest)
        with pytest.raises(BundleError, match="max_classes|has no hash"):
            Segmenter(copy)


def test_bundles_are_readable_by_other_users(exported):
    import stat

    mask = __import__("os").umask(0)
    __import__("os").umask(mask)
    assert stat.S_IMODE(exported[1].stat().st_mode) == 0o777 & ~mask
    for f in exported[1].iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name


def test_a_class_decoded_in_the_second_chunk_equals_a_single_class_run(exported, seg):
    """max_classes is 2: with three classes, "c" is decoded in a second decoder run."""
    shots = {n: scene(30 + i) for i, n in enumerate("abc")}
    for n, (img, mask) in shots.items():
        seg.add_class(n, [img], [mask])
    query = scene(33, 70, 52)[0]
    together = seg.segment(query)
    alone = Segmenter(exported[1])
    alone.add_class("c", [shots["c"][0]], [shots["c"][1]])
    np.testing.assert_allclose(together.probabilities["c"], alone.segment(query).probabilities["c"], atol=1e-6)


# -- memory: freed support arrays go back to the system ---------------------------------------------

RELEASE_SCRIPT = """
import numpy as np
from sccan.sdk.bench import current_rss_mb
from sccan.sdk.memory import release_freed_memory
big = np.ones(24 << 20, np.uint8)
del big  # a freed 24 MB mapping: glibc now serves blocks up to 24 MB from its heap
blocks = [np.ones(4 << 20, np.uint8) for _ in range(40)]
before = current_rss_mb()
del blocks[1::2]  # 20 freed 4 MB holes between live blocks: not at the heap's top, so kept
freed = current_rss_mb()
released = release_freed_memory()
after = current_rss_mb()
print(before, freed, after, released)
"""


def test_freed_heap_pages_are_given_back():
    """glibc keeps freed multi-MB heap blocks resident once its mmap threshold has risen;
    ``release_freed_memory`` gives them back. Run alone, so the allocator's state is this test's."""
    import subprocess
    import sys

    from sccan.sdk.memory import _malloc_trim

    if _malloc_trim() is None:
        pytest.skip("no glibc malloc_trim here")
    out = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True, check=True)
    before, freed, after, released = out.stdout.split()
    before, freed, after = float(before), float(freed), float(after)
    assert before - freed < 10, out.stdout  # freeing alone gives nothing back: the behaviour we mend
    assert freed - after > 60 and released == "True", out.stdout  # 80 MB of holes


FRAMES_SCRIPT = """
import resource, numpy as np
from sccan.sdk.memory import reuse_freed_memory
made = reuse_freed_memory()
def frame():  # what a frame does to the heap: several multi-MB arrays live at once, then freed
    arrays = [np.ones(3 << 20, np.uint8) for _ in range(4)]
    del arrays
frame(); frame()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    frame()
print(made, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10)
"""


def test_frames_reuse_the_heap_pages_the_last_one_freed():
    """With glibc's default thresholds each such frame faults its pages in again (12 MB: about
    3000 faults); after ``reuse_freed_memory`` it reuses them. The opt-out leaves the defaults."""
    import os
    import subprocess
    import sys

    from sccan.sdk.memory import _libc

    if getattr(_libc(), "mallopt", None) is None:
        pytest.skip("no glibc mallopt here")
    runs = {}
    for name, extra in (("tuned", {}), ("opted out", {"SCCAN_MALLOC_DEFAULTS": "1"})):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
        out = subprocess.run([sys.executable, "-c", FRAMES_SCRIPT], capture_output=True, text=True, check=True,
                             env=env).stdout.split()
        runs[name] = (out[0], float(out[1]))
    assert runs["tuned"][0] == "True" and runs["tuned"][1] < 50, runs
    assert runs["opted out"][0] == "False" and runs["opted out"][1] > 2000, runs


def test_making_a_segmenter_tunes_the_heap(exported, monkeypatch):
    import sccan.sdk.segmenter as segmenter

    calls = []
    monkeypatch.setattr(segmenter, "reuse_freed_memory", lambda: calls.append(1) or True)
    Segmenter(exported[1])
    assert calls == [1]


def test_class_changes_give_freed_memory_back(exported, seg, monkeypatch, tmp_path):
    """Every call that drops support arrays (add, replace, remove, load) hands the freed pages back."""
    import sccan.sdk.segmenter as segmenter

    calls = []
    monkeypatch.setattr(segmenter, "release_freed_memory", lambda: calls.append(1) or True)
    shot = scene(31)
    seg.add_class("a", [shot[0]], [shot[1]])
    seg.add_class("a", [shot[0]], [shot[1]])
    path = seg.save_support(tmp_path / "a.npz")
    seg.remove_class("a")
    seg.load_support(path)
    assert len(calls) == 4


# -- threads: a frame's sessions do not keep spinning after their runs ---------------------------------

def _idle_cpu_after_frames(segmenter: Segmenter) -> float:
    """Median CPU seconds the process uses in 50 ms of sleep right after a frame."""
    import time

    query = scene(41)[0]
    segmenter.segment(query)
    idle = []
    for _ in range(5):
        segmenter.segment(query)
        start = time.process_time()
        time.sleep(0.05)
        idle.append(time.process_time() - start)
    return float(np.median(idle))


def test_the_sessions_threads_stop_spinning_when_a_frame_ends(exported, monkeypatch):
    """ONNX Runtime's intra-op threads spin after a run, waiting for more work, unless the session
    says otherwise. A frame runs two sessions back to back, so the first one's spinning threads took
    cores from the second (Lite-0 INT8 frame, 2 cores: 106 ms, 64-81 ms without). After a frame the
    process must be idle; with spinning planted back on, the same measurement sees the spin."""
    import sccan.sdk.patch_align_op as patch_align_op

    shot = scene(40)
    ours = Segmenter(exported[1], backend="onnxruntime", threads=2)
    ours.add_class("a", [shot[0]], [shot[1]])
    quiet = _idle_cpu_after_frames(ours)
    plain = patch_align_op.session_options

    def spinning(threads=None):
        options = plain(threads)
        options.add_session_config_entry("session.force_spinning_stop", "0")
        return options

    monkeypatch.setattr(patch_align_op, "session_options", spinning)
    planted = Segmenter(exported[1], backend="onnxruntime", threads=2)
    planted.add_class("a", [shot[0]], [shot[1]])
    spun = _idle_cpu_after_frames(planted)
    assert quiet < 0.005, f"{quiet * 1000:.1f} ms of CPU in 50 ms after a frame"
    assert spun > 0.01, f"the planted spin used only {spun * 1000:.1f} ms of CPU: the measurement cannot tell"


def test_compare_bundles_times_both_bundles_alternately(exported, tmp_path):
    """benchmarks/compare_bundles.py (issue 16's Lite-0 against ResNet-50 figure): both bundles
    registered and timed in one process, each median from its own frames."""
    import importlib.util
    import shutil

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_bundles.py"
    spec = importlib.util.spec_from_file_location("compare_bundles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    copy = tmp_path / "copy"
    shutil.copytree(exported[1], copy)
    medians = module.compare(str(exported[1]), str(copy), None, rounds=2, other_per_round=2, frame_size=(48, 64),
                             shots=2, threads=1, progress=False)
    assert set(medians) == {str(exported[1]), str(copy)} and all(m > 0 for m in medians.values())


def test_classes_are_stacked_to_the_most_shots_any_has():
    """A batch of classes is cut to the most real shots any of them has (padding slots only cost
    time); one class alone is its own arrays, cut, without a copy."""
    from sccan.sdk.schema import cut_to_shots, real_shots, stack_classes

    def part(shots: int, value: float) -> dict[str, np.ndarray]:
        valid = np.zeros((1, 5), np.float32)
        valid[0, :shots] = 1
        return {"prototype": np.full((1, 4), value, np.float32), "shot_valid": valid,
                "prior_keys": np.full((1, 3, 5, 2), value, np.float32), "prior_mask": np.full((1, 5, 2), value, np.float32)}

    one, three = part(1, 1.0), part(3, 2.0)
    assert (real_shots(one), real_shots(three)) == (1, 3)
    batch = stack_classes([one, three])
    assert batch["prior_keys"].shape == (2, 3, 3, 2) and batch["prior_mask"].shape == (2, 3, 2)
    assert batch["shot_valid"].tolist() == [[1, 0, 0], [1, 1, 1]] and batch["prototype"].shape == (2, 4)
    assert (batch["prior_keys"][1] == 2).all() and (batch["prior_keys"][0] == 1).all()
    alone = stack_classes([three])
    assert alone["prior_keys"].shape == (1, 3, 3, 2)
    assert all(np.shares_memory(alone[k], three[k]) for k in three)
    assert cut_to_shots(three, 5)["prior_keys"].shape == (1, 3, 5, 2)
