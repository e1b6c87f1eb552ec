"""The training-free prior mask (cosine softmax attention of query onto support mask values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import Fp32Island, L2Normalize, resize


class PriorStretch(Fp32Island):
    """Softmax-weighted sum of the support mask, then the per-image min-max stretch.

    FP32: on a nearly flat prior (values within ~0.02 of each other) FP16's 2.4e-4 resolution
    near 0.3 would be amplified ~50x by the stretch.

    ``forward(mask, weights)``: mask C x S x N, weights C x S x N x hw -> C x S x hw in [0, 1].
    """

    def forward(self, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        value = torch.matmul(mask.unsqueeze(2), weights).squeeze(2)
        vmin = value.amin(dim=2, keepdim=True)
        vmax = value.amax(dim=2, keepdim=True)
        return (value - vmin) / (vmax - vmin + 1e-7)


class PriorMask(nn.Module):
    """Per shot: for every query position, softmax over support positions of the cosine
    similarity of high-level features, weighted sum of the support mask; min-max normalised per
    image, resized to the grid; then averaged over the valid shots.

    ``forward(query_high, prior_keys, prior_mask, shot_valid)``:
        query_high: Bq x Dh x h x w (Bq = 1 broadcasts over classes, or Bq = C).
        prior_keys: C x S x N x Dh, support high features at the grid, L2-normalised.
        prior_mask: C x S x N, support foreground at the grid.
        shot_valid: C x S, 1 for real shots.
    Returns C x 1 x G x G with G*G = N.
    """

    def __init__(self):
        super().__init__()
        self.normalize = L2Normalize(dim=1)
        self.stretch = PriorStretch()

    def forward(self, query_high: torch.Tensor, prior_keys: torch.Tensor, prior_mask: torch.Tensor,
                shot_valid: torch.Tensor) -> torch.Tensor:
        bq, dh, h, w = query_high.shape
        c, s, n, _ = prior_keys.shape
        grid = int(round(n ** 0.5))
        q = self.normalize(query_high.reshape(bq, dh, h * w))  # Bq x Dh x hw
        # Keys and query are unit vectors, so this product is the cosine (in [-1, 1]: the
        # softmax over it is safe in FP16, and this 60-GFLOP product stays in FP16).
        cos = torch.matmul(prior_keys, q.unsqueeze(1))  # C x S x N x hw
        value = self.stretch(prior_mask, F.softmax(cos, dim=2))  # C x S x hw
        maps = resize(value.reshape(c * s, 1, h, w), grid).reshape(c, s, grid, grid)
        valid = shot_valid.reshape(c, s, 1, 1)
        return (maps * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True)
