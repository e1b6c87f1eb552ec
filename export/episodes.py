"""The check inputs of a bundle and the graphs run stage by stage, without torch.

The export's parity gate (against PyTorch) and the engine build's gate (``sccan build``, against
the FP32 graphs in ONNX Runtime, on machines that may have no torch, a Jetson say) run the same
deterministic episodes through the same stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sccan.sdk.patch_align_op import ort_session
from sccan.sdk.preprocess import resize_bilinear_align_corners


def to_fp16_feeds(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float32 arrays as float16 (the FP16 graphs' inputs), others unchanged."""
    return {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}


class GraphSessions:
    """The three graphs of one precision in ONNX Runtime (CPU), run stage by stage."""

    def __init__(self, paths: dict[str, Path], fp16: bool = False, threads: int | None = None):
        self.sessions = {g: ort_session(p, threads, providers=["CPUExecutionProvider"]) for g, p in paths.items()}
        self.fp16 = fp16
        self.support_names = [o.name for o in self.sessions["support_encoder"].get_outputs()]
        # A decoder exported for one class per run has a static class dimension of 1.
        classes = self.sessions["query_decoder"].get_inputs()[2].shape[0]
        self.max_classes = classes if isinstance(classes, int) else None

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
        smooth = resize_bilinear_align_corners(coarse, size, size)
        return (smooth + 0.3 * rng.standard_normal((3, size, size))).astype(np.float32)

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


def run_episode(stages: "GraphSessions | BackendStages", episode: Episode) -> tuple[np.ndarray, list[np.ndarray]]:
    """Encode each class separately, decode all classes in one batch: (C x 2 x h x w logits,
    alignment indices per block, each C x hw)."""
    per_class = []
    for images, masks in episode.supports:
        per_class.append(stages.encode(stages.extract(images), masks))
    query = stages.extract(episode.query)
    step = getattr(stages, "max_classes", None) or len(per_class)  # classes per decoder run
    parts = [stages.decode(query, {k: np.concatenate([s[k] for s in per_class[i:i + step]]) for k in per_class[0]})
             for i in range(0, len(per_class), step)]
    if len(parts) == 1:
        return parts[0]
    return (np.concatenate([p[0] for p in parts]),
            [np.concatenate([p[1][b] for p in parts]) for b in range(len(parts[0][1]))])


class BackendStages:
    """The same stages on an SDK backend (the TensorRT engines, for ``sccan build``'s gate)."""

    def __init__(self, backend):
        self.backend = backend
        self.max_classes = getattr(backend, "max_classes", None)  # engines built for fewer classes per run

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.run(graph, {k: np.asarray(v, self.backend.input_dtype(graph, k)) for k, v in feeds.items()})

    def extract(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self._run("backbone", {"images": images})

    def encode(self, features: dict[str, np.ndarray], masks: np.ndarray) -> dict[str, np.ndarray]:
        return self._run("support_encoder", {**features, "masks": masks})

    def decode(self, features: dict[str, np.ndarray], support: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, list[np.ndarray]]:
        classes = next(iter(support.values())).shape[0]
        step = getattr(self.backend, "max_classes", None) or classes  # engines may take fewer per decode
        chunks = [self._run("query_decoder", {**features, **{k: v[i:i + step] for k, v in support.items()}})
                  for i in range(0, classes, step)]
        names = [n for n in chunks[0] if n != "logits"]
        logits = np.concatenate([c["logits"] for c in chunks]).astype(np.float32)
        return logits, [np.concatenate([c[n] for c in chunks]) for n in names]


#: The file of a bundle holding PyTorch's alignment indices on the check episodes.
CHECK_FILE = "check.npz"


def reference_key(episode: int, cls: int, block: int, what: str) -> str:
    """Key of ``check.npz``: ``e{episode}_c{class}_b{block}_{index|decisive}``."""
    return f"e{episode}_c{cls}_b{block}_{what}"


def load_reference(path: Path) -> dict[str, np.ndarray] | None:
    """``check.npz`` as arrays (no pickles), or None for a bundle without one."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}

