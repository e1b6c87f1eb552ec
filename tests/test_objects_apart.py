"""Objects told apart: presence scores, the label map under presence, track mode (memory), and the
shipped real-photo model's use of its support (a planted support-blind model must fail)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import scene
from sccan.sdk import BadArgumentError, BadImageError, Segmenter, UnknownClassError
from sccan.sdk.presence import presence_scores

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
DAVIS_VAL = REALDATA / "davis2016-val-part"
PERSAM = REALDATA / "persam-examples" / "examples"
REAL_CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "weights" / "real_lite0.pt"


# -- presence ---------------------------------------------------------------------------------------


def test_presence_score_is_the_mean_of_the_top_share_of_pixel_probabilities():
    rng = np.random.default_rng(0)
    logits = (0.5 * rng.normal(size=(3, 2, 20, 20))).astype(np.float32)
    logits[:, 1] -= 2  # background everywhere, but for:
    logits[1, 1, :5, :5] += 8  # a confident block, inside the image
    logits[2, 1, 15:, 15:] += 8  # the same block, but on the padding (outside 12 x 14)
    scores = presence_scores(logits, 12, 14, top_fraction=0.1)
    for c in range(3):  # an independent reference: sort the probabilities of the image's pixels
        fg = logits[c, 1, :12, :14] - logits[c, 0, :12, :14]
        p = np.sort(1 / (1 + np.exp(-fg.astype(np.float64))).ravel())[::-1]
        assert scores[c] == pytest.approx(p[:int(np.ceil(0.1 * 12 * 14))].mean(), abs=1e-12)
    assert scores[1] > 0.95 and scores[2] < scores[1] - 0.2  # padding never counts
    with pytest.raises(ValueError):
        presence_scores(logits[:, 0], 12, 14)


@pytest.fixture(scope="module")
def bundle(small_export):
    return small_export[1]


def test_absent_class_gets_an_empty_mask_and_no_label_map_pixels(bundle):
    seg = Segmenter(bundle)
    a, b = scene(4), scene(5)
    seg.add_class("a", [a[0]], [a[1]])
    seg.add_class("b", [b[0]], [b[1]])
    frame = scene(9)[0]
    open_result = seg.segment(frame, presence_threshold=0.0)
    assert set(open_result.presence) == {"a", "b"}
    assert all(0.0 <= v <= 1.0 for v in open_result.presence.values())
    assert open_result.present("a") and open_result.present("b")
    # A threshold between the two classes' scores: the lower one is absent, the other keeps its pixels.
    low, high = sorted(open_result.presence, key=open_result.presence.get)
    cut = (open_result.presence[low] + open_result.presence[high]) / 2
    assert open_result.presence[high] - open_result.presence[low] > 1e-3, open_result.presence  # decisive model
    result = seg.segment(frame, presence_threshold=cut)
    assert not result.present(low) and result.present(high)
    assert not result.masks[low].any()
    assert not (result.label_map == result.classes.index(low) + 1).any()
    # The present class's pixels are those it had where it was the most probable, and the contested
    # ones the absent class won before now go to it.
    np.testing.assert_array_equal(result.masks[high], open_result.masks[high])
    assert (result.label_map == result.classes.index(high) + 1).sum() >= \
        (open_result.label_map == open_result.classes.index(high) + 1).sum()
    np.testing.assert_array_equal(result.probabilities[low], open_result.probabilities[low])
    # Everything judged absent: an all-background label map.
    none = seg.segment(frame, presence_threshold=1.0)
    assert not none.label_map.any() and not any(m.any() for m in none.masks.values())
    with pytest.raises(UnknownClassError):
        none.present("c")


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True])
def test_presence_threshold_outside_0_1_is_refused(bundle, bad):
    seg = Segmenter(bundle)
    seg.add_class("a", [scene(4)[0]], [scene(4)[1]])
    with pytest.raises(BadArgumentError):
        seg.segment(scene(9)[0], presence_threshold=bad)
    with pytest.raises(BadArgumentError):
        Segmenter(bundle, presence_threshold=bad)


def test_bundle_records_the_checkpoint_presence_threshold(one_shot_export, tmp_path):
    """The threshold travels checkpoint -> bundle manifest -> Segmenter default; a checkpoint never
    calibrated (the shipped real-photo model: its presence does not separate absent objects) has none."""
    from sccan.export.exporter import checkpoint_presence_threshold

    assert checkpoint_presence_threshold(REAL_CHECKPOINT) is None
    raw, out, bundle = one_shot_export  # the small model, slimmed with presence_threshold=0.25, exported
    assert checkpoint_presence_threshold(out) == 0.25
    assert Segmenter(bundle).presence_threshold == 0.25
    assert Segmenter(bundle, presence_threshold=0.1).presence_threshold == 0.1
    # a checkpoint without one: nothing in the manifest (the exporter writes the key only where
    # checkpoint_presence_threshold gives a value), and the Segmenter's default is 0
    assert checkpoint_presence_threshold(raw) is None
    import json
    import shutil

    from sccan.sdk.bundle import MANIFEST, write_manifest

    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    manifest = json.loads((plain / MANIFEST).read_text())
    assert manifest.pop("presence_threshold") == 0.25
    write_manifest(plain, manifest)
    assert Segmenter(plain).presence_threshold == 0.0


# -- track mode -------------------------------------------------------------------------------------


class CountingBackend:
    """Wraps a backend and counts the graph runs (the frame's backbone must run once)."""

    def __init__(self, backend):
        self.inner, self.runs = backend, []

    def run(self, graph, feeds, keep=(), outputs=None):
        self.runs.append(graph)
        return self.inner.run(graph, feeds, keep=keep, outputs=outputs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_track_mode_remembers_confident_frames_up_to_its_slots(bundle):
    seg = Segmenter(bundle, memory=2, memory_confidence=0.0, memory_every=1)
    image, mask = scene(4)
    seg.add_class("a", [image], [mask])
    registered = seg.support_features("a")
    seg.backend = CountingBackend(seg.backend)
    frames = [scene(20 + i)[0] for i in range(4)]
    seg.segment(frames[0], remember=True)
    assert seg.backend.runs == ["backbone", "query_decoder", "support_encoder"]  # no second backbone run
    assert seg.memory_size("a") == 1
    after = seg.support_features("a")
    assert after["shot_valid"].sum() == 2 and registered["shot_valid"].sum() == 1
    assert not np.array_equal(after["prototype"], registered["prototype"])
    for f in frames[1:]:
        seg.segment(f, remember=True)
    assert seg.memory_size("a") == 2  # never past its slots
    assert seg.support_features("a")["shot_valid"].sum() == 3
    # Without remember, nothing changes.
    before = seg.support_features("a")
    seg.segment(frames[0])
    np.testing.assert_array_equal(seg.support_features("a")["prototype"], before["prototype"])
    # The remembered support is what the registered shot plus the frames' own masks encode.
    seg.reset_memory()
    assert seg.memory_size("a") == 0
    np.testing.assert_allclose(seg.support_features("a")["prototype"], registered["prototype"], atol=1e-6)


def test_track_mode_remembered_support_equals_registering_the_frames(bundle):
    """A remembered frame is the same shot as registering that frame with its predicted mask (up to
    the mask's edge: memory takes the mask at the network's resolution, registration resizes the
    frame-sized mask back to it), and not another frame's."""
    seg = Segmenter(bundle, memory=1, memory_confidence=0.0, memory_every=1)
    image, mask = scene(4)
    seg.add_class("a", [image], [mask])
    frame = scene(30)[0]
    result = seg.segment(frame, remember=True)
    remembered = seg.support_features("a")
    twin, other = Segmenter(bundle), Segmenter(bundle)
    twin.add_class("a", [image, frame], [mask, result.masks["a"]])
    other.add_class("a", [image, scene(31)[0]], [mask, result.masks["a"]])
    # the frame's own backbone features (the prior's keys do not depend on the mask)
    np.testing.assert_allclose(remembered["prior_keys"], twin.support_features("a")["prior_keys"], atol=1e-6)
    assert np.abs(remembered["prior_keys"] - other.support_features("a")["prior_keys"]).max() > 1e-3
    # and its mask, up to the edge
    np.testing.assert_allclose(remembered["prototype"], twin.support_features("a")["prototype"], atol=2e-3)


def test_track_mode_low_confidence_frames_never_enter(bundle):
    seg = Segmenter(bundle, memory=2, memory_confidence=1.0, memory_every=1)
    seg.add_class("a", [scene(4)[0]], [scene(4)[1]])
    for i in range(3):
        seg.segment(scene(20 + i)[0], remember=True)
    assert seg.memory_size("a") == 0


def test_track_mode_bad_input_is_refused_and_changes_nothing(bundle):
    with pytest.raises(BadArgumentError):
        Segmenter(bundle, memory=3)  # the bundle has 3 shot slots, one is the registered example
    for bad in (-1, 1.5, True):
        with pytest.raises(BadArgumentError):
            Segmenter(bundle, memory=bad)
    with pytest.raises(BadArgumentError):
        Segmenter(bundle, memory=1, memory_confidence=float("nan"))
    with pytest.raises(BadArgumentError):
        Segmenter(bundle, memory=1, memory_every=0)
    plain = Segmenter(bundle)
    plain.add_class("a", [scene(4)[0]], [scene(4)[1]])
    with pytest.raises(BadArgumentError):
        plain.segment(scene(20)[0], remember=True)
    seg = Segmenter(bundle, memory=1, memory_confidence=0.0, memory_every=1)
    seg.add_class("a", [scene(4)[0]], [scene(4)[1]])
    seg.segment(scene(20)[0], remember=True)
    kept = seg.support_features("a")
    with pytest.raises(BadImageError, match="reset_memory"):
        seg.segment(scene(21, 40, 90)[0], remember=True)  # another size mid-track
    np.testing.assert_array_equal(seg.support_features("a")["prototype"], kept["prototype"])
    assert seg.memory_size("a") == 1
    seg.reset_memory()
    seg.segment(scene(21, 40, 90)[0], remember=True)  # a new track may have another size
    # Registering the class again starts its memory afresh.
    seg.add_class("a", [scene(4)[0]], [scene(4)[1]])
    assert seg.memory_size("a") == 0
    with pytest.raises(UnknownClassError):
        seg.memory_size("zzz")


def test_track_mode_remembers_every_nth_frame(bundle):
    seg = Segmenter(bundle, memory=2, memory_confidence=0.0, memory_every=3)
    seg.add_class("a", [scene(4)[0]], [scene(4)[1]])
    seg.backend = CountingBackend(seg.backend)
    for i in range(4):
        seg.segment(scene(20 + i)[0], remember=True)
    assert seg.backend.runs.count("support_encoder") == 2  # frames 1 and 4
    assert seg.backend.runs.count("backbone") == 4


# -- the shipped real-photo model follows its support -----------------------------------------------

needs_realdata = pytest.mark.skipif(not PERSAM.is_dir() or not DAVIS_VAL.is_dir(),
                                    reason="needs ../shared/realdata (PerSAM examples, DAVIS val part)")


def _rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[..., ::-1].copy()


def _mask(path: Path) -> np.ndarray:
    return (cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)


def _pairs() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, support image, support mask, query image, query truth): PerSAM objects (_00 -> _02) and
    DAVIS val sequences (first annotated frame -> last)."""
    out = []
    for name in ("duck_toy", "cat", "colorful_sneaker"):
        out.append((name, _rgb(PERSAM / f"{name}_00.jpg"), _mask(PERSAM / f"{name}_00.png"),
                    _rgb(PERSAM / f"{name}_02.jpg"), _mask(PERSAM / f"{name}_02.png")))
    for seq in ("car-roundabout", "blackswan", "horsejump-high"):
        frames = sorted((DAVIS_VAL / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        masks = sorted((DAVIS_VAL / "Annotations" / "480p" / seq).glob("*.png"))
        out.append((seq, _rgb(frames[0]), _mask(masks[0]), _rgb(frames[-1]), _mask(masks[-1])))
    return out


#: IoU of (model, size, query, support) already computed: the planted test reuses a third of them. The
#: model itself is in the key (held, so its identity is never another model's).
_IOUS: dict[tuple[object, int, int, int], float] = {}


def support_following(model, size: int, pairs, shuffle: bool = False) -> tuple[float, float]:
    """Mean IoU of each query with its own support and with the next pair's support (another
    object). ``shuffle`` plants the failure: every query gets another object's support in both."""
    from sccan.sdk.preprocess import frame_probability
    from sccan.train.data.episodes import Episode
    from sccan.train.evaluate import episode_tensors

    def iou(query_i: int, support_i: int) -> float:
        key = (model, size, query_i, support_i)
        if key not in _IOUS:
            _IOUS[key] = computed_iou(query_i, support_i)
        return _IOUS[key]

    def computed_iou(query_i: int, support_i: int) -> float:
        name, _, _, query, truth = pairs[query_i]
        _, s_img, s_mask, _, _ = pairs[support_i]
        q, s, m, place = episode_tensors(model, Episode(query, truth, [s_img], [s_mask], 1), size)
        with torch.no_grad():
            pred = frame_probability(model(q, s, m).numpy(), place)[0] > 0.5
        t = truth.astype(bool)
        return float((pred & t).sum() / max((pred | t).sum(), 1))

    n = len(pairs)
    right = [iou(i, (i + 1) % n if shuffle else i) for i in range(n)]
    cross = [iou(i, (i + 2) % n if shuffle else (i + 1) % n) for i in range(n)]
    return float(np.mean(right)), float(np.mean(cross))


@pytest.fixture(scope="module")
def real_model():
    from sccan.train.checkpoint import load_model

    return load_model(REAL_CHECKPOINT)


#: The gap the shipped model must keep between its own support and another object's (mean IoU over the
#: six objects), the issue's target for DAVIS (J with another video's support <= J - 0.20). Measured on
#: an AVX-512 host: 0.679 with the right support, 0.355 with another's (a gap of 0.32; the model
#: shipped before it: 0.653 and 0.501, a gap of 0.15, which fails this); queries given other objects'
#: supports in both places (the planted support-blind model) give no gap.
SUPPORT_GAP = 0.2


@needs_realdata
def test_the_real_model_follows_its_support(real_model):
    right, cross = support_following(real_model, 321, _pairs())
    print(f"real model, 6 objects: IoU {right:.3f} with the right support, {cross:.3f} with another's")
    assert right >= 0.5
    assert right - cross >= SUPPORT_GAP


@needs_realdata
def test_a_support_blind_model_fails_the_support_test(real_model):
    """The planted failure: queries given another object's support (what a model that ignores its
    support amounts to) must not pass the test above."""
    right, cross = support_following(real_model, 321, _pairs(), shuffle=True)
    assert not (right >= 0.5 and right - cross >= SUPPORT_GAP)


def test_bench_times_track_mode_beside_plain_frames(bundle):
    from sccan.sdk.bench import run_benchmark

    result = run_benchmark(bundle, shots=(1,), frames_sizes=((48, 64),), frames=4, warmup=1, baseline=False,
                           progress=False, memory=2, soak=12)
    case = result.cases[0]
    assert case.memory_total is not None and case.memory_ratio > 0
    assert "track mode" in result.table()
    with pytest.raises(BadArgumentError):
        run_benchmark(bundle, shots=(2,), frames=1, baseline=False, progress=False, memory=2)
