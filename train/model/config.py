"""SCCAN model configuration: the paper's numbers by default, smaller ones for fast tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class SCCANConfig:
    """Everything that fixes the network's shapes.

    Attributes:
        backbone: ``resnet50``, ``resnet101`` or ``efficientnet_lite0``.
        backbone_width: ResNet base width (64 = the paper; smaller for tests). Ignored by Lite-0.
        grid: side of the square feature grid (64 in the paper).
        embed_dim: feature/token width after ``down_*`` (256).
        num_blocks: SCCA blocks (8); odd blocks are shifted.
        num_heads: attention heads (8).
        window: window side (8).
        mlp_ratio: MLP hidden width / embed_dim (1).
        aspp_dilations: dilations of the three 3x3 ASPP branches (6, 12, 18).
        feature_dropout: Dropout2d rate after ``down_query``/``down_supp`` in training (0.5, the
            paper's; with few channels it hides the support-query correspondence early on).
        lite0_high_block: EfficientNet-Lite0 only: the MBConv block (0-15) whose output is the
            high-level feature map for the prior; None (default) = the 1280-channel head. Earlier
            blocks keep colour and texture, which the head has abstracted away.
        lite0_output_stride: EfficientNet-Lite0 only: 16 (default; 30 x 30 features at 473) or 8,
            which turns the stride of stage 4 into dilation (4x the cost of the later blocks) for
            small inputs whose stride-16 maps would be only a few cells across.
        lite0_mid_blocks: EfficientNet-Lite0 only: the two MBConv blocks whose outputs, concatenated,
            are the mid-level features (default 7 and 10, as ResNet's layer2 + layer3); earlier
            blocks keep more colour. Both must have the same stride.
    """

    backbone: str = "resnet50"
    backbone_width: int = 64
    grid: int = 64
    embed_dim: int = 256
    num_blocks: int = 8
    num_heads: int = 8
    window: int = 8
    mlp_ratio: float = 1.0
    aspp_dilations: tuple[int, int, int] = (6, 12, 18)
    feature_dropout: float = 0.5
    lite0_high_block: int | None = None
    lite0_output_stride: int = 16
    lite0_mid_blocks: tuple[int, int] = (7, 10)

    def __post_init__(self) -> None:
        if self.grid % self.window or self.window % 2:
            raise ValueError(f"grid ({self.grid}) must be a multiple of an even window ({self.window})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads")
        object.__setattr__(self, "aspp_dilations", tuple(self.aspp_dilations))
        object.__setattr__(self, "lite0_mid_blocks", tuple(self.lite0_mid_blocks))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["aspp_dilations"] = list(self.aspp_dilations)
        d["lite0_mid_blocks"] = list(self.lite0_mid_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SCCANConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SCCAN config keys {unknown}")
        return cls(**d)


#: The edge configuration on EfficientNet-Lite0 (stride-16 features: 30 x 30 at 473).
#: A 32 x 32 grid, 128-wide tokens in 4 heads of 32 and ASPP dilations scaled to the grid; the
#: module design is SCCAN's. See the README for what was traded.
EDGE_DEFAULTS: dict[str, Any] = dict(grid=32, embed_dim=128, num_blocks=8, num_heads=4,
                                     window=8, aspp_dilations=(3, 6, 9))
