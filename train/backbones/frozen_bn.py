"""BatchNorm frozen into an affine map, as the SCCAN backbone uses it."""

from __future__ import annotations

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """``y = x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))``.

    The statistics and affine parameters are buffers (the backbone is never trained), named as
    in ``nn.BatchNorm2d`` so that released checkpoints load unchanged. Input/output N x C x H x W.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # Checkpoints of ordinary BatchNorms carry a counter this frozen map has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def fold_into_conv(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
    """Fold ``bn`` into ``conv`` in place: weights scaled per output channel, bias = the shift.

    Exact in real arithmetic. For export: a separate multiply-add after each convolution stores
    the convolution's output in FP16 first, where large BN scales and shifts cancel badly.
    """
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.bias = nn.Parameter(bias.clone(), requires_grad=False)
