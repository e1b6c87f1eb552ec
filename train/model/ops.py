"""Small tensor helpers shared by the model's modules, written to export as plain ONNX ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the reference's only resize mode)."""
    if isinstance(size, int):
        size = (size, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """B x H x W x D -> B x (H/w * W/w) x (w*w) x D, windows in row-major order.

    A reshape/permute (kernel == stride), so it never exports as Col2Im/Im2Col.
    """
    b, h, w, d = x.shape
    x = x.reshape(b, h // window, window, w // window, window, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window * window, d)


def window_reverse(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: B x nW x (w*w) x D -> B x H x W x D."""
    b, _, _, d = x.shape
    x = x.reshape(b, h // window, w // window, window, window, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, d)


def pad_shots(x: torch.Tensor, slots: int) -> torch.Tensor:
    """B x K x ... -> B x slots x ...: the K shots first, zeros after.

    Written as a product with a slots x K 0/1 selection matrix rather than a Pad, so the exported
    graph has no pad amount that depends on the (dynamic) number of shots. Exact: each output is
    one input times 1 plus zeros.
    """
    b, k = x.shape[:2]
    select = (torch.arange(slots, device=x.device)[:, None] == torch.arange(k, device=x.device)[None, :])
    out = torch.matmul(select.to(x.dtype), x.reshape(b, k, -1))
    return out.reshape(b, slots, *x.shape[2:])


class Fp32Island(nn.Module):
    """Marker base class: the FP16 plan keeps every node computed inside such a module in FP32.

    Exported ONNX nodes record the classes of the modules they came from, so precision is
    declared here, next to the arithmetic that needs it, not by matching node names later.
    """


#: Tiny floor for L2 norms: a zero feature vector then gets cosine 0, as in the reference.
NORM_FLOOR = 1e-12
COSINE_EPS = 1e-7


class L2Normalize(Fp32Island):
    """x / |x| along ``dim`` (zero vectors stay zero). FP32: sums of squares of 2048-channel
    features exceed FP16's 65504. The squares are formed before they are summed (no ReduceL2),
    so a storage sweep sees them."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(torch.sum(x * x, dim=self.dim, keepdim=True))
        return x / torch.clamp(norm, min=NORM_FLOOR)


class CosineSimilarity(Fp32Island):
    """``a @ b^T / (|a| |b|^T + 1e-7)`` for a: ... x n x d, b: ... x m x d -> ... x n x m.

    FP32: the denominator's products of norms and the 1e-7 floor are not representable in FP16.
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dots = torch.matmul(a, b.transpose(-2, -1))
        a_norm = torch.sqrt(torch.sum(a * a, dim=-1, keepdim=True))
        b_norm = torch.sqrt(torch.sum(b * b, dim=-1, keepdim=True))
        return dots / (torch.matmul(a_norm, b_norm.transpose(-2, -1)) + COSINE_EPS)
