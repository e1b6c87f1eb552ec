"""Feature backbones: each turns normalised images into (mid, high) feature maps."""

from __future__ import annotations

import torch
from torch import nn

from .efficientnet_lite import EfficientNetLite0
from .frozen_bn import fold_into_conv
from .efficientnet_lite import MEAN as LITE_MEAN
from .efficientnet_lite import STD as LITE_STD
from .resnet import LAYERS as RESNET_LAYERS
from .resnet import DeepStemResNet

#: ImageNet mean/std in 0..255 RGB pixel units (the ResNet backbones).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

BACKBONES = ("resnet50", "resnet101", "efficientnet_lite0")


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) in 0..255 RGB pixel units that backbone ``name`` expects."""
    if name in RESNET_LAYERS:
        return IMAGENET_MEAN, IMAGENET_STD
    if name == "efficientnet_lite0":
        return LITE_MEAN, LITE_STD
    raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")


class FeatureBackbone(nn.Module):
    """Wraps a backbone body (checkpoint prefix ``backbone.body.``).

    ``forward(images)`` maps N x 3 x H x W normalised images to ``(mid, high)``: mid the
    concatenation of two middle stages (ResNet: layer2 + layer3, 1536 ch), high the last stage
    (ResNet: layer4, 2048 ch), at the same resolution (stride 8 for ResNets, 16 or 8 for Lite-0).
    """

    def __init__(self, name: str, width: int = 64, lite0_high_block: int | None = None,
                 lite0_output_stride: int = 16, lite0_mid_blocks: tuple[int, int] = (7, 10)):
        super().__init__()
        if name in RESNET_LAYERS:
            self.body: nn.Module = DeepStemResNet(RESNET_LAYERS[name], width)
            c2, c3, c4 = self.body.channels
            self.mid_channels, self.high_channels, self.stride = c2 + c3, c4, 8
        elif name == "efficientnet_lite0":
            self.body = EfficientNetLite0(output_stride=lite0_output_stride, high_block=lite0_high_block,
                                          mid_blocks=lite0_mid_blocks)
            self.mid_channels, self.high_channels = self.body.channels
            self.stride = lite0_output_stride
        else:
            raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
        self.name = name
        self.body.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, high = self.body(images)
        return torch.cat([a, b], dim=1), high

    def fp32_scopes(self) -> list[str]:
        """Module paths (under this backbone) whose exported nodes the FP16 plan keeps in FP32."""
        return [f"body.{m}" for m in getattr(self.body, "fp32_modules", ())]

    def fold_batchnorms(self) -> None:
        """Fold every frozen BatchNorm into its convolution, in place (for export: see
        :func:`~.frozen_bn.fold_into_conv`). The checkpoint names no longer apply afterwards."""
        for parent, conv_name, bn_name in self.body.conv_bn_pairs():
            fold_into_conv(getattr(parent, conv_name), getattr(parent, bn_name))
            setattr(parent, bn_name, nn.Identity())

    def train(self, mode: bool = True) -> "FeatureBackbone":
        # The backbone is frozen: it stays in eval mode whatever the rest of the model does.
        return super().train(False)


__all__ = ["BACKBONES", "FeatureBackbone", "EfficientNetLite0", "DeepStemResNet", "normalization"]
