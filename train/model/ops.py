"""Small tensor helpers shared by the model's modules, written to export as plain ONNX ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
