"""The `SupportFeatures` contract: one definition of the support-side tensors.

Everything the per-frame query path needs from a support set is computed once per class and
kept as a set of named tensors. The same names, shapes and dtypes are the PyTorch model's
``encode_support`` output, the outputs of the exported ``support_encoder`` graph, the support
inputs of the ``query_decoder`` graph and the arrays of a saved support file. This module is
numpy-only: ``sccan.train`` and ``sccan.export`` import it, ``sccan.sdk`` lives on it.

Fields, for ``C`` classes (the leading, dynamic dimension), ``S = max_shots`` shot slots,
``G = grid`` (feature grid side), ``D = embed_dim``, ``Dh = high_channels``, ``T = window**2``,
``H = num_heads``, ``d = D / H`` (head width):

==========================  ======================  =============================================
name                        shape                   meaning
==========================  ======================  =============================================
``prototype``               C x D                   shot-averaged masked-average support feature
``prior_keys``              C x Dh x S x G*G        per shot, the support high-level map resized
                                                    to G x G, each position L2-normalised (shot
                                                    slots second to last: one matrix of all shots)
``prior_mask``              C x S x G*G             per shot, the foreground mask at G x G
``shot_valid``              C x S                   1.0 for a real shot, 0.0 for a padding slot
``block{i}_keys``           C x W_i x H x T x d     SCCA block i: the keys of ``attn_q`` (its
                                                    ``kv`` Linear, first half) of the support
                                                    tokens entering the block after ``norm1``
                                                    (zero-padded for shifted blocks), per window
                                                    and head
``block{i}_values``         C x W_i x H x T x d     block i: the values (second half), likewise
``block{i}_prototypes``     C x W_i x D             block i: masked mean of each support window
``block{i}_has_fg``         C x W_i                 block i: 1.0 where the window holds
                                                    foreground
==========================  ======================  =============================================

``W_i`` is ``(G / window)**2`` for unshifted (even) blocks and ``(G / window + 1)**2`` for
shifted (odd) blocks, which are padded by ``window / 2`` on every side. All tensors are float32
(or float16 in an FP16 bundle).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: The symbolic name of the dynamic class-batch dimension in shapes and ONNX graphs.
CLASS_DIM = "classes"

GLOBAL_FIELDS = ("prototype", "prior_keys", "prior_mask", "shot_valid")
#: The per-shot fields, and the axis of each that holds the shot slots.
SLOT_AXES = {"prior_keys": 2, "prior_mask": 1, "shot_valid": 1}
BLOCK_FIELDS = ("keys", "values", "prototypes", "has_fg")


def first_slots(name: str, array: Any, slots: int) -> Any:
    """``array`` (the support tensor ``name``, numpy or torch) cut to its first ``slots`` shot slots;
    tensors without shot slots are returned as they are."""
    if name not in SLOT_AXES:
        return array
    index = [slice(None)] * SLOT_AXES[name] + [slice(0, slots)]
    return array[tuple(index)]


def real_shots(part: Mapping[str, np.ndarray]) -> int:
    """The shot slots one class's support tensors (1 x ... each) use: up to its last real shot."""
    valid = np.flatnonzero(np.asarray(part["shot_valid"]).reshape(-1))
    return int(valid[-1]) + 1 if valid.size else int(np.asarray(part["shot_valid"]).size)


def cut_to_shots(part: Mapping[str, np.ndarray], slots: int | None = None) -> dict[str, np.ndarray]:
    """One class's support tensors cut to ``slots`` shot slots (default: its own, :func:`real_shots`)."""
    slots = real_shots(part) if slots is None else slots
    return {k: first_slots(k, v, slots) for k, v in part.items()}


def stack_classes(parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Classes' support tensors (1 x ... each) as one batch (C x ...), cut to the most shots any of
    them has: padding slots only cost time (the prior is computed per slot, and a padding slot adds
    exact zeros). One class is its own arrays, cut (views: no copy)."""
    if len(parts) == 1:
        return cut_to_shots(parts[0])
    slots = max(real_shots(part) for part in parts)
    return {k: np.concatenate([first_slots(k, part[k], slots) for part in parts]) for k in parts[0]}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor; the first dimension may be symbolic (a string)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def concrete_shape(self, num_classes: int) -> tuple[int, ...]:
        """The shape with the symbolic class dimension replaced by ``num_classes``."""
        return tuple(num_classes if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class SupportLayout:
    """The numbers that fix every support-side tensor's shape.

    Attributes:
        grid: side of the square feature grid the transformer runs on (64 in the paper).
        embed_dim: token width (256 in the paper).
        high_channels: channels of the backbone's high-level features (2048 for ResNets).
        num_blocks: number of SCCA blocks (8 in the paper); odd blocks are shifted.
        window: window side (8 in the paper); shifted blocks pad by ``window // 2``.
        max_shots: shot slots kept per class (padding slots are flagged by ``shot_valid``).
        num_heads: attention heads (8 in the paper): the support keys and values are per head.
    """

    grid: int
    embed_dim: int
    high_channels: int
    num_blocks: int
    window: int
    max_shots: int
    num_heads: int

    def __post_init__(self) -> None:
        if self.grid % self.window:
            raise ValueError(f"grid {self.grid} must be a multiple of window {self.window}")
        if self.window % 2:
            raise ValueError(f"window must be even (shifted blocks pad by half), got {self.window}")
        if self.max_shots < 1:
            raise ValueError(f"max_shots must be >= 1, got {self.max_shots}")
        if self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads")

    @staticmethod
    def is_shifted(block: int) -> bool:
        """Odd blocks are shifted (padded by half a window on every side)."""
        return block % 2 == 1

    def windows(self, block: int) -> int:
        """Number of windows of block ``block``."""
        side = self.grid // self.window + (1 if self.is_shifted(block) else 0)
        return side * side

    def specs(self) -> list[TensorSpec]:
        """Every support tensor's spec, in the canonical order (graph I/O order)."""
        c, s, g, d, t = CLASS_DIM, self.max_shots, self.grid, self.embed_dim, self.window**2
        h = self.num_heads
        out = [
            TensorSpec("prototype", (c, d)),
            TensorSpec("prior_keys", (c, self.high_channels, s, g * g)),
            TensorSpec("prior_mask", (c, s, g * g)),
            TensorSpec("shot_valid", (c, s)),
        ]
        for i in range(self.num_blocks):
            w = self.windows(i)
            out += [
                TensorSpec(f"block{i}_keys", (c, w, h, t, d // h)),
                TensorSpec(f"block{i}_values", (c, w, h, t, d // h)),
                TensorSpec(f"block{i}_prototypes", (c, w, d)),
                TensorSpec(f"block{i}_has_fg", (c, w)),
            ]
        return out

    def names(self) -> list[str]:
        """Field names in canonical order."""
        return [spec.name for spec in self.specs()]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class SupportFeatures(Mapping[str, Any]):
    """The support-side tensors of ``C`` classes, by name (numpy arrays or torch tensors).

    A read-only mapping in the canonical order of :meth:`SupportLayout.names`. It does not care
    which array library holds the values: the model returns torch tensors, the SDK numpy arrays.
    """

    def __init__(self, tensors: Mapping[str, Any]):
        self._tensors = dict(tensors)
        missing = [n for n in GLOBAL_FIELDS if n not in self._tensors]
        if missing:
            raise KeyError(f"SupportFeatures lacks {missing}")

    def __getitem__(self, name: str) -> Any:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self._tensors.items())
        return f"SupportFeatures({shapes})"

    @property
    def num_classes(self) -> int:
        # No int(): under torch.export the class count is symbolic and must stay so.
        return self._tensors["prototype"].shape[0]

    @property
    def num_blocks(self) -> int:
        return sum(1 for k in self._tensors if k.startswith("block") and k.endswith("_keys"))

    def block(self, i: int) -> tuple[Any, Any, Any, Any]:
        """(keys, values, prototypes, has_fg) of SCCA block ``i``."""
        return tuple(self._tensors[f"block{i}_{f}"] for f in BLOCK_FIELDS)  # type: ignore[return-value]

    def check(self, layout: SupportLayout) -> None:
        """Raise ``ValueError`` naming the first tensor whose name or shape breaks ``layout``."""
        expected = layout.specs()
        if list(self._tensors) != [s.name for s in expected]:
            raise ValueError(f"fields {list(self._tensors)} differ from {layout.names()}")
        c = self.num_classes
        for spec in expected:
            got = tuple(self._tensors[spec.name].shape)
            if got != spec.concrete_shape(c):
                raise ValueError(f"{spec.name}: expected shape {spec.concrete_shape(c)}, got {got}")

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (detached and on the CPU when the values are torch tensors)."""
        out = {}
        for k, v in self._tensors.items():
            if hasattr(v, "detach"):
                v = v.detach().cpu().numpy()
            out[k] = np.asarray(v)
        return out
