"""The SDK's input checks at their edges: what cosmic-ray's run over ``sdk/images.py`` and
``sdk/preprocess.py`` found no test for (a float image out of range on one side only, the 0..1
warning's bound, a NaN in a float mask, the cached resize taps being writable)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sccan.sdk.errors import BadImageError, BadMaskError, UnknownClassError
from sccan.sdk.images import as_mask, as_rgb
from sccan.sdk.preprocess import _align_corners_taps


@pytest.mark.parametrize("low,high", [(-1.0, 200.0), (0.0, 256.0), (-3.0, 300.0)])
def test_a_float_image_out_of_range_on_either_side_is_refused(low, high):
    image = np.full((4, 5, 3), 100.0, np.float32)
    image[0, 0, 0], image[1, 1, 1] = low, high
    with pytest.raises(BadImageError, match=f"within 0..255, got {low:g}..{high:g}"):
        as_rgb(image)


def test_a_float_image_within_range_passes_unchanged():
    image = np.linspace(0, 255, 4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    np.testing.assert_array_equal(as_rgb(image, "rgb"), image)


@pytest.mark.parametrize("high,warns", [(1.0, True), (0.5, True), (1.5, False), (2.0, False), (255.0, False)])
def test_the_0_to_1_warning_is_for_images_that_look_scaled_to_one(high, warns):
    image = np.zeros((4, 5, 3), np.float32)
    image[0, 0] = high
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        as_rgb(image)
    assert any("0..255 scale" in str(w.message) for w in caught) == warns, [str(w.message) for w in caught]


def test_an_empty_image_is_refused():
    for shape in ((0, 5, 3), (5, 0, 3), (0,)):
        with pytest.raises(BadImageError, match="empty"):
            as_rgb(np.zeros(shape, np.uint8))


def test_integer_images_within_0_to_255_are_taken_and_others_refused():
    image = np.arange(4 * 5 * 3, dtype=np.int32).reshape(4, 5, 3) * 4
    out = as_rgb(image, "rgb")
    assert out.dtype == np.uint8 and (out == image).all()
    assert as_rgb(np.ones((4, 5), bool)).max() == 1  # a boolean picture: 0 and 1
    with pytest.raises(BadImageError, match="16-bit image"):
        as_rgb(np.full((4, 5, 3), 1000, np.uint16))


def test_a_mask_with_a_channel_axis_of_one_is_taken():
    mask = np.zeros((4, 5, 1), np.uint8)
    mask[1:3, 1:4] = 255
    np.testing.assert_array_equal(as_mask(mask, (4, 5)), (mask[..., 0] > 0).astype(np.uint8))
    with pytest.raises(BadMaskError, match="H x W"):
        as_mask(np.zeros((4, 5, 2), np.uint8), (4, 5))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_mask_with_nan_or_inf_is_refused(bad):
    mask = np.zeros((4, 5), np.float32)
    mask[1:3, 1:3] = 1.0
    mask[0, 0] = bad
    with pytest.raises(BadMaskError, match="NaN or infinite"):
        as_mask(mask, (4, 5))


def test_the_cached_resize_taps_cannot_be_changed_by_a_caller():
    """They are shared between every frame of a size (lru_cache): writing to one would change the
    next frame's resize."""
    for array in _align_corners_taps(17, 40, 40):
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0] = 1


# -- Result's pictures, on a hand-made label map (no model) -------------------------------------------


def _result(classes: list[str], label_map: np.ndarray):
    from sccan.sdk.segmenter import Result

    masks = {name: label_map == i + 1 for i, name in enumerate(classes)}
    return Result(probabilities={n: m.astype(np.float32) for n, m in masks.items()}, masks=masks,
                  label_map=label_map, classes=classes)


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 200, (60, 80, 3), dtype=np.uint8)


def test_label_colors_paint_each_class_in_its_palette_colour():
    from sccan.sdk.segmenter import PALETTE

    label_map = np.zeros((60, 80), np.int32)
    label_map[5:20, 5:30], label_map[30:50, 40:70] = 1, 2
    picture = _result(["a", "b"], label_map).label_colors()
    assert picture.shape == (60, 80, 3) and picture.dtype == np.uint8
    assert (picture[label_map == 0] == 0).all()
    assert (picture[label_map == 1] == PALETTE[0]).all() and (picture[label_map == 2] == PALETTE[1]).all()


def test_an_absent_class_does_not_stop_the_next_from_being_drawn():
    """The first class has no pixel in this frame; the second is tinted all the same."""
    label_map = np.zeros((60, 80), np.int32)
    label_map[20:45, 20:60] = 2
    frame = _frame()
    out = _result(["absent", "present"], label_map).overlay(frame)
    inner = np.zeros_like(label_map, bool)
    inner[25:40, 25:55] = True
    assert (np.abs(out.astype(int) - frame.astype(int)).max(axis=2)[inner] > 20).mean() > 0.95


def test_the_overlay_in_rgb_is_the_bgr_overlay_with_channels_swapped():
    """Each class keeps its colour whichever order the frame comes in."""
    label_map = np.zeros((60, 80), np.int32)
    label_map[10:30, 10:40], label_map[35:55, 45:75] = 1, 2
    result = _result(["a", "b"], label_map)
    frame = _frame()
    bgr = result.overlay(frame)
    rgb = result.overlay(np.ascontiguousarray(frame[..., ::-1]), color="rgb")
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    # and the colour is the palette's (BGR in a BGR frame): half frame, half class colour inside
    from sccan.sdk.segmenter import PALETTE

    want = (0.5 * frame[20, 20].astype(np.float32) + 0.5 * np.array(PALETTE[0], np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(bgr[20, 20], want)


def test_presence_of_a_class_not_in_the_result_is_an_error():
    result = _result(["a"], np.ones((4, 5), np.int32))
    result.presence, result.presence_threshold = {"a": 0.7}, 0.5
    assert result.present("a")
    with pytest.raises(UnknownClassError, match="no class 'b'"):
        result.present("b")


@pytest.mark.parametrize("height,width", [(2000, 10), (10, 2000), (321, 321), (480, 854)])
def test_the_resize_keeps_both_sides_multiples_of_8_and_at_least_8(height, width):
    """PFENet's test-time resize, by its definition: the longer side to the input size, both sides
    floored to a multiple of 8, never under 8 (a very thin frame keeps an 8-pixel side)."""
    from sccan.sdk.preprocess import placement

    p = placement(height, width, 321)
    scale = 321 / max(height, width)
    assert (p.height, p.width) == (max(8, int(height * scale) // 8 * 8), max(8, int(width * scale) // 8 * 8))
    assert p.height % 8 == 0 and p.width % 8 == 0 and min(p.height, p.width) >= 8
