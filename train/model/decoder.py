"""The ASPP decoder head (``ASPP_meta``, ``res1_meta``, ``res2_meta``, ``cls_meta``)."""

from __future__ import annotations

import torch
from torch import nn


class ASPP(nn.Module):
    """Five branches on D channels: global average + 1x1, 1x1, three dilated 3x3; concat 5D.

    ``forward(x)``: B x D x H x W -> B x 5D x H x W. The global branch is a mean over H, W
    (a ReduceMean, never a pooling with a runtime-shaped kernel) broadcast back.
    """

    def __init__(self, dim: int, dilations: tuple[int, int, int]):
        super().__init__()

        def branch(kernel: int, dilation: int = 1) -> nn.Sequential:
            pad = dilation if kernel == 3 else 0
            return nn.Sequential(nn.Conv2d(dim, dim, kernel, padding=pad, dilation=dilation), nn.ReLU())

        self.layer6_0 = branch(1)
        self.layer6_1 = branch(1)
        self.layer6_2 = branch(3, dilations[0])
        self.layer6_3 = branch(3, dilations[1])
        self.layer6_4 = branch(3, dilations[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.layer6_0(x.mean(dim=(2, 3), keepdim=True)).expand_as(x)
        return torch.cat([pooled, self.layer6_1(x), self.layer6_2(x), self.layer6_3(x),
                          self.layer6_4(x)], dim=1)


def decode(aspp: ASPP, res1: nn.Module, res2: nn.Module, cls: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ASPP -> res1 -> res2 (residual) -> cls: B x D x G x G -> B x 2 x G x G logits."""
    x = res1(aspp(x))
    x = res2(x) + x
    return cls(x)
