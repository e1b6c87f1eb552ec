"""Deep-stem dilated ResNet-50/101, the SCCAN backbone (output stride 8).

Module names follow the released checkpoints (``conv1..bn3`` stem, ``layer1..layer4``,
``downsample.0/1``), so ``backbone.body.*`` keys load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .frozen_bn import FrozenBatchNorm2d

LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1, expansion 4, stride on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DeepStemResNet(nn.Module):
    """The ResNet body. ``width`` scales every layer (64 = the paper; smaller widths are for
    fast tests).

    ``forward(x)`` takes N x 3 x H x W and returns (layer2, layer3, layer4), each at stride 8:
    N x 8w x h x w, N x 16w x h x w, N x 32w x h x w with h = w = 60 at 473 x 473.
    """

    def __init__(self, layers: tuple[int, int, int, int], width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False)
        self.bn1 = FrozenBatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn3 = FrozenBatchNorm2d(2 * w)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes, self._dilation = 2 * w, 1
        self.layer1 = self._make_layer(w, layers[0])
        self.layer2 = self._make_layer(2 * w, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * w, layers[2], dilate=2)
        self.layer4 = self._make_layer(8 * w, layers[3], dilate=4)
        self.channels = (8 * w, 16 * w, 32 * w)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: int = 1) -> nn.Sequential:
        # A dilated layer keeps stride 1; its first block still uses the previous dilation.
        previous, self._dilation = self._dilation, (dilate if dilate > 1 else self._dilation)
        downsample = None
        if stride != 1 or self._inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * 4, 1, stride=stride, bias=False),
                FrozenBatchNorm2d(planes * 4),
            )
        mods = [Bottleneck(self._inplanes, planes, stride, previous, downsample)]
        self._inplanes = planes * 4
        mods += [Bottleneck(self._inplanes, planes, 1, self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(parent, conv name, BatchNorm name) of every convolution followed by a BatchNorm."""
        pairs = [(self, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        return pairs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.layer1(self.maxpool(x))
        l2 = self.layer2(x)
        l3 = self.layer3(l2)
        return l2, l3, self.layer4(l3)
