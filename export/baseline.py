"""The uncached reference for ``sccan bench``: the PyTorch model's full eager forward, the support
set recomputed every frame (as the authors' code runs), on the same input as the SDK.

Registered as the ``pytorch`` entry point of ``sccan.bench_baselines`` so that ``sccan.sdk.bench``
finds it without importing torch itself. The bundle holds no PyTorch weights, so the model is
built from the bundle's recorded configuration with freshly initialised weights: an eager
forward's time does not depend on the weight values.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sccan.sdk.bundle import load_bundle
from sccan.sdk.images import as_mask, as_rgb
from sccan.sdk.preprocess import normalize, resize_image, resize_label
from sccan.train.model import SCCANConfig
from sccan.train.model.sccan import SCCAN


def make_baseline(bundle_path: Path, threads: int | None) -> tuple[Callable[..., None], str]:
    """``(run(frame_bgr, support_bgrs, masks), note)`` for the bundle's model configuration."""
    manifest = load_bundle(bundle_path, verify=False).manifest
    config = SCCANConfig.from_dict(manifest["model"])
    model = SCCAN(config).eval()
    size = int(manifest["input_size"])
    if threads:
        torch.set_num_threads(threads)

    def run(frame_bgr: np.ndarray, supports_bgr: list[np.ndarray], masks: list[np.ndarray]) -> None:
        rgb = as_rgb(frame_bgr)
        canvas, _ = resize_image(rgb, size)
        query = torch.from_numpy(normalize(canvas, model.mean, model.std))[None]
        shots = [torch.from_numpy(normalize(resize_image(as_rgb(s), size)[0], model.mean, model.std))
                 for s in supports_bgr]
        labels = [torch.from_numpy((resize_label(as_mask(m, m.shape[:2]), size) == 1).astype(np.float32))
                  for m in masks]
        with torch.no_grad():
            logits = model(query, torch.stack(shots)[None], torch.stack(labels)[None])
            side = max(rgb.shape[:2])
            full = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=True)
            torch.softmax(full[..., :rgb.shape[0], :rgb.shape[1]], dim=1)

    note = (f"PyTorch {torch.__version__} eager, full forward with the support recomputed every frame, "
            f"{torch.get_num_threads()} threads, the bundle's configuration ({config.backbone}) with fresh weights")
    return run, note
