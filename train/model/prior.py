"""The training-free prior mask (cosine softmax attention of query onto support mask values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import resize

#: Tiny floor for L2 norms: a zero feature vector then gets cosine 0, as in the reference.
NORM_FLOOR = 1e-12


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / |x| along ``dim`` (zero vectors stay zero).

    The squares are formed (and, in an FP16 graph, stored) before they are summed, so an FP32
    island around this reduction is visible to a storage check.
    """
    norm = torch.sqrt(torch.sum(x * x, dim=dim, keepdim=True))
    return x / torch.clamp(norm, min=NORM_FLOOR)


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

    def forward(self, query_high: torch.Tensor, prior_keys: torch.Tensor, prior_mask: torch.Tensor,
                shot_valid: torch.Tensor) -> torch.Tensor:
        bq, dh, h, w = query_high.shape
        c, s, n, _ = prior_keys.shape
        grid = int(round(n ** 0.5))
        q = l2_normalize(query_high.reshape(bq, dh, h * w), dim=1)  # Bq x Dh x hw
        cos = torch.matmul(prior_keys, q.unsqueeze(1))  # C x S x N x hw
        weights = F.softmax(cos, dim=2)
        value = torch.matmul(prior_mask.unsqueeze(2), weights).squeeze(2)  # C x S x hw
        vmin = value.amin(dim=2, keepdim=True)
        vmax = value.amax(dim=2, keepdim=True)
        value = (value - vmin) / (vmax - vmin + 1e-7)
        maps = resize(value.reshape(c * s, 1, h, w), grid).reshape(c, s, grid, grid)
        valid = shot_valid.reshape(c, s, 1, 1)
        return (maps * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True)
