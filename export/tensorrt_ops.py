"""Will TensorRT's ONNX parser take this graph? Operator tables kept as data, and the check.

Source: onnx-tensorrt ``docs/operators.md`` (the 10.x matrix; TensorRT 10.0-10.3 parse opsets
9-20, 11.x up to 24). Restrictions that can be checked statically are checked; the rest are
stated. Separately, this project bans some operators the parser accepts, each with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from sccan.sdk.patch_align_op import DOMAIN as PLUGIN_DOMAIN
from sccan.sdk.patch_align_op import OP_TYPE as PLUGIN_OP

#: Opset range the parser accepts, per TensorRT line.
OPSETS = {"10.3": (9, 20), "11.x": (9, 24)}

#: Operators the parser supports in TensorRT 10.3 and 11.x, with the restriction text of the
#: matrix. Ops only in later parsers are in LATER_ONLY.
SUPPORTED: dict[str, str] = {
    "Abs": "", "Acos": "", "Acosh": "", "Add": "", "And": "", "ArgMax": "axis within the last 4 dims",
    "ArgMin": "axis within the last 4 dims", "Asin": "", "Asinh": "", "Atan": "", "Atanh": "",
    "AveragePool": "2D or 3D pooling only; dilations empty or all ones", "BatchNormalization": "",
    "Cast": "", "CastLike": "", "Ceil": "", "Celu": "", "Clip": "", "Concat": "",
    "Constant": "no sparse_value / string values", "ConstantOfShape": "", "Conv": "weights must be an initializer",
    "ConvTranspose": "weights must be an initializer", "Cos": "", "Cosh": "",
    "CumSum": "axis must be a build-time constant", "DepthToSpace": "",
    "DequantizeLinear": "x_zero_point must be zero", "Div": "", "Dropout": "is_training must be a constant False",
    "Einsum": "", "Elu": "", "Equal": "", "Erf": "", "Exp": "", "Expand": "", "EyeLike": "",
    "Flatten": "", "Floor": "", "Gather": "", "GatherElements": "", "GatherND": "", "Gemm": "",
    "GlobalAveragePool": "", "GlobalLpPool": "", "GlobalMaxPool": "", "Greater": "", "GreaterOrEqual": "",
    "GridSample": "4D input", "GroupNormalization": "", "GRU": "", "HardSigmoid": "", "HardSwish": "",
    "Hardmax": "", "Identity": "", "If": "branches of the same rank", "InstanceNormalization": "",
    "IsInf": "", "IsNaN": "", "LayerNormalization": "only the first output Y", "LeakyRelu": "",
    "Less": "", "LessOrEqual": "", "Log": "", "LogSoftmax": "", "Loop": "", "LRN": "", "LSTM": "",
    "LpNormalization": "", "LpPool": "", "MatMul": "", "Max": "", "MaxPool": "2D or 3D; no Indices output",
    "Mean": "", "MeanVarianceNormalization": "", "Min": "", "Mish": "", "Mod": "", "Mul": "", "Neg": "",
    "NonMaxSuppression": "", "NonZero": "", "Not": "", "OneHot": "depth must be a build-time constant",
    "Or": "", "Pad": "pads (and axes) must be initializers", "ParametricSoftplus": "", "Pow": "",
    "PRelu": "", "QuantizeLinear": "y_zero_point must be 0", "RandomNormal": "", "RandomNormalLike": "",
    "RandomUniform": "", "RandomUniformLike": "", "Range": "", "Reciprocal": "",
    "ReduceL1": "axes must be an initializer", "ReduceL2": "axes must be an initializer",
    "ReduceLogSum": "axes must be an initializer", "ReduceLogSumExp": "axes must be an initializer",
    "ReduceMax": "axes must be an initializer", "ReduceMean": "axes must be an initializer",
    "ReduceMin": "axes must be an initializer", "ReduceProd": "axes must be an initializer",
    "ReduceSum": "axes must be an initializer", "ReduceSumSquare": "axes must be an initializer",
    "Relu": "", "Reshape": "", "Resize": "modes nearest/linear; coordinate mode align_corners or half_pixel "
    "(this project); no antialias", "ReverseSequence": "", "RNN": "", "RoiAlign": "", "Round": "",
    "ScaledTanh": "", "Scan": "", "Scatter": "", "ScatterElements": "", "ScatterND": "reduction none only",
    "Selu": "", "Shape": "", "Shrink": "", "Sigmoid": "", "Sign": "", "Sin": "", "Sinh": "", "Size": "",
    "Slice": "axes must be an initializer", "Softmax": "", "Softplus": "", "Softsign": "",
    "SpaceToDepth": "", "Split": "", "Sqrt": "", "Squeeze": "axes must be a constant", "Sub": "", "Sum": "",
    "Tan": "", "Tanh": "", "ThresholdedRelu": "", "Tile": "", "TopK": "K an initializer below 3840; "
    "axis within the last 4 dims; sorted=1", "Transpose": "", "Trilu": "", "Unsqueeze": "axes must be a constant",
    "Upsample": "", "Where": "", "Xor": "",
}

#: Parsed only by later parsers than 10.3 (or by opsets above 20): not allowed in our graphs.
LATER_ONLY = {"Attention": "TensorRT 10.14+", "RMSNormalization": "opset 23", "RotaryEmbedding": "opset 23",
              "TensorScatter": "opset 24", "Gelu": "opset 20 op; export at opset 18 lowers GELU to Erf"}

#: Operators the parser accepts but this project does not allow in its graphs.
BANNED: dict[str, str] = {
    "NonZero": "data-dependent output shape (no static engine shapes; a masked assignment exports to it)",
    "ScatterND": "data-dependent writes from in-place masked assignment; known FP16 accuracy bugs in TensorRT",
    "Loop": "control flow: slow, and a sign of data-dependent Python in the model",
    "If": "control flow: a sign of data-dependent Python branching in the model",
    "RandomNormal": "non-deterministic", "RandomNormalLike": "non-deterministic",
    "RandomUniform": "non-deterministic", "RandomUniformLike": "non-deterministic",
}

#: Resize coordinate modes this project allows (the model only uses align_corners).
RESIZE_MODES = {"align_corners", "half_pixel"}


@dataclass(frozen=True)
class Problem:
    """One reason TensorRT would refuse (or this project bans) a node."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} node '{self.node}': {self.reason}"


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    """Initializers, Constant outputs, and the outputs of DequantizeLinear nodes of constants (the
    quantized weights of an explicitly quantized graph, which TensorRT takes as build-time weights)."""
    names = {i.name for i in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    names |= {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in names}
    return names


#: Element types TensorRT's explicit quantization takes for Q/DQ (10.3: INT8, FP8, INT4).
QDQ_TYPES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.FLOAT8E4M3FN: "fp8", onnx.TensorProto.INT4: "int4"}


def _qdq_problems(model: onnx.ModelProto) -> list[Problem]:
    """Q/DQ nodes as TensorRT's explicit quantization requires: scales are constants, zero points
    are constants equal to 0 of a type it quantizes to (INT8, FP8, INT4: no UINT8)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
              for n in graph.node if n.op_type == "Constant"}
    out = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name = node.name or "<unnamed>"
        if len(node.input) < 2 or (node.input[1] not in inits and node.input[1] not in consts):
            out.append(Problem(name, node.op_type, "the scale must be an initializer/constant"))
        if len(node.input) < 3 or not node.input[2]:
            if node.op_type == "QuantizeLinear" and not _attr(node, "output_dtype", 0):
                out.append(Problem(name, node.op_type, "no zero point: quantizes to UINT8 (TensorRT: INT8, FP8 "
                                                       "or INT4 with a zero point of that type)"))
            continue
        zp = inits.get(node.input[2]) or consts.get(node.input[2])
        if zp is None:
            out.append(Problem(name, node.op_type, "the zero point must be an initializer/constant"))
            continue
        if zp.data_type not in QDQ_TYPES:
            out.append(Problem(name, node.op_type, f"zero point of type "
                               f"{onnx.TensorProto.DataType.Name(zp.data_type)} (TensorRT: INT8, FP8 or INT4)"))
        elif zp.data_type == onnx.TensorProto.INT8 and np.any(numpy_helper.to_array(zp) != 0):
            out.append(Problem(name, node.op_type, "zero point is not 0 (TensorRT quantizes symmetrically)"))
    return out


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best-effort here; axis checks then skip
        inferred = model
    ranks = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def check_model(model: onnx.ModelProto, target: str = "10.3") -> list[Problem]:
    """Every node TensorRT ``target`` ("10.3" or "11.x") would refuse, or this project bans."""
    problems: list[Problem] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    lo, hi = OPSETS[target]
    if opset is None or not lo <= opset <= hi:
        problems.append(Problem("<model>", "opset", f"opset {opset} outside TensorRT {target}'s {lo}-{hi}"))
    graph = model.graph
    constants = _constant_names(graph)
    ranks = _ranks(model)
    for node in graph.node:
        op, name = node.op_type, node.name or "<unnamed>"
        if node.domain == PLUGIN_DOMAIN and op == PLUGIN_OP:
            continue  # this project's own plugin (libsccan_trt_plugin.so), found by the parser's plugin fallback
        if node.domain not in ("", "ai.onnx"):
            problems.append(Problem(name, op, f"custom domain '{node.domain}' needs a TensorRT plugin"))
            continue
        if op in BANNED:
            problems.append(Problem(name, op, f"banned by this project: {BANNED[op]}"))
            continue
        if op in LATER_ONLY:
            problems.append(Problem(name, op, f"not parsed by TensorRT 10.3 ({LATER_ONLY[op]})"))
            continue
        if op not in SUPPORTED:
            problems.append(Problem(name, op, "not supported by the TensorRT ONNX parser"))
            continue
        problems += _restrictions(node, name, constants, ranks)
    return problems + _qdq_problems(model)


def _restrictions(node: onnx.NodeProto, name: str, constants: set[str], ranks: dict[str, int]) -> list[Problem]:
    op, out = node.op_type, []

    def need_constant(index: int, what: str) -> None:
        if len(node.input) > index and node.input[index] and node.input[index] not in constants:
            out.append(Problem(name, op, f"{what} must be an initializer/constant"))

    if op in ("Conv", "ConvTranspose"):
        need_constant(1, "weights")
    elif op == "Pad":
        need_constant(1, "pads")
        need_constant(3, "axes")
    elif op == "Slice":
        need_constant(3, "axes")
    elif op in ("Squeeze", "Unsqueeze"):
        need_constant(1, "axes")
    elif op.startswith("Reduce"):
        need_constant(1, "axes")
    elif op == "Resize":
        mode = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in RESIZE_MODES:
            out.append(Problem(name, op, f"coordinate_transformation_mode '{mode}' (allowed: {sorted(RESIZE_MODES)})"))
        interp = _attr(node, "mode", b"nearest")
        interp = interp.decode() if isinstance(interp, bytes) else interp
        if interp not in ("nearest", "linear"):
            out.append(Problem(name, op, f"mode '{interp}' (TensorRT: nearest, linear)"))
        if _attr(node, "antialias", 0):
            out.append(Problem(name, op, "antialiasing is not supported"))
    elif op in ("ArgMax", "ArgMin", "TopK"):
        rank = ranks.get(node.input[0])
        axis = _attr(node, "axis", -1)
        if rank is not None and (axis if axis >= 0 else axis + rank) < rank - 4:
            out.append(Problem(name, op, f"axis {axis} of a rank-{rank} tensor is outside the last 4 dims"))
        if op == "TopK":
            need_constant(1, "K")
            if _attr(node, "sorted", 1) != 1:
                out.append(Problem(name, op, "sorted must be 1"))
    elif op == "Dropout":
        if len(node.input) > 2 and node.input[2] not in constants:
            out.append(Problem(name, op, "training_mode must be a constant False"))
    elif op == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        out.append(Problem(name, op, "only the first output Y is supported"))
    return out


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Number of nodes of each operator type, most frequent first."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of weight elements stored in the graph's initializers."""
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        total += n
    return total


__all__ = ["SUPPORTED", "BANNED", "LATER_ONLY", "OPSETS", "Problem", "check_model", "op_counts",
           "parameter_count"]
