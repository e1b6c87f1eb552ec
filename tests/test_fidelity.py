"""The SDK against an independent implementation of the reference test-time pipeline, on a model
whose probabilities spread (the shipped synthetic demo model), on non-square frames.

The reference here is written without ``sccan.sdk.preprocess``: the PFENet resize by hand, OpenCV's
float32 linear resize of the RGB image, normalisation and the final align-corners resize in torch.
Each kind of preprocessing mistake (colour order, a flipped frame, a wrong mean) is shown to move
the probabilities by far more than the tolerance, so the comparison can fail.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sccan.sdk import Segmenter
from sccan.sdk.preprocess import frame_probability, placement, resize_bilinear_align_corners
from sccan.train.checkpoint import load_model
from sccan.train.config import load_config
from sccan.train.data.datasets import build_dataset

TOLERANCE = 1e-3  # the README's promise


@pytest.fixture(scope="module")
def demo(synthetic_export):
    from sccan.export.demo import DEMO_CHECKPOINT

    config = load_config("synthetic_lite0")
    size = config["data"]["size"]
    bundle = synthetic_export  # the shipped synthetic model at its 129 px (conftest: one export per run)
    assert size == 129
    episode = build_dataset(config["data"], "test", seed=11, episodes=1)[0]
    return load_model(DEMO_CHECKPOINT), Segmenter(bundle, backend="onnxruntime"), episode, size


def _reference_canvas(rgb: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(8, int(h * scale) // 8 * 8), max(8, int(w * scale) // 8 * 8)
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[:nh, :nw] = cv2.resize(rgb.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, nh, nw


def reference_probability(model, query_bgr, support_bgr, support_mask, size, mean=None):
    """Foreground probability of the PyTorch model through the reference pipeline."""
    mean_t = torch.tensor(model.mean if mean is None else mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(model.std, dtype=torch.float32).view(3, 1, 1)

    def tensor(bgr):
        canvas, _, _ = _reference_canvas(bgr[..., ::-1], size)
        return (torch.from_numpy(canvas).permute(2, 0, 1) - mean_t) / std_t

    _, nh, nw = _reference_canvas(support_bgr[..., ::-1], size)
    label = np.full((size, size), 255, np.uint8)
    label[:nh, :nw] = cv2.resize((support_mask != 0).astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
    with torch.no_grad():
        logits = model(tensor(query_bgr)[None], tensor(support_bgr)[None, None],
                       torch.from_numpy((label == 1).astype(np.float32))[None, None])
        h, w = query_bgr.shape[:2]
        side = max(h, w)
        full = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=True)[..., :h, :w]
        return torch.softmax(full, dim=1)[0, 1].numpy()


@pytest.mark.parametrize("query_size", [(97, 150), (150, 61)])  # landscape and portrait, (H, W)
def test_sdk_matches_the_reference_pipeline_on_non_square_frames(demo, query_size):
    model, seg, episode, size = demo
    support = cv2.resize(episode.support[0][..., ::-1], (140, 115), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(episode.support_labels[0].astype(np.uint8), (140, 115), interpolation=cv2.INTER_NEAREST)
    query = cv2.resize(episode.query[..., ::-1], query_size[::-1], interpolation=cv2.INTER_AREA)
    seg.add_class("obj", [support], [mask])
    got = seg.segment(query).probabilities["obj"]
    expected = reference_probability(model, query, support, mask, size)
    assert got.shape == query.shape[:2]
    assert expected.std() > 0.05, "the test model's probabilities must spread for the test to mean anything"
    assert np.abs(got - expected).max() <= TOLERANCE

    # Each mistake the pipeline could make moves the result by far more than the tolerance.
    wrong = {
        "RGB fed as BGR": seg.segment(query[..., ::-1].copy()).probabilities["obj"],
        "flipped frame": seg.segment(query[:, ::-1].copy()).probabilities["obj"],
        "zeroed normalisation mean": reference_probability(model, query, support, mask, size, mean=(0.0, 0.0, 0.0)),
    }
    for what, probability in wrong.items():
        assert np.abs(probability - expected).max() > 20 * TOLERANCE, what


def test_the_network_input_equals_the_reference_tensor_bit_for_bit(demo):
    """The SDK's network input (colour swap, resize, normalisation) equals the reference pipeline's
    torch tensor exactly, for a contiguous BGR frame, a strided view of one, a float32 frame and a
    BGRA frame; a frame with its colours swapped does not."""
    model, seg, episode, size = demo
    mean_t = torch.tensor(model.mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(model.std, dtype=torch.float32).view(3, 1, 1)
    bgr = np.ascontiguousarray(cv2.resize(episode.query[..., ::-1], (150, 97), interpolation=cv2.INTER_AREA))

    def reference(frame_bgr: np.ndarray) -> np.ndarray:
        canvas, _, _ = _reference_canvas(np.asarray(frame_bgr, np.float32)[..., ::-1], size)
        return ((torch.from_numpy(canvas).permute(2, 0, 1) - mean_t) / std_t).numpy()

    wide = np.zeros((97, 300, 3), np.uint8)
    wide[:, ::2] = bgr
    frames = {"uint8": bgr, "strided view": wide[:, ::2], "float32": bgr.astype(np.float32),
              "BGRA": np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])}
    for what, frame in frames.items():
        got, _ = seg._prepare(frame, "bgr", what)
        assert got.dtype == np.float32 and got.flags.c_contiguous, what
        np.testing.assert_array_equal(got, reference(bgr), err_msg=what)
    swapped, _ = seg._prepare(bgr, "rgb", "swapped")
    assert np.abs(swapped - reference(bgr)).max() > 0.1
    # Per-channel statistics (ResNet-50's ImageNet ones; the demo model's are equal across channels).
    from sccan.sdk.preprocess import normalize

    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    pixels = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for image in (pixels, pixels.astype(np.float32)):
        want = ((torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)
                 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).numpy()
        np.testing.assert_array_equal(normalize(image, mean, std), want)


@pytest.mark.parametrize("shape, size, expected", [
    ((375, 500), 473, (352, 472)),  # PASCAL's usual frame: 354.75 -> 354 -> 352, 473 -> 472
    ((500, 375), 473, (472, 352)),
    ((1, 1000), 473, (8, 472)),     # at least 8
    ((64, 64), 65, (64, 64)),
    ((97, 150), 129, (80, 128)),    # 83.4 -> 83 -> 80; 129 -> 128
])
def test_pfenet_resize_by_hand(shape, size, expected):
    p = placement(*shape, size)
    assert (p.height, p.width) == expected


@pytest.mark.parametrize("src, dst", [((7, 5), (13, 11)), ((17, 17), (97, 150)), ((1, 9), (4, 4)), ((33, 33), (8, 3))])
def test_align_corners_resize_matches_torch(src, dst):
    x = np.random.default_rng(0).standard_normal((2, *src)).astype(np.float32)
    ours = resize_bilinear_align_corners(x, *dst)
    theirs = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=True)[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("frame", [(480, 640), (1080, 1920), (1001, 37), (77, 333), (1, 1), (129, 129)])
def test_camera_resolution_postprocessing_equals_the_reference_path(frame):
    """Probabilities at the frame's size (one channel, crop only) against the reference path done
    the long way in torch (float64, so that torch's float32 sampling positions do not blur the
    comparison): both logit channels resized to the longer side's square, cropped, softmaxed."""
    size = 129
    g = torch.Generator().manual_seed(frame[0] * 7 + frame[1])
    logits = torch.randn(3, 2, size, size, generator=g) * 4
    place = placement(*frame, size)
    got = frame_probability(logits.numpy(), place)
    side = max(frame)
    full = F.interpolate(logits.double(), size=(side, side), mode="bilinear", align_corners=True)[..., :frame[0], :frame[1]]
    expected = torch.softmax(full, dim=1)[:, 1].numpy()
    assert got.shape == (3, *frame) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5


def test_plugin_variant_of_the_trained_model_equals_the_default_bundle(demo):
    """The shared export holds both decoders (--patch-align both): the plugin one computes what the
    standard one computes (the SDK runs it through the TensorRT stand-in in test_plugin_fallback)."""
    from test_export import plugin_variant_agrees

    model, seg, _, size = demo
    worst, differ, total = plugin_variant_agrees(model, seg.bundle.path, size, 2)
    print(f"plugin vs standard ops (trained synthetic Lite-0, {size} px): logits {worst:.2e} relative, "
          f"{differ} of {total} indices differ")
    assert differ == 0 and worst <= 1e-5
