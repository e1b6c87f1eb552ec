"""The edge backbone: the shipped ImageNet weights, their normalisation, and the edge config's cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import episode
from sccan.train.backbones import EfficientNetLite0, normalization
from sccan.train.model import build_model

skimage_data = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def classifier():
    net = EfficientNetLite0(output_stride=32, num_classes=1000)
    net.load_pretrained()
    return net.eval()


@pytest.mark.parametrize("image, classes", [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {967, 968, 504})])
def test_pretrained_weights_recognise_real_photos(classifier, image, classes):
    rgb = getattr(skimage_data, image)()
    mean, std = normalization("efficientnet_lite0")
    assert mean == (127.0,) * 3 and std == (128.0,) * 3  # what TF-trained Lite weights expect
    x = (cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) - mean) / std
    logits = classifier.classify(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None])
    top = int(logits.argmax())
    assert top in classes, f"{image}: top-1 ImageNet class {top}"
    assert float(logits.softmax(-1)[0, top]) > 0.5


def test_edge_model_runs_with_pretrained_backbone():
    model = build_model("efficientnet_lite0", pretrained_backbone=True)
    assert model.backbone.stride == 16 and model.config.grid == 32
    q, s, m = episode(k=2, size=129)
    logits = model(q, s, m)
    assert logits.shape == (1, 2, 129, 129) and torch.isfinite(logits).all()
    torch.testing.assert_close(model.decode_query(q, model.encode_support(s, m)), logits)


def test_stride16_features_at_473():
    net = EfficientNetLite0(output_stride=16).eval()
    a, b, head = net(torch.zeros(1, 3, 473, 473))
    assert a.shape == (1, 80, 30, 30) and b.shape == (1, 112, 30, 30) and head.shape == (1, 1280, 30, 30)


def test_stride8_and_chosen_mid_blocks(classifier):
    """Output stride 8 (the synthetic config's): later strides become dilation with the same weights;
    the mid blocks are chosen, and blocks of different strides are refused."""
    net = EfficientNetLite0(output_stride=8, num_classes=1000, high_block=10, mid_blocks=(4, 10))
    net.load_state_dict(classifier.state_dict())
    mid_a, mid_b, high = net.eval()(torch.randn(1, 3, 129, 129))
    assert mid_a.shape == (1, 40, 17, 17) and mid_b.shape == (1, 112, 17, 17) and high.shape == (1, 112, 17, 17)
    assert net.channels == (152, 112)
    with pytest.raises(ValueError, match="same stride"):
        EfficientNetLite0(output_stride=16, mid_blocks=(4, 10))  # stride 8 and 16
    with pytest.raises(ValueError, match="output_stride"):
        EfficientNetLite0(output_stride=4)
