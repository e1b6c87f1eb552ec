"""The training loss of the reference recipe."""

from __future__ import annotations

import torch

IGNORE = 255


def dice_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Dice on the sigmoid of each logit channel against the one-hot target.

    logits: B x 2 x H x W; label: B x H x W with 0, 1 and 255. Channel 0's target is ``label == 0``
    and channel 1's ``label == 1``: an ignored pixel is 0 in both targets, while its prediction
    still counts in the denominator. Per image and channel ``1 - 2 sum(p t) / max(sum(p^2) +
    sum(t^2), 1e-8)``, summed over images and channels, divided by the batch size.
    """
    p = torch.sigmoid(logits.float())
    t = torch.stack([(label == 0), (label == 1)], dim=1).to(p.dtype)
    inter = (p * t).flatten(2).sum(-1)
    denom = (p * p).flatten(2).sum(-1) + (t * t).flatten(2).sum(-1)
    dice = 1 - 2 * inter / torch.clamp(denom, min=1e-8)
    return dice.sum() / logits.shape[0]
