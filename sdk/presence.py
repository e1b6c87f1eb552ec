"""Presence: how likely a registered object is in the frame at all, from the decoder's own output.

A class's presence score is the mean foreground probability of its most confident pixels: the top
``PRESENCE_TOP_FRACTION`` of the frame's pixels at the network's input size (inside the image, not
the padding). An object in view gives a block of confident pixels; an absent one leaves at most a
few scattered ones, which the mean over the top share dilutes. It needs no trained head and no
second pass: the logits are the decoder's, already computed for the mask.

Measured on held-out episodes (``benchmarks/objects_apart.py``, half with the object absent), the
statistic and the default threshold are the ones in BENCHMARKS.md ("Objects told apart").
"""

from __future__ import annotations

import numpy as np

#: The share of the frame's pixels whose mean probability is the presence score.
PRESENCE_TOP_FRACTION = 0.01
#: The default presence threshold of :meth:`sccan.sdk.Segmenter.segment` (see the module docstring).
PRESENCE_THRESHOLD = 0.5


def presence_scores(logits: np.ndarray, height: int, width: int,
                    top_fraction: float = PRESENCE_TOP_FRACTION) -> np.ndarray:
    """C x 2 x S x S logits at the network's input, the image's ``height`` x ``width`` on that canvas
    (top-left) -> C presence scores in [0, 1] (float64).

    The foreground probability is the softmax of the two channels, the sigmoid of ``l1 - l0``.
    """
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"logits must be C x 2 x S x S, got {logits.shape}")
    fg = (logits[:, 1, :height, :width] - logits[:, 0, :height, :width]).reshape(logits.shape[0], -1)
    k = max(1, int(np.ceil(top_fraction * fg.shape[1])))
    top = np.partition(fg, fg.shape[1] - k, axis=1)[:, fg.shape[1] - k:].astype(np.float64)
    with np.errstate(over="ignore"):  # exp of a large negative logit is inf, and 1 / inf is the right 0
        return (1.0 / (1.0 + np.exp(-top))).mean(axis=1)


__all__ = ["presence_scores", "PRESENCE_THRESHOLD", "PRESENCE_TOP_FRACTION"]
