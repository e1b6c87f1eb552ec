"""Exporting patch alignment as one custom node (``--patch-align plugin``).

During export, :class:`~sccan.train.model.transformer.PatchAlignment` calls the torch custom op
``sccan::patch_align`` (whose eager implementation is the model's own arithmetic), and the ONNX
exporter translates that op into one ``SccanPatchAlign`` node of domain ``sccan`` (see
:mod:`sccan.sdk.patch_align_op` for its inputs, outputs and semantics), followed by a Cast of the
index to int64 so that the graph's outputs are those of the standard-op variant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import onnx
import torch
from onnx.defs import OpSchema

from sccan.sdk.patch_align_op import COSINE_EPS, DOMAIN, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from sccan.train.model.transformer import PatchAlignment

_reference_forward = PatchAlignment.forward


@torch.library.custom_op("sccan::patch_align", mutates_args=())
def patch_align(query_windows: torch.Tensor, support_prototypes: torch.Tensor, support_has_fg: torch.Tensor,
                support_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's patch alignment of one tensor of support windows as one opaque op: (aligned, index int64)."""
    index = PatchAlignment().index(query_windows, support_prototypes, support_has_fg)
    return PatchAlignment.gather(support_tokens, index).contiguous(), index


@patch_align.register_fake
def _(query_windows, support_prototypes, support_has_fg, support_tokens):
    return torch.empty_like(support_tokens), query_windows.new_empty(query_windows.shape[:2], dtype=torch.int64)


SCHEMA = OpSchema(
    OP_TYPE, DOMAIN, 1, doc="SCCAN patch alignment (see sccan.sdk.patch_align_op)",
    inputs=[OpSchema.FormalParameter(n, "T") for n in
            ("query_windows", "support_prototypes", "support_has_fg", "support_tokens")],
    outputs=[OpSchema.FormalParameter("aligned", "T"), OpSchema.FormalParameter("index", "tensor(int32)")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16")],
    attributes=[OpSchema.Attribute("cosine_eps", OpSchema.AttrType.FLOAT, "cosine denominator floor"),
                OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
                OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version")])


def _translate(query_windows: Any, support_prototypes: Any, support_has_fg: Any, support_tokens: Any) -> Any:
    import onnxscript
    from onnxscript import opset18 as op

    node = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, 1), OP_TYPE, SCHEMA)
    aligned, index = node(query_windows, support_prototypes, support_has_fg, support_tokens, cosine_eps=COSINE_EPS,
                          plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
    return aligned, op.Cast(index, to=onnx.TensorProto.INT64)


def _plugin_forward(self: PatchAlignment, query_windows, support_prototypes, support_has_fg, support_keys,
                    support_values):
    # The node gathers whole windows of the query windows' shape (C x W x T x D); each support
    # window's keys (heads x T x head_dim) hold as many values, so they pass as that shape (a
    # reshape, no copy), once for the keys and once for the values (the node's alignment is a
    # few window means and W x W cosines: recomputing it costs less than a second gather node).
    def align(windows):
        aligned, index = torch.ops.sccan.patch_align(query_windows, support_prototypes, support_has_fg,
                                                     windows.reshape(query_windows.shape))
        return aligned.reshape(windows.shape), index

    keys, index = align(support_keys)
    values, _ = align(support_values)
    return keys, values, index


@contextlib.contextmanager
def plugin_patch_alignment() -> Iterator[dict[Any, Any]]:
    """While active, patch alignment runs through ``sccan::patch_align``; yields the exporter's
    ``custom_translation_table``."""
    PatchAlignment.forward = _plugin_forward
    try:
        yield {torch.ops.sccan.patch_align.default: _translate}
    finally:
        PatchAlignment.forward = _reference_forward
