"""Masks from a box or clicks (OpenCV's GrabCut), and registering a class from them."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import scene
from sccan.sdk import BadArgumentError, EmptyMaskError, Segmenter
from sccan.sdk.prompts import mask_from_prompt


def photo(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured background and a differently coloured disc (BGR), and the disc's mask."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(90, 25, (120, 160, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:120, :160]
    disc = (yy - 60) ** 2 + (xx - 90) ** 2 <= 30 ** 2
    image[disc] = np.clip(rng.normal((40, 60, 220), 15, (int(disc.sum()), 3)), 0, 255).astype(np.uint8)
    return image, disc.astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.astype(bool) & b.astype(bool)).sum() / (a.astype(bool) | b.astype(bool)).sum())


def test_a_box_or_a_click_finds_the_object():
    image, truth = photo()
    box = mask_from_prompt(image, box=(55, 25, 125, 95))
    click = mask_from_prompt(image, points=[(90, 60)])
    both = mask_from_prompt(image, box=(55, 25, 125, 95), points=[(90, 60)], negative_points=[(20, 20)])
    for mask in (box, click, both):
        assert mask.shape == truth.shape and mask.dtype == np.uint8
        assert iou(mask, truth) > 0.85, iou(mask, truth)
    # the box's own rectangle (what a prompt without segmentation would give) is far worse
    rectangle = np.zeros_like(truth)
    rectangle[25:95, 55:125] = 1
    assert iou(rectangle, truth) < iou(box, truth) - 0.1


@pytest.mark.parametrize("prompt, text", [
    ({"box": (10, 10, 200, 50)}, "outside"),
    ({"box": (-1, 10, 50, 50)}, "outside"),
    ({"box": (50, 50, 50, 80)}, "no area"),
    ({"box": (80, 60, 20, 10)}, "reversed"),
    ({"box": (10, float("nan"), 50, 50)}, "finite"),
    ({"box": (10, 10, 50)}, "(x0, y0, x1, y1)"),
    ({"points": [(170, 10)]}, "outside"),
    ({"points": [(10, -3)]}, "outside"),
    ({"negative_points": [(20, 20)]}, "only negative"),
    ({}, "a box or at least one positive point"),
])
def test_bad_prompts_are_refused(prompt, text):
    image, _ = photo()
    with pytest.raises(BadArgumentError, match=text.replace("(", r"\(").replace(")", r"\)")):
        mask_from_prompt(image, **prompt)


def test_a_box_grabcut_cannot_separate_gives_its_inscribed_ellipse():
    """A box over texture no different from its surroundings: GrabCut keeps (almost) nothing, and the
    mask is the ellipse inscribed in the box (drawn here by OpenCV, independently), clicks applied."""
    import cv2

    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(100, 30, (120, 160, 3)), 0, 255).astype(np.uint8)
    box = (40, 30, 120, 90)
    ellipse = np.zeros((120, 160), np.uint8)
    cv2.ellipse(ellipse, (79, 59), (40, 30), 0, 0, 360, 1, -1)
    mask = mask_from_prompt(image, box=box)
    assert iou(mask, ellipse) > 0.95, iou(mask, ellipse)
    assert not mask[:30].any() and not mask[:, :40].any() and not mask[90:].any() and not mask[:, 120:].any()
    # a negative click inside takes its disc away; the rest stays
    carved = mask_from_prompt(image, box=box, negative_points=[(79, 59)])
    assert carved[59, 79] == 0 and carved.sum() < mask.sum() and iou(carved, ellipse) > 0.9


def test_a_prompt_that_yields_nothing_is_an_empty_mask_error():
    flat = np.full((60, 80, 3), 128, np.uint8)
    with pytest.raises(EmptyMaskError):
        mask_from_prompt(flat, box=(10, 10, 40, 40))


@pytest.fixture(scope="module")
def bundle(small_export):
    return small_export[1]


def test_add_class_from_a_box_equals_add_class_from_its_mask(bundle):
    image, _ = photo()
    by_box, by_mask = Segmenter(bundle), Segmenter(bundle)
    shown = by_box.mask_from_prompt(image, box=(55, 25, 125, 95))
    by_box.add_class("disc", [image], boxes=[(55, 25, 125, 95)])
    by_mask.add_class("disc", [image], [shown])
    np.testing.assert_array_equal(by_box.support_features("disc")["prototype"],
                                  by_mask.support_features("disc")["prototype"])
    rgb = Segmenter(bundle)
    rgb.add_class("disc", [image[..., ::-1]], boxes=[(55, 25, 125, 95)], color="rgb")
    np.testing.assert_array_equal(rgb.support_features("disc")["prototype"], by_mask.support_features("disc")["prototype"])


def test_bad_prompts_through_add_class_change_nothing(bundle):
    seg = Segmenter(bundle)
    image, mask = scene(1)
    seg.add_class("kept", [image], [mask])
    kept = seg.support_features("kept")["prototype"].copy()
    disc, _ = photo()
    for kwargs, error in (({"masks": [mask], "boxes": [(1, 1, 20, 20)]}, "not both"),
                          ({}, "a mask, a box or points"),
                          ({"boxes": [(1, 1, 20, 20), (1, 1, 5, 5)]}, "1 images but 2 boxes"),
                          ({"boxes": [(50, 50, 10, 10)]}, "shot 0"),
                          ({"points": [[(500, 5)]]}, "outside")):
        with pytest.raises(BadArgumentError, match=error):
            seg.add_class("kept", [disc], **kwargs)
    with pytest.raises(EmptyMaskError):
        seg.add_class("kept", [np.full((60, 80, 3), 128, np.uint8)], boxes=[(10, 10, 40, 40)])
    assert seg.classes == ["kept"]
    np.testing.assert_array_equal(seg.support_features("kept")["prototype"], kept)


def test_sccan_segment_takes_a_box_or_clicks_for_a_support(bundle, tmp_path):
    import subprocess

    import cv2

    image, _ = photo()
    cv2.imwrite(str(tmp_path / "disc.png"), image)
    for spec in ("box=55,25,125,95", "points=90,60;neg=10,10", "box=55,25,125,95:points=90,60"):
        out = subprocess.run(["sccan", "segment", "--bundle", str(bundle), "--class", "disc", "--support",
                              f"{tmp_path / 'disc.png'}:{spec}", "--input", str(tmp_path / "disc.png"), "--output",
                              str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "classes ['disc']" in out.stdout, (spec, out.stderr[-1000:])
    for spec, text in (("box=55,25", "(x0, y0, x1, y1)"), ("box=a,b,c,d", "numbers"), ("colour=red", "mask")):
        out = subprocess.run(["sccan", "segment", "--bundle", str(bundle), "--class", "disc", "--support",
                              f"{tmp_path / 'disc.png'}:{spec}", "--input", str(tmp_path / "disc.png"), "--output",
                              str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (spec, out.stderr)
        assert not (tmp_path / "bad").exists()
