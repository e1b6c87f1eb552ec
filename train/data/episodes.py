"""The episode record every dataset yields, and how episodes become model inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sccan.sdk.preprocess import normalize


@dataclass
class Episode:
    """One few-shot episode: RGB uint8 images (H x W x 3) and uint8 labels (0, 1, 255 = ignore)."""

    query: np.ndarray
    query_label: np.ndarray
    support: list[np.ndarray]
    support_labels: list[np.ndarray]
    class_id: int


def collate(episodes: list[Episode], mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """Episodes of equal size -> normalised tensors: query B x 3 x H x W, query_label B x H x W,
    support B x K x 3 x H x W, support_labels B x K x H x W, class_id B."""
    query = np.stack([normalize(e.query, mean, std) for e in episodes])
    support = np.stack([np.stack([normalize(s, mean, std) for s in e.support]) for e in episodes])
    return {
        "query": torch.from_numpy(query),
        "query_label": torch.from_numpy(np.stack([e.query_label for e in episodes]).astype(np.int64)),
        "support": torch.from_numpy(support),
        "support_labels": torch.from_numpy(np.stack([np.stack(e.support_labels) for e in episodes]).astype(np.float32)),
        "class_id": torch.tensor([e.class_id for e in episodes]),
    }
