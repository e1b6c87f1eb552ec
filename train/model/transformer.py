"""The SCCA transformer: self-calibrated cross attention with patch alignment.

Both streams work on G x G token maps (B x G x G x D). The support stream never reads the
query, so :meth:`SCCATransformer.encode_support` runs it once per support set and keeps, per
block, what the query stream needs (the keys and values of ``attn_q`` over the support tokens
after ``norm1``, window prototypes, foreground flags);
:meth:`SCCATransformer.forward` then runs the query stream alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import CosineSimilarity, window_partition, window_reverse

PROTOTYPE_EPS = 5e-4


class WindowAttention(nn.Module):
    """Multi-head attention inside windows (``q``, ``kv``, ``proj`` as in the checkpoints).

    ``forward(x, support=None)``: x is B x nW x T x D. Without ``support`` this is window
    self-attention with logits scaled by head_dim**-0.5. With ``support`` (the aligned support
    windows' keys and values from :meth:`keys_values`, each B x nW x heads x Ts x head_dim) the
    keys/values are those of x followed by the support's; the support logits are the unscaled
    cosine similarity of query and key, and one softmax runs over all T + Ts keys.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.cosine = CosineSimilarity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # B x nW x T x (n*D) -> n x B x nW x heads x T x head_dim, n = D-chunks of the Linear.
        b, nw, t, d = x.shape
        n = d // (self.q.out_features)
        x = x.reshape(b, nw, t, n, self.num_heads, self.q.out_features // self.num_heads)
        return x.permute(3, 0, 1, 4, 2, 5)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of tokens x (B x nW x T x D), each B x nW x heads x T x head_dim."""
        k, v = self._heads(self.kv(x)).unbind(0)
        return k, v

    def forward(self, x: torch.Tensor, support: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        b, nw, t, d = x.shape
        q = self._heads(self.q(x))[0]
        k, v = self.keys_values(x)
        logits = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        if support is not None:
            ks, vs = support
            logits = torch.cat([logits, self.cosine(q, ks)], dim=-1)
            v = torch.cat([v, vs], dim=-2)
        attn = F.softmax(logits, dim=-1)
        out = torch.matmul(attn, v)  # B x nW x heads x T x hd
        return self.proj(out.permute(0, 1, 3, 2, 4).reshape(b, nw, t, d))


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchAlignment(nn.Module):
    """For each query window, the support window whose prototype is most similar.

    ``forward(query_windows, support_prototypes, support_has_fg, support_keys, support_values)``:
        query_windows: B x nW x T x D (query tokens after norm1, windowed).
        support_prototypes: B x nW x D; support_has_fg: B x nW; support_keys and
        support_values: B x nW x ... (per support window, whatever it holds; here the window's
        keys and values, heads x T x head_dim each).
    Returns (aligned keys, aligned values, each B x nWq x ..., index B x nWq int64). The score is
    ``(cos + 1) / 2 * has_fg`` and ties take the lowest index, computed explicitly (max,
    equality, smallest index) because FP16 engines create exact ties and TensorRT's ArgMax does
    not document which index wins.
    """

    def __init__(self):
        super().__init__()
        self.cosine = CosineSimilarity()

    def scores(self, query_windows: torch.Tensor, support_prototypes: torch.Tensor,
               support_has_fg: torch.Tensor) -> torch.Tensor:
        """B x nWs x nWq alignment scores ``(cos + 1) / 2 * has_fg``."""
        cos = self.cosine(support_prototypes, query_windows.mean(dim=2))
        return (cos + 1.0) / 2.0 * support_has_fg.unsqueeze(-1)

    def index(self, query_windows: torch.Tensor, support_prototypes: torch.Tensor,
              support_has_fg: torch.Tensor) -> torch.Tensor:
        """B x nWq int64: the aligned support window of each query window."""
        score = self.scores(query_windows, support_prototypes, support_has_fg)
        best = score.amax(dim=1, keepdim=True)
        n = score.shape[1]
        positions = torch.arange(n, dtype=score.dtype, device=score.device).reshape(1, n, 1)
        index = torch.where(score == best, positions, torch.full_like(score, n)).amin(dim=1)
        # If a fused FP16 kernel's max equals no element exactly, no position matches and the
        # minimum is n: clamp, so the gather can never read past the last window.
        return index.clamp(max=n - 1).to(torch.int64)

    @staticmethod
    def gather(windows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """B x nWs x ... windows, index B x nWq -> B x nWq x ...: whole windows by row.

        The classes' windows as one list of B*nWs rows and one index_select (ONNX Gather on
        axis 0) of B*nWq rows, not a gather with an index per element.
        """
        b, nw = windows.shape[:2]
        rows = (index + torch.arange(b, device=index.device).reshape(b, 1) * nw).reshape(-1)
        picked = torch.index_select(windows.reshape(b * nw, -1), 0, rows)
        return picked.reshape(b, index.shape[1], *windows.shape[2:])

    def forward(self, query_windows: torch.Tensor, support_prototypes: torch.Tensor,
                support_has_fg: torch.Tensor, support_keys: torch.Tensor, support_values: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = self.index(query_windows, support_prototypes, support_has_fg)
        return self.gather(support_keys, index), self.gather(support_values, index), index


class SCCABlock(nn.Module):
    """One SCCA block; ``shifted`` blocks pad by half a window (no cyclic shift, no mask)."""

    def __init__(self, dim: int, num_heads: int, window: int, shifted: bool, mlp_ratio: float):
        super().__init__()
        self.window, self.shifted = window, shifted
        self.pad = window // 2 if shifted else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn_q = WindowAttention(dim, num_heads)
        self.attn_s = WindowAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp_q = Mlp(dim, hidden)
        self.mlp_s = Mlp(dim, hidden)
        self.align = PatchAlignment()

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        # x: B x H x W x D (or B x H x W for the mask); zeros on all four sides.
        if not self.pad:
            return x
        p = self.pad
        return F.pad(x, (0, 0, p, p, p, p)) if x.dim() == 4 else F.pad(x, (p, p, p, p))

    def _unwindow(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p = self.pad
        x = window_reverse(x, self.window, h + 2 * p, w + 2 * p)
        return x[:, p:p + h, p:p + w, :] if p else x

    def encode_support(self, s: torch.Tensor, mask: torch.Tensor, update: bool = True
                       ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Support stream. s: B x H x W x D tokens; mask: B x H x W (shot-mean mask).

        Returns (next support tokens, or None when ``update`` is False, and the cache for the
        query stream: the support windows' keys and values of ``attn_q``, each B x nW x heads x T x
        head_dim, prototypes B x nW x D, has_fg B x nW). The keys and values depend on the
        support alone: computed here once, the query stream only gathers the aligned windows'.
        """
        _, h, w, _ = s.shape
        tokens = window_partition(self._pad(self.norm1(s)), self.window)
        mask_windows = window_partition(self._pad(mask).unsqueeze(-1), self.window)  # B x nW x T x 1
        mask_sum = mask_windows.sum(dim=2)  # B x nW x 1
        prototypes = (tokens * mask_windows).sum(dim=2) / (mask_sum + PROTOTYPE_EPS)
        has_fg = (mask_sum.squeeze(-1) > 0).to(tokens.dtype)
        keys, values = self.attn_q.keys_values(tokens)
        cache = (keys.contiguous(), values.contiguous(), prototypes, has_fg)
        if not update:
            return None, cache
        s = s + self._unwindow(self.attn_s(tokens), h, w)
        s = s + self.mlp_s(self.norm2(s))
        return s, cache

    def forward(self, q: torch.Tensor, support_keys: torch.Tensor, support_values: torch.Tensor,
                support_prototypes: torch.Tensor, support_has_fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query stream. q: B x H x W x D; the cache from :meth:`encode_support`.

        Returns (q, the aligned support window of each query window, B x nW int64).
        The cache is (keys, values, prototypes, has_fg) from :meth:`encode_support`.
        """
        _, h, w, _ = q.shape
        windows = window_partition(self._pad(self.norm1(q)), self.window)
        keys, values, index = self.align(windows, support_prototypes, support_has_fg, support_keys,
                                         support_values)
        q = q + self._unwindow(self.attn_q(windows, (keys, values)), h, w)
        return q + self.mlp_q(self.norm2(q)), index


class SCCALayer(nn.Module):
    """Holds the blocks (checkpoint names ``transformer.layers.0.blocks.N``)."""

    def __init__(self, blocks: list[SCCABlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class SCCATransformer(nn.Module):
    """The block stack plus the final ``norm0`` on the query stream."""

    def __init__(self, dim: int, num_blocks: int, num_heads: int, window: int, mlp_ratio: float):
        super().__init__()
        blocks = [SCCABlock(dim, num_heads, window, i % 2 == 1, mlp_ratio) for i in range(num_blocks)]
        self.layers = nn.ModuleList([SCCALayer(blocks)])
        self.norm0 = nn.LayerNorm(dim)
        # The last block's support update feeds nothing (encode_support skips it): its weights stay
        # in checkpoints under their names but cannot affect any output, so they are not trained
        # (and DistributedDataParallel needs no search for unused parameters).
        blocks[-1].attn_s.requires_grad_(False)
        blocks[-1].mlp_s.requires_grad_(False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers[0].blocks

    def encode_support(self, s: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """s: B x D x G x G support features, mask: B x G x G. Returns the per-block caches."""
        s = s.permute(0, 2, 3, 1)
        caches = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # The last block's support update feeds nothing: skip it.
            s, cache = block.encode_support(s, mask, update=i < last)
            caches.append(cache)
        return caches

    def forward(self, q: torch.Tensor, caches: list[tuple[torch.Tensor, ...]]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """q: B x D x G x G query features.

        Returns (B x D x G x G after norm0 and ReLU, per block the alignment index B x nW).
        """
        q = q.permute(0, 2, 3, 1)
        indices = []
        for block, cache in zip(self.blocks, caches):
            q, index = block(q, *cache)
            indices.append(index)
        return F.relu(self.norm0(q)).permute(0, 3, 1, 2), indices
