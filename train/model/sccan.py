"""SCCAN: Self-Calibrated Cross Attention Network for few-shot segmentation (ICCV 2023).

Implemented from the paper and ``shared/docs/sccan-reference.md``. Parameter and buffer names
are those of the authors' released checkpoints. The network is split the way it is deployed:

* :meth:`SCCAN.extract`: normalised images -> (mid, high) backbone features;
* :meth:`SCCAN.encode_support_features`: support features + masks -> :class:`SupportFeatures`
  (everything that depends on the support set alone);
* :meth:`SCCAN.decode_query_features`: query features + :class:`SupportFeatures` -> logits.

``forward`` composes the three, so the split is exact by construction.
"""

from __future__ import annotations

import torch
from torch import nn

from sccan.sdk.schema import SupportFeatures, SupportLayout

from ..backbones import FeatureBackbone, normalization
from .config import SCCANConfig
from .decoder import ASPP, decode
from .ops import L2Normalize, pad_shots, resize
from .prior import PriorMask
from .transformer import SCCATransformer

MASK_EPS = 5e-4


class SCCAN(nn.Module):
    """The SCCAN network. Build it with :func:`sccan.train.model.build_model`.

    Images are B x 3 x H x W, RGB, normalised with :attr:`mean`/:attr:`std` (0..255 units).
    Support labels are B x K x H x W with 0 = background, 1 = foreground, 255 = ignore (counted
    as background). The number of shots K comes from the input.
    """

    def __init__(self, config: SCCANConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.backbone = FeatureBackbone(config.backbone, config.backbone_width, config.lite0_high_block,
                                        config.lite0_output_stride, config.lite0_mid_blocks)
        mid = self.backbone.mid_channels
        p = config.feature_dropout
        self.down_query = nn.Sequential(nn.Conv2d(mid, d, 1, bias=False), nn.ReLU(), nn.Dropout2d(p))
        self.down_supp = nn.Sequential(nn.Conv2d(mid, d, 1, bias=False), nn.ReLU(), nn.Dropout2d(p))
        self.init_merge_query = nn.Sequential(nn.Conv2d(2 * d + 1, d, 1, bias=False))
        self.init_merge_supp = nn.Sequential(nn.Conv2d(2 * d + 1, d, 1, bias=False))
        self.transformer = SCCATransformer(d, config.num_blocks, config.num_heads, config.window,
                                           config.mlp_ratio)
        self.ASPP_meta = ASPP(d, config.aspp_dilations)
        self.res1_meta = nn.Sequential(nn.Conv2d(5 * d, d, 1, bias=False), nn.ReLU())
        self.res2_meta = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU(),
                                       nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU())
        self.cls_meta = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU(),
                                      nn.Dropout2d(0.1), nn.Conv2d(d, 2, 1))
        self.prior = PriorMask()
        self.normalize_keys = L2Normalize(dim=1)
        self.mean, self.std = normalization(config.backbone)

    def support_layout(self, max_shots: int) -> SupportLayout:
        """The :class:`SupportLayout` of this model's support features with ``max_shots`` slots."""
        c = self.config
        return SupportLayout(grid=c.grid, embed_dim=c.embed_dim, high_channels=self.backbone.high_channels,
                             num_blocks=c.num_blocks, window=c.window, max_shots=max_shots,
                             num_heads=c.num_heads)

    # -- the three deployable parts -------------------------------------------------------------

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N x 3 x H x W normalised images -> (mid N x Cm x h x w, high N x Ch x h x w)."""
        return self.backbone(images)

    def encode_support_features(self, mid: torch.Tensor, high: torch.Tensor, masks: torch.Tensor,
                                max_shots: int | None = None) -> SupportFeatures:
        """Support features of B sets of K shots -> :class:`SupportFeatures` of B classes.

        Args:
            mid: (B*K) x Cm x h x w and high: (B*K) x Ch x h x w, from :meth:`extract`, shots of
                a set consecutive.
            masks: B x K x H x W labels (1 = foreground; 0 and 255 are background).
            max_shots: shot slots to pad the per-shot prior tensors to (default K).
        """
        b, k = masks.shape[:2]
        g, d = self.config.grid, self.config.embed_dim
        max_shots = k if max_shots is None else max_shots
        if k > max_shots:
            raise ValueError(f"{k} shots exceed max_shots={max_shots}")
        fg = (masks == 1).to(mid.dtype).reshape(b * k, 1, *masks.shape[-2:])
        m = resize(fg, g)  # BK x 1 x G x G
        feat = resize(self.down_supp(mid), g)  # BK x D x G x G
        masked = feat * m
        shot_prototypes = masked.sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + MASK_EPS)  # BK x D
        supp_feat = masked.reshape(b, k, d, g, g).mean(dim=1)
        supp_mask = m.reshape(b, k, 1, g, g).mean(dim=1)
        prototype = shot_prototypes.reshape(b, k, d).mean(dim=1)
        merged = self.init_merge_supp(torch.cat([supp_feat, prototype[:, :, None, None].expand(b, d, g, g),
                                                 supp_mask], dim=1))
        caches = self.transformer.encode_support(merged, supp_mask[:, 0])

        keys = self.normalize_keys(resize(high, g).flatten(2))  # BK x Ch x GG
        keys = keys.reshape(b, k, keys.shape[1], g * g)
        prior_mask = m.reshape(b, k, g * g)
        valid = torch.ones(b, k, dtype=mid.dtype, device=mid.device)
        keys, prior_mask, valid = (pad_shots(t, max_shots) for t in (keys, prior_mask, valid))
        keys = keys.transpose(1, 2).contiguous()  # B x Ch x slots x GG: all shots' keys, one matrix

        tensors = {"prototype": prototype, "prior_keys": keys, "prior_mask": prior_mask, "shot_valid": valid}
        for i, (keys, values, prototypes, has_fg) in enumerate(caches):
            tensors[f"block{i}_keys"] = keys
            tensors[f"block{i}_values"] = values
            tensors[f"block{i}_prototypes"] = prototypes
            tensors[f"block{i}_has_fg"] = has_fg
        return SupportFeatures(tensors)

    def decode_query_features(self, mid: torch.Tensor, high: torch.Tensor, support: SupportFeatures,
                              return_alignment: bool = False
                              ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Query features (batch 1, broadcast over the C classes, or batch C) + support -> C x 2 x G x G.

        Work that does not depend on the class (``down_query``, the query's high-level
        normalisation) runs once on the query batch before it is broadcast. With
        ``return_alignment`` also returns, per SCCA block, the support window aligned to each
        query window (C x nW int64).
        """
        g, d = self.config.grid, self.config.embed_dim
        c = support.num_classes
        if mid.shape[0] not in (1, c):
            raise ValueError(f"query batch {mid.shape[0]} must be 1 (broadcast) or the class count {c}")
        query = resize(self.down_query(mid), g)  # Bq x D x G x G
        prior = self.prior(high, support["prior_keys"], support["prior_mask"], support["shot_valid"])
        query = query.expand(c, d, g, g)
        prototype = support["prototype"][:, :, None, None].expand(c, d, g, g)
        x = self.init_merge_query(torch.cat([query, prototype, prior], dim=1))
        caches = [support.block(i) for i in range(self.config.num_blocks)]
        x, indices = self.transformer(x, caches)
        logits = decode(self.ASPP_meta, self.res1_meta, self.res2_meta, self.cls_meta, x)
        return (logits, indices) if return_alignment else logits

    # -- image-level API -------------------------------------------------------------------------

    def encode_support(self, support_images: torch.Tensor, support_masks: torch.Tensor,
                       max_shots: int | None = None) -> SupportFeatures:
        """B x K x 3 x H x W normalised images + B x K x H x W labels -> SupportFeatures (B classes)."""
        b, k = support_images.shape[:2]
        mid, high = self.extract(support_images.reshape(b * k, *support_images.shape[2:]))
        return self.encode_support_features(mid, high, support_masks, max_shots)

    def decode_query(self, query: torch.Tensor, support: SupportFeatures) -> torch.Tensor:
        """B x 3 x H x W normalised query (B = 1 or the class count) -> C x 2 x H x W logits."""
        mid, high = self.extract(query)
        logits = self.decode_query_features(mid, high, support)
        return resize(logits, tuple(query.shape[-2:]))

    def forward(self, query: torch.Tensor, support_images: torch.Tensor,
                support_masks: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits B x 2 x H x W for B episodes of K shots."""
        return self.decode_query(query, self.encode_support(support_images, support_masks))


__all__ = ["SCCAN"]
