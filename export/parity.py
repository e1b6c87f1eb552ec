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

from sccan.sdk.patch_align_op import ort_session
from sccan.sdk.preprocess import foreground_probability
from sccan.train.model import SCCAN
from sccan.train.model.ops import resize

from .fp16 import StorageSweep, storage_sweep, to_fp16_feeds

LOGIT_TOLERANCE = 1e-4
INDEX_MARGIN = 1e-5
FP16_PROB_TOLERANCE = 0.02
FP16_MASK_AGREEMENT = 0.995


class GraphSessions:
    """The three graphs of one precision in ONNX Runtime (CPU), run stage by stage."""

    def __init__(self, paths: dict[str, Path], fp16: bool = False, threads: int | None = None):
        self.sessions = {g: ort_session(p, threads, providers=["CPUExecutionProvider"]) for g, p in paths.items()}
        self.fp16 = fp16
        self.support_names = [o.name for o in self.sessions["support_encoder"].get_outputs()]

    def _feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_fp16_feeds(feeds) if self.fp16 else feeds

    def extract(self, images: np.ndarray) -> dict[str, np.ndarray]:
        mid, high = self.sessions["backbone"].run(None, self._feeds({"images": images}))
        return {"mid": mid, "high": high}

    def encode(self, features: dict[str, np.ndarray], masks: np.ndarray) -> dict[str, np.ndarray]:
        out = self.sessions["support_encoder"].run(None, self._feeds({**features, "masks": masks}))
        return dict(zip(self.support_names, out))

    def decode(self, features: dict[str, np.ndarray], support: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, list[np.ndarray]]:
        out = self.sessions["query_decoder"].run(None, self._feeds({**features, **support}))
        return out[0].astype(np.float32), out[1:]


@dataclass
class Episode:
    """A query and two classes' supports (normalised images, 0/1 labels) at the bundle size."""

    query: np.ndarray  # 1 x 3 x S x S
    supports: list[tuple[np.ndarray, np.ndarray]]  # per class: K x 3 x S x S images, 1 x K x S x S labels


def check_episodes(count: int, size: int, max_shots: int, seed: int = 0) -> list[Episode]:
    """Deterministic episodes: smooth random images, elliptical objects; class 0 has 1 shot,
    class 1 has ``max_shots``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]

    def image() -> np.ndarray:
        coarse = rng.standard_normal((3, 9, 9)).astype(np.float32)
        t = torch.from_numpy(coarse)[None]
        return (resize(t, size)[0].numpy() + 0.3 * rng.standard_normal((3, size, size))).astype(np.float32)

    def mask() -> np.ndarray:
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        ry, rx = rng.uniform(0.1, 0.3, 2) * size
        return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32)

    episodes = []
    for _ in range(count):
        supports = []
        for k in (1, max_shots):
            supports.append((np.stack([image() for _ in range(k)]), np.stack([mask() for _ in range(k)])[None]))
        episodes.append(Episode(image()[None], supports))
    return episodes


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
                    paths16: dict[str, Path] | None = None, seed: int = 0) -> ParityReport:
    """Compare the graphs with the model on ``episodes`` check episodes; see the module docstring."""
    report = ParityReport(episodes=episodes)
    fp32 = GraphSessions(paths32)
    fp16 = GraphSessions(paths16, fp16=True) if paths16 else None
    sweeps: dict[str, StorageSweep] = {}
    for episode in check_episodes(episodes, size, max_shots, seed):
        reference = _torch_reference(model, episode, size, max_shots)
        logits, indices = _run_graphs(fp32, episode)
        for c, (ref_logits, ref_indices, ref_margins) in enumerate(reference):
            scale = float(np.abs(ref_logits).max()) or 1.0
            rel = float(np.abs(logits[c] - ref_logits[0]).max()) / scale
            report.max_relative_logit_diff = max(report.max_relative_logit_diff, rel)
            for got, want, margin in zip(indices, ref_indices, ref_margins):
                decisive = margin[0] > INDEX_MARGIN
                report.indices_checked += int(decisive.sum())
                report.index_mismatches += int((got[c][decisive] != want[0][decisive]).sum())
        if fp16 is not None:
            logits16, _ = _run_graphs(fp16, episode)
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


def _run_graphs(sessions: GraphSessions, episode: Episode) -> tuple[np.ndarray, list[np.ndarray]]:
    """Encode each class separately, decode all classes in one batch."""
    per_class = []
    for images, masks in episode.supports:
        per_class.append(sessions.encode(sessions.extract(images), masks))
    batched = {k: np.concatenate([s[k] for s in per_class]) for k in per_class[0]}
    return sessions.decode(sessions.extract(episode.query), batched)


def _sweep_fp16(sessions: GraphSessions, paths16: dict[str, Path], episode: Episode) -> dict[str, StorageSweep]:
    images, masks = episode.supports[-1]
    features = sessions.extract(images)
    support = sessions.encode(features, masks)
    query = sessions.extract(episode.query)
    feeds = {"backbone": {"images": images}, "support_encoder": {**features, "masks": masks},
             "query_decoder": {**query, **support}}
    return {g: storage_sweep(onnx.load(str(paths16[g])), to_fp16_feeds(feeds[g])) for g in paths16}
