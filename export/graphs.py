"""The three deployable graphs and their export to ONNX.

* ``backbone``: normalised images N x 3 x S x S -> ``mid``, ``high`` features;
* ``support_encoder``: one class's K shots of features + labels 1 x K x S x S -> the
  :class:`~sccan.sdk.schema.SupportFeatures` tensors, padded to ``max_shots``;
* ``query_decoder``: one query's features + SupportFeatures of C classes -> ``logits``
  C x 2 x S x S (the per-shot tensors' slot dimension may be cut to the most shots any class in the
  batch has: padding slots only cost time) and, per SCCA block, ``block{i}_align_index`` C x W_i (the aligned support window
  of each query window: for the parity gate and for display).

The input size is fixed; the image batch, the shots and the class batch are dynamic.
"""

from __future__ import annotations

import contextlib
import logging

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from sccan.sdk.schema import CLASS_DIM, SLOT_AXES, SupportFeatures
from sccan.train.model import SCCAN
from sccan.train.model.ops import resize

#: ONNX opset: TensorRT 10.0-10.3 parse opsets 9-20 and 11.x up to 24; 18 keeps GELU as Erf
#: arithmetic (the Gelu op is opset 20) and LayerNormalization as one op (opset 17).
OPSET = 18
#: The patch-alignment lowering. "standard-ops": reshape/mean windows, MatMul cosine, explicit
#: first-index argmax, GatherElements. "plugin": one SccanPatchAlign node per block. "both": the
#: standard graphs plus the decoder with plugin nodes (``query_decoder.plugin.onnx``), for
#: ``sccan build --patch-align auto`` to fall back to.
PATCH_ALIGN_MODES = ("standard-ops", "plugin", "both")
# The per-shot support tensors (SLOT_AXES) have a dynamic slot dimension in the decoder: the
# prior costs ~60 GFLOPs per slot at 473, so a runtime passes only as many slots as the batch uses.


class BackboneGraph(nn.Module):
    def __init__(self, model: SCCAN):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.extract(images)


class SupportEncoderGraph(nn.Module):
    def __init__(self, model: SCCAN, max_shots: int):
        super().__init__()
        self.model, self.max_shots = model, max_shots

    def forward(self, mid: torch.Tensor, high: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode_support_features(mid, high, masks, self.max_shots).values())


class QueryDecoderGraph(nn.Module):
    def __init__(self, model: SCCAN, max_shots: int, size: int):
        super().__init__()
        self.model, self.size = model, size
        self.names = model.support_layout(max_shots).names()

    def forward(self, mid: torch.Tensor, high: torch.Tensor, *support: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = SupportFeatures(dict(zip(self.names, support)))
        logits, indices = self.model.decode_query_features(mid, high, features, return_alignment=True)
        return (resize(logits, self.size), *indices)


@dataclass
class GraphSpec:
    """What one graph is exported from: module, example inputs, names, dynamic dimensions."""

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]


def graph_specs(model: SCCAN, size: int, max_shots: int, max_classes: int = 2) -> list[GraphSpec]:
    """The three graphs of ``model`` at input size ``size`` with example inputs (2 shots and 2 classes,
    or 1 where that is the maximum: the dimension is then static)."""
    model = model.eval()
    layout = model.support_layout(max_shots)
    names = layout.names()
    shots = min(2, max_shots)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(shots, 3, size, size, generator=g)
    masks = torch.zeros(1, shots, size, size)
    masks[..., size // 4: size // 2, size // 4: size // 2] = 1
    with torch.no_grad():
        mid, high = model.extract(images)
        support = model.encode_support_features(mid, high, masks, max_shots)
    two = tuple(torch.cat([v, v], 0) for v in support.values()) if max_classes > 1 else tuple(support.values())
    align = [f"block{i}_align_index" for i in range(model.config.num_blocks)]
    return [
        GraphSpec("backbone", BackboneGraph(model), (images,), ["images"], ["mid", "high"],
                  {"images": {0: "images"}}),
        GraphSpec("support_encoder", SupportEncoderGraph(model, max_shots), (mid, high, masks),
                  ["mid", "high", "masks"], names, {"mid": {0: "shots"}, "high": {0: "shots"}, "masks": {1: "shots"}}),
        GraphSpec("query_decoder", QueryDecoderGraph(model, max_shots, size), (mid[:1], high[:1], *two),
                  ["mid", "high", *names], ["logits", *align],
                  {n: ({0: CLASS_DIM, SLOT_AXES[n]: "slots"} if n in SLOT_AXES else {0: CLASS_DIM}) for n in names}),
    ]


def export_graph(spec: GraphSpec, path: Path, max_dims: dict[str, int],
                 patch_align: str = "standard-ops") -> onnx.ModelProto:
    """Export one graph to a self-contained ONNX file (weights inside) and return it.

    ``max_dims`` bounds each dynamic dimension (shots, classes, images). ``patch_align="plugin"``
    exports each block's patch alignment as one ``SccanPatchAlign`` node (see
    :mod:`sccan.export.plugin_op`).
    """
    # A dimension whose maximum is 1 is static (torch.export has no Dim with min = max, and an
    # example of size 1 is specialised anyway).
    dims = {n: torch.export.Dim(n, min=1, max=max_dims[n]) for n in {d for v in spec.dynamic.values() for d in v.values()}
            if max_dims[n] > 1}
    shapes = []
    for name in spec.input_names:
        axes = {axis: dims[d] for axis, d in (spec.dynamic.get(name) or {}).items() if d in dims}
        shapes.append(axes or None)
    n_fixed = 2 if spec.name == "query_decoder" else len(shapes)
    dynamic_shapes = tuple(shapes[:n_fixed]) + ((tuple(shapes[n_fixed:]),) if spec.name == "query_decoder" else ())
    from .plugin_op import plugin_patch_alignment

    # The exporter logs one warning per torchvision op it cannot register when torchvision is absent
    # (it is not a dependency): noise for every graph of every export.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    plugin = plugin_patch_alignment() if patch_align == "plugin" else contextlib.nullcontext({})
    with torch.no_grad(), warnings.catch_warnings(), plugin as table:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(spec.module, spec.example, dynamo=True, opset_version=OPSET,
                                    input_names=spec.input_names, output_names=spec.output_names,
                                    dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
                                    external_data=False, custom_translation_table=table or None)
    model = program.model_proto
    for value in model.graph.input:
        for axis, dim in spec.dynamic.get(value.name, {}).items():
            if dim in dims and not value.type.tensor_type.shape.dim[axis].dim_param:
                raise RuntimeError(f"{spec.name}: input {value.name} axis {axis} was specialised to a "
                                   "fixed size during export; the model code must not turn it into a Python int")
    onnx.save_model(model, str(path))
    return model
