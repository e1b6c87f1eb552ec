"""The FP16 precision plan: FP16 graphs with explicit Casts around declared FP32 islands.

TensorRT 11 builds strongly typed networks only (and 10.3 builds them too), so precision lives
in the graph. Islands are declared in the model: every node exported from inside an
:class:`~sccan.train.model.ops.Fp32Island` module (L2 norms of high-level features, cosine
denominators, the prior's weighted sum and min-max stretch) or a ``LayerNorm`` stays FP32; the
exporter records each node's module classes in its metadata. The conversion itself is
onnxconverter-common's ``float16`` with a node block list.

What a CPU can prove: ONNX Runtime's CPU provider computes many FP16 ops in FP32 internally, so
running the FP16 graph here proves that every *stored* tensor fits FP16 (no inf/NaN) and that the
graph is type-consistent, not FP16 arithmetic; that is left to the engine parity gate on a GPU.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from sccan.sdk.patch_align_op import ort_session

from .episodes import to_fp16_feeds  # noqa: F401 - re-exported: the FP16 graphs' inputs

#: Module classes whose nodes stay FP32 (matched on the class name's last component).
FP32_ISLAND_CLASSES = ("L2Normalize", "CosineSimilarity", "PriorStretch", "LayerNorm")
FP16_MAX = 65504.0


def fp32_island_nodes(model: onnx.ModelProto, scopes: tuple[str, ...] = ()) -> list[str]:
    """Names of the nodes exported from inside an FP32-island module, or from a module whose path
    ends with one of ``scopes`` (e.g. ``backbone.body._blocks.0``). Needs the exporter's metadata."""
    names = []
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        classes = {c.rsplit(".", 1)[-1] for c in ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))}
        paths = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        in_scope = any(path.endswith(scope) or f"{scope}." in path for path in paths for scope in scopes)
        if classes & set(FP32_ISLAND_CLASSES) or in_scope:
            names.append(node.name)
    return names


def island_summary(model: onnx.ModelProto, islands: list[str]) -> dict[str, int]:
    """Per island class (or "backbone (declared)" for backbone scopes), how many nodes stay FP32."""
    counts: dict[str, int] = {}
    wanted = set(islands)
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        props = {p.key: p.value for p in node.metadata_props}
        classes = [c.rsplit(".", 1)[-1] for c in ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))]
        owner = next((c for c in reversed(classes) if c in FP32_ISLAND_CLASSES), "backbone (declared)")
        counts[owner] = counts.get(owner, 0) + 1
    return counts


def convert_to_fp16(model: onnx.ModelProto, islands: list[str]) -> onnx.ModelProto:
    """An FP16 copy of ``model`` (inputs and outputs FP16 too) with ``islands`` kept in FP32."""
    from onnxconverter_common import float16

    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep = set(islands)
    _unshare_initializers(model, keep)
    # The converter changes tensor types but not the target of explicit Casts (e.g. a boolean mask
    # cast to float): retarget those outside the islands so the graph stays type-consistent.
    for node in model.graph.node:
        if node.op_type == "Cast" and node.name not in keep:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every small weight it rounds to FP16's range
        return float16.convert_float_to_float16(model, keep_io_types=False, node_block_list=list(keep),
                                                check_fp16_ready=False)


def _unshare_initializers(model: onnx.ModelProto, islands: set[str]) -> None:
    """Give island nodes their own copy of any initializer that other nodes also use (e.g. the 0 and
    6 of every ReLU6's Clip): the converter types an initializer once, FP16 or FP32, not both."""
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, set[bool]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, set()).add(node.name in islands)
    shared = {name for name, kinds in users.items() if len(kinds) == 2}
    for node in model.graph.node:
        if node.name not in islands:
            continue
        for k, name in enumerate(node.input):
            if name in shared:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__fp32_{node.name}"
                model.graph.initializer.append(copy)
                node.input[k] = copy.name


def with_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every intermediate tensor is also a graph output (for the storage sweep)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in have:
                model.graph.output.append(helper.make_empty_tensor_value_info(name))
                have.add(name)
    return model


@dataclass
class StorageSweep:
    """Every FP16 tensor the graph stores, on one input: how many, the largest magnitude, failures."""

    tensors: int = 0
    max_abs: float = 0.0
    max_abs_tensor: str = ""
    nonfinite: list[str] = field(default_factory=list)

    def merge(self, other: "StorageSweep") -> None:
        self.tensors = max(self.tensors, other.tensors)
        if other.max_abs > self.max_abs:
            self.max_abs, self.max_abs_tensor = other.max_abs, other.max_abs_tensor
        self.nonfinite += [n for n in other.nonfinite if n not in self.nonfinite]

    @property
    def ok(self) -> bool:
        return not self.nonfinite


def storage_sweep(model_fp16: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> StorageSweep:
    """Run the FP16 graph with every intermediate exposed; find any stored inf/NaN (overflow)."""
    session = ort_session(with_all_outputs(model_fp16), providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    sweep = StorageSweep()
    for meta, value in zip(session.get_outputs(), outputs):
        if value.dtype != np.float16:
            continue
        sweep.tensors += 1
        finite = np.isfinite(value)
        if not finite.all():
            sweep.nonfinite.append(meta.name)
        peak = float(np.abs(value[finite]).max(initial=0.0))
        if peak > sweep.max_abs:
            sweep.max_abs, sweep.max_abs_tensor = peak, meta.name
    return sweep
