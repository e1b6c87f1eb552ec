"""The INT8 decoder's ONNX Runtime encoding cut around the prior's product, so that the support
keys can be a constant of a small session of their own (why: ``sccan.sdk.prior_product``). Three
graphs, all cut from the same encoding, so that every value is computed by the same nodes:

- ``keys``: ``prior_keys`` (C x Dh x S x N, FP32) -> the product's INT8 second operand
  (C x Dh x S*N): a reshape and the decoder's own quantize (its scale and zero point);
- ``product``: the query's high features -> the cosine product (1 x hw x S*N), its second operand
  a placeholder initializer (``Dh x 1``) that a session replaces with one class's INT8 keys
  (``onnxruntime.SessionOptions.add_initializer``);
- ``rest``: every other node of the decoder, reading the product (C x hw x S*N) as an input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.utils import Extractor

from sccan.sdk.prior_product import KEYS_CONSTANT, PARTS, PRODUCT_INPUT

from .onnx_walk import computed_from, producers


class PriorSplitError(ValueError):
    """The graph does not have the shape this cut expects (no split is written then)."""


@dataclass
class PriorSplit:
    keys: onnx.ModelProto
    product: onnx.ModelProto
    rest: onnx.ModelProto


def _find_product(graph: onnx.GraphProto) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The prior's MatMul and the quantize of its keys operand (the dequantize's input)."""
    made_by = producers(graph)
    found = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        dq = made_by.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = made_by.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and computed_from(made_by, q.input[0], "prior_keys", 6):
            found.append((node, q))
    if len(found) != 1:
        raise PriorSplitError(f"expected one quantized product with the prior's keys, found {len(found)}")
    return found[0]


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node that reads ``old`` reads ``new`` instead."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new


def _checked(model: onnx.ModelProto, what: str, inputs: list[str]) -> onnx.ModelProto:
    """``model`` after a check that its only inputs are ``inputs`` and that every node input is produced."""
    graph = model.graph
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    known |= {o for n in graph.node for o in n.output}
    dangling = sorted({i for n in graph.node for i in n.input} - known)
    if dangling or [i.name for i in graph.input] != inputs:
        raise PriorSplitError(f"the {what} graph is not closed: inputs {[i.name for i in graph.input]} "
                              f"(expected {inputs}), unproduced values {dangling[:5]}")
    return model


def split_prior_product(model: onnx.ModelProto) -> PriorSplit:
    """Cut the INT8 decoder's ONNX Runtime encoding ``model`` into the keys, product and rest
    graphs described in the module's docstring.

    Raises:
        PriorSplitError: the prior's product or its operands are not where this cut expects, or the
            rest of the decoder reads the query's high features or the keys other than through it.
    """
    graph = model.graph
    product, keys_q = _find_product(graph)
    inputs = {i.name: i for i in graph.input}
    outputs = [o.name for o in graph.output]
    if "high" not in inputs or "prior_keys" not in inputs:
        raise PriorSplitError("the decoder has no 'high' or 'prior_keys' input")
    dh = inputs["prior_keys"].type.tensor_type.shape.dim[1]
    if not dh.HasField("dim_value"):
        raise PriorSplitError("the decoder's input prior_keys has no static dimension 1")
    extractor = Extractor(onnx.shape_inference.infer_shapes(model))

    keys = _keys_graph(model, keys_q, dh.dim_value)

    head = extractor.extract_model(["high", keys_q.output[0]], [product.output[0]])
    head = _checked(head, "product", ["high", keys_q.output[0]])
    head_graph = head.graph
    _rename_input(head_graph, keys_q.output[0], KEYS_CONSTANT)
    del head_graph.input[1:]
    head_graph.initializer.append(numpy_helper.from_array(np.zeros((dh.dim_value, 1), np.int8), KEYS_CONSTANT))
    head_graph.output[0].name = PRODUCT_INPUT
    for node in head_graph.node:
        if node.output[0] == product.output[0]:
            node.output[0] = PRODUCT_INPUT
    shape = head_graph.output[0].type.tensor_type.shape
    del shape.dim[:]
    shape.dim.add().dim_value = 1
    for label in ("hw", "slot_positions"):
        shape.dim.add().dim_param = label

    rest_inputs = [n for n in inputs if n not in ("high", "prior_keys")] + [product.output[0]]
    rest = extractor.extract_model(rest_inputs, outputs)
    rest = _checked(rest, "rest", rest_inputs)
    rest_graph = rest.graph
    _rename_input(rest_graph, product.output[0], PRODUCT_INPUT)
    rest_graph.input[-1].name = PRODUCT_INPUT
    shape = rest_graph.input[-1].type.tensor_type.shape
    del shape.dim[:]
    for label in ("classes", "hw", "slot_positions"):
        shape.dim.add().dim_param = label
    for part in (keys, head, rest):
        del part.graph.value_info[:]
        part.opset_import.extend(o for o in model.opset_import
                                 if o.domain not in {p.domain for p in part.opset_import})
        onnx.checker.check_model(part)
    return PriorSplit(keys, head, rest)


def _keys_graph(model: onnx.ModelProto, keys_q: onnx.NodeProto, dh: int) -> onnx.ModelProto:
    """prior_keys (C x Dh x S x N) -> C x Dh x S*N INT8: a reshape (the decoder's own reads its
    shape from other inputs) and the decoder's quantize node with its scale and zero point."""
    inits = {i.name: i for i in model.graph.initializer}
    constants = [inits[name] for name in keys_q.input[1:] if name]
    if len(constants) != len(keys_q.input[1:]):
        raise PriorSplitError("the keys' quantize node has a scale or zero point that is not a constant")
    shape = numpy_helper.from_array(np.array([0, 0, -1], np.int64), "prior_keys_shape")
    nodes = [helper.make_node("Reshape", ["prior_keys", shape.name], ["prior_keys_flat"]),
             helper.make_node("QuantizeLinear", ["prior_keys_flat", *keys_q.input[1:]], [keys_q.output[0]])]
    source = next(i for i in model.graph.input if i.name == "prior_keys")
    out = helper.make_tensor_value_info(keys_q.output[0], onnx.TensorProto.INT8, ["classes", dh, "slot_positions"])
    graph = helper.make_graph(nodes, "prior_keys_int8", [source], [out], initializer=[shape, *constants])
    keys = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return _checked(keys, "keys", ["prior_keys"])


def split_files(encoding: Path) -> dict[str, Path]:
    """Write the split of the decoder encoding at ``encoding`` beside it
    (``query_decoder.int8.onnxruntime.prior_keys.onnx`` ...): role -> path.

    Raises:
        PriorSplitError: as :func:`split_prior_product`.
    """
    split = split_prior_product(onnx.load(str(encoding)))
    paths = {}
    for role, suffix in PARTS.items():
        path = encoding.with_name(encoding.name.removesuffix(".onnx") + f".{suffix}.onnx")
        onnx.save_model(getattr(split, role), str(path))
        paths[role] = path
    return paths


__all__ = ["split_prior_product", "split_files", "PriorSplit", "PriorSplitError"]
