"""Constants the command-line parsers need, kept apart from the modules that import torch and onnx,
so that ``sccan --help`` loads neither."""

from __future__ import annotations

#: The INT8 accuracy gate of ``sccan quantize``: pixel agreement with FP32, mIoU and DAVIS J drops.
MASK_AGREEMENT = 0.99
MIOU_DROP = 0.01
J_DROP = 0.01

#: ``sccan build``: optimisation profiles per engine (Segmenters and clones in use at once).
DEFAULT_CONTEXTS = 2
#: ``sccan build --patch-align`` choices.
PATCH_ALIGN_CHOICES = ("auto", "standard-ops", "plugin")
