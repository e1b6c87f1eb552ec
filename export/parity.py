"""The parity gate: the exported graphs in ONNX Runtime against the PyTorch model.

FP32: on check episodes at the bundle's size (one class with 1 shot and one with ``max_shots``,
decoded together in one batch), max |logit difference| <= 1e-4 x max |logit| per class, and the
patch-alignment indices equal wherever the best and second-best scores differ by more than 1e-5.
FP16 (when present): foreground probabilities within 0.02 of the FP32 graphs', masks agreeing on
at least 99.5% of pixels, and no stored FP16 tensor inf or NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from sccan.sdk.preprocess import foreground_probability
from sccan.train.model import SCCAN
from sccan.train.model.ops import resize

from .episodes import Episode, GraphSessions, check_episodes, reference_key, run_episode
from .fp16 import StorageSweep, storage_sweep, to_fp16_feeds

LOGIT_TOLERANCE = 1e-4
INDEX_MARGIN = 1e-5
FP16_PROB_TOLERANCE = 0.02
FP16_MASK_AGREEMENT = 0.995


@dataclass
class ParityReport:
    episodes: int = 0
    max_relative_logit_diff: float = 0.0
    indices_checked: int = 0
    index_mismatches: int = 0
    fp16_max_probability_diff: float | None = None
    fp16_min_mask_agreement: float | None = None
    fp16_storage: dict[str, dict] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _torch_reference(model: SCCAN, episode: Episode, size: int, max_shots: int):
    """Per class: logits at S x S, alignment indices and best-minus-second alignment margins."""
    margins: list[torch.Tensor] = []

    def hook(module, inputs, output):
        score = module.scores(*inputs[:3])
        top = score.topk(2, dim=1).values if score.shape[1] > 1 else torch.cat([score, score], 1)
        margins.append(top[:, 0] - top[:, 1])

    handles = [b.align.register_forward_hook(hook) for b in model.transformer.blocks]
    results = []
    try:
        with torch.no_grad():
            q_mid, q_high = model.extract(torch.from_numpy(episode.query))
            for images, masks in episode.supports:
                margins.clear()
                mid, high = model.extract(torch.from_numpy(images))
                sf = model.encode_support_features(mid, high, torch.from_numpy(masks), max_shots)
                logits, indices = model.decode_query_features(q_mid, q_high, sf, return_alignment=True)
                results.append((resize(logits, size).numpy(), [i.numpy() for i in indices],
                                [m.numpy() for m in margins]))
    finally:
        for h in handles:
            h.remove()
    return results


def run_parity_gate(model: SCCAN, paths32: dict[str, Path], size: int, max_shots: int, episodes: int,
                    paths16: dict[str, Path] | None = None, seed: int = 0,
                    reference: dict[str, np.ndarray] | None = None) -> ParityReport:
    """Compare the graphs with the model on ``episodes`` check episodes; see the module docstring.

    ``reference``, when given, receives PyTorch's alignment indices and where they are decisive,
    per episode, class and block (keys of :func:`reference_key`), for the bundle's ``check.npz``:
    the engine build's gate holds TensorRT's indices to them without torch."""
    report = ParityReport(episodes=episodes)
    fp32 = GraphSessions(paths32)
    fp16 = GraphSessions(paths16, fp16=True) if paths16 else None
    sweeps: dict[str, StorageSweep] = {}
    for e, episode in enumerate(check_episodes(episodes, size, max_shots, seed)):
        torch_out = _torch_reference(model, episode, size, max_shots)
        logits, indices = run_episode(fp32, episode)
        for c, (ref_logits, ref_indices, ref_margins) in enumerate(torch_out):
            if reference is not None:
                for b, (want, margin) in enumerate(zip(ref_indices, ref_margins)):
                    reference[reference_key(e, c, b, "index")] = want[0].astype(np.int32)
                    reference[reference_key(e, c, b, "decisive")] = margin[0] > INDEX_MARGIN
            scale = float(np.abs(ref_logits).max()) or 1.0
            rel = float(np.abs(logits[c] - ref_logits[0]).max()) / scale
            report.max_relative_logit_diff = max(report.max_relative_logit_diff, rel)
            for got, want, margin in zip(indices, ref_indices, ref_margins):
                decisive = margin[0] > INDEX_MARGIN
                report.indices_checked += int(decisive.sum())
                report.index_mismatches += int((got[c][decisive] != want[0][decisive]).sum())
        if fp16 is not None:
            logits16, _ = run_episode(fp16, episode)
            p32, p16 = foreground_probability(logits), foreground_probability(logits16)
            diff = float(np.abs(p32 - p16).max())
            agree = float(((p32 > 0.5) == (p16 > 0.5)).mean())
            report.fp16_max_probability_diff = max(report.fp16_max_probability_diff or 0.0, diff)
            report.fp16_min_mask_agreement = min(report.fp16_min_mask_agreement or 1.0, agree)
            for graph, sweep in _sweep_fp16(fp16, paths16, episode).items():
                sweeps.setdefault(graph, StorageSweep()).merge(sweep)
    report.fp16_storage = {g: asdict(s) for g, s in sweeps.items()}
    if report.max_relative_logit_diff > LOGIT_TOLERANCE:
        report.failures.append(f"FP32 logits differ from PyTorch by {report.max_relative_logit_diff:.2e} "
                               f"x max|logit| (limit {LOGIT_TOLERANCE:.0e})")
    if report.index_mismatches:
        report.failures.append(f"{report.index_mismatches} of {report.indices_checked} decisive patch-alignment "
                               "indices differ from PyTorch")
    if fp16 is not None:
        if report.fp16_max_probability_diff > FP16_PROB_TOLERANCE:
            report.failures.append(f"FP16 foreground probabilities differ by {report.fp16_max_probability_diff:.3f} "
                                   f"(limit {FP16_PROB_TOLERANCE})")
        if report.fp16_min_mask_agreement < FP16_MASK_AGREEMENT:
            report.failures.append(f"FP16 masks agree on {100 * report.fp16_min_mask_agreement:.2f}% of pixels "
                                   f"(limit {100 * FP16_MASK_AGREEMENT:.1f}%)")
        for graph, sweep in sweeps.items():
            if not sweep.ok:
                report.failures.append(f"FP16 {graph} stores inf/NaN in {sweep.nonfinite[:5]}")
    return report


def _sweep_fp16(sessions: GraphSessions, paths16: dict[str, Path], episode: Episode) -> dict[str, StorageSweep]:
    images, masks = episode.supports[-1]
    features = sessions.extract(images)
    support = sessions.encode(features, masks)
    query = sessions.extract(episode.query)
    feeds = {"backbone": {"images": images}, "support_encoder": {**features, "masks": masks},
             "query_decoder": {**query, **support}}
    return {g: storage_sweep(onnx.load(str(paths16[g])), to_fp16_feeds(feeds[g])) for g in paths16}
