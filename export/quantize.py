"""``sccan quantize``: the INT8 precision of a bundle, calibrated on real data and gated.

One quantized graph serves ONNX Runtime's CPU provider and TensorRT: explicit quantization in QDQ
form (QuantizeLinear / DequantizeLinear pairs in the graph), written by ONNX Runtime's own
quantization tool (``onnxruntime.quantization.quantize_static``): it ships with the runtime the SDK
already uses, needs no GPU, and writes exactly what TensorRT's explicit quantization takes when
asked to: symmetric INT8 activations and weights (every zero point 0), per-channel weights (Conv
output channels, MatMul columns), FP32 biases. NVIDIA's Model Optimizer does the same on a GPU
host; its ONNX path pulls CUDA-only dependencies, so it was not chosen for a tool that must run on
the robot's CPU and in CI.

Steps (each graph on its own FP32 inputs, so one graph's error does not shape another's ranges):

1. Calibration: episodes from the ``--calibration`` data (a DAVIS-layout folder, or a data config
   naming any dataset the project reads: YOLO-seg, label PNGs, image + mask folders, COCO,
   PASCAL). Their supports are registered through the FP32 graphs, so the decoder is calibrated
   on real support features; min-max ranges of every Conv / MatMul input.
2. Sensitivity sweep, per graph: the whole graph quantized; if, alone, it moves the masks of the
   first calibration samples by more than ``SWEEP_AGREEMENT`` allows, each Conv / MatMul is
   quantized alone and ranked by its error on the graph's outputs, and the most sensitive ones
   stay FP32 (1, 2, 4, ... of them) until the graph keeps the masks within the target. The plan
   (the FP32 nodes, the ranking, each step's agreement) goes into the manifest. The support
   encoder stays FP32: it runs once per class.
3. The accuracy gate, on photos not used for calibration: INT8 masks agree with FP32's on
   >= 99% of pixels, the mean IoU against ground truth drops by <= 0.01, and (``--video-root``)
   J on the DAVIS videos drops by <= 0.01. A failed gate writes nothing and names the figure;
   ``skip_gate`` writes the graphs marked ungated (the Segmenter warns when it loads them).
4. The TensorRT op check (10.3 and 11.x) runs on the quantized graphs.

BF16: ONNX Runtime's CPU provider has no BF16 MatMul or Conv kernels (``bf16_unavailable`` probes
the installed version), so no BF16 graphs are written; the reason is given instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from sccan.sdk.bundle import Bundle, GRAPHS, graph_file, load_bundle, sha256_file, write_manifest
from sccan.sdk.errors import SCCANError
from sccan.sdk.preprocess import foreground_probability, normalize, resize_image
from sccan.sdk.schema import first_slots

from .exporter import graph_entry
from .onnx_walk import computed_from, producers
from .prior_split import PriorSplitError, split_files

#: Operators the sweep ranks (each quantized alone) and may keep in FP32: the arithmetic.
OP_TYPES = ("Conv", "MatMul", "Gemm")
#: Operators quantized per graph. The backbone: ONNX Runtime's whole QDQ set (None), so that
#: Conv -> Clip -> Conv chains stay INT8 end to end (measured on the Lite-0 backbone: fewer FP32
#: nodes needed and 2.6 x faster than Conv alone). The decoder: only Conv / MatMul / Gemm inputs:
#: quantizing its softmaxes, norms and reshapes as well cost agreement (97.9% against 99.4% on the
#: real-photo model's calibration samples) and time (90 ms against 84).
QUANTIZED_OPS: dict[str, tuple[str, ...] | None] = {"backbone": None, "query_decoder": OP_TYPES}
#: Operators whose outputs stay FP32 (no Q/DQ after them), per graph. The decoder's products then
#: run as MatMulIntegerToFloat and the softmaxes after them in FP32: the prior's softmax over
#: 5 x 3600 x 4096 scores took 103 ms as QLinearSoftmax against 17 ms in FP32, and the ResNet-50
#: decoder at 5 shots 1237 ms against 1005 ms (ONNX Runtime profile, this host).
FLOAT_OUTPUTS: dict[str, tuple[str, ...]] = {"backbone": (), "query_decoder": ("MatMul",)}
#: Graphs quantized; the support encoder runs once per class and stays FP32.
QUANTIZED_GRAPHS = ("backbone", "query_decoder")
#: The gate (on photos not used for calibration).
from .limits import J_DROP, MASK_AGREEMENT, MIOU_DROP  # noqa: E402,F401 - the gate's limits
#: What one quantized graph may cost alone on the sweep samples (mask agreement with FP32).
SWEEP_AGREEMENT = 0.995


class QuantizeError(SCCANError):
    """Quantization cannot proceed, or the gate failed (the message names the figure)."""


def bf16_unavailable() -> str | None:
    """Why no BF16 graphs can run here (None if ONNX Runtime's CPU provider has BF16 MatMul)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [4, 4]) for n in "abc"]
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "probe",
                                                spec[:2], spec[2:]), opset_imports=[helper.make_opsetid("", 18)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # NOT_IMPLEMENTED: no kernel
        return (f"ONNX Runtime {ort.__version__}'s CPU provider has no BF16 MatMul or Conv kernels, so BF16 graphs "
                "would run as casts around FP32 arithmetic: use --precision int8 (or TensorRT's FP16 on a GPU)")
    return None


# -- data ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One calibration or gate episode: RGB images, binary masks (0/1/255), and where it came from."""

    support: list[np.ndarray]
    support_masks: list[np.ndarray]
    query: np.ndarray
    query_label: np.ndarray
    class_id: int
    digests: tuple[str, ...] = ()


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


class DataSource:
    """Episodes from a DAVIS-layout folder or a data config, for calibration or the gate.

    ``spec``: a folder holding ``JPEGImages/`` and ``Annotations/`` (DAVIS: frame 0 of each
    sequence is the support, later frames are queries), or a data config (a YAML path or the name
    of a shipped config) whose ``data`` section names any dataset the project reads; its test
    split (held-out classes) is used.
    """

    def __init__(self, spec: str | os.PathLike, shots: int = 1):
        self.spec = str(spec)
        self.shots = shots
        path = Path(spec)
        self.video = path.is_dir() and (path / "JPEGImages").is_dir()
        if self.video:
            from sccan.train.video import list_sequences

            self.sequences = list_sequences(path)
        elif path.is_dir():
            raise QuantizeError(f"{path} is a folder without JPEGImages/ and Annotations/: give a DAVIS-layout "
                                "folder, or a data config (YAML) naming the dataset (yolo, labels, folder, ...)")
        else:
            from sccan.train.config import load_config

            self.data = dict(load_config(spec)["data"])
            self.data["shots"] = shots

    def describe(self) -> str:
        return f"DAVIS folder {self.spec} ({len(self.sequences)} sequences)" if self.video else \
            f"data config {self.spec} ({self.data.get('dataset')}, test split)"

    def samples(self, count: int, seed: int, part: str = "all", avoid: set[str] | None = None) -> Iterator[Sample]:
        """Up to ``count`` episodes; ``part`` "even"/"odd" takes every other DAVIS sequence (so that
        calibration and gate share no video); episodes showing an image in ``avoid`` are skipped."""
        avoid = avoid or set()
        produced = 0
        for sample in (self._video_samples(seed, part) if self.video else self._dataset_samples(seed)):
            if avoid & set(sample.digests):
                continue
            yield sample
            produced += 1
            if produced >= count:
                return

    def _video_samples(self, seed: int, part: str) -> Iterator[Sample]:
        from sccan.train.video import read_frame, read_mask

        sequences = self.sequences
        if part in ("even", "odd"):
            sequences = sequences[0 if part == "even" else 1::2]
        rng = np.random.default_rng(seed)
        queries = [list(rng.permutation(np.arange(self.shots, len(s.frames)))) for s in sequences]
        # one query of each sequence in turn, so that a few samples already cover every video
        order = [(i, int(q[r])) for r in range(max(map(len, queries), default=0))
                 for i, q in enumerate(queries) if r < len(q)]
        supports: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for i, j in order:
            s = sequences[i]
            if i not in supports:  # read once per sequence
                supports[i] = ([read_frame(p) for p in s.frames[:self.shots]],
                               [read_mask(p) for p in s.masks[:self.shots]])
            support, masks = supports[i]
            query = read_frame(s.frames[j])
            yield Sample(support, masks, query, read_mask(s.masks[j]), self.sequences.index(s) + 1,
                         tuple(_digest(x) for x in (*support, query)))

    def _dataset_samples(self, seed: int) -> Iterator[Sample]:
        from sccan.train.data.datasets import build_dataset

        dataset = build_dataset(self.data, "test", seed=seed, episodes=10_000)
        for i in range(len(dataset)):
            e = dataset[i]
            yield Sample(list(e.support), [(m == 1).astype(np.uint8) for m in e.support_labels], e.query,
                         e.query_label, int(e.class_id), tuple(_digest(x) for x in (*e.support, e.query)))


# -- the graphs' inputs on real data -----------------------------------------------------------------


class Feeds:
    """The inputs each graph sees on the samples, computed through the FP32 graphs."""

    def __init__(self, bundle: Bundle, samples: list[Sample], progress: bool = False):
        from sccan.sdk import EmptyMaskError, Segmenter

        self.segmenter = Segmenter(bundle, backend="onnxruntime", precision="fp32")
        seg = self.segmenter
        self.backbone: list[dict[str, np.ndarray]] = []
        self.decoder: list[dict[str, np.ndarray]] = []
        self.samples: list[Sample] = []
        for sample in tqdm(samples, desc="calibration", unit="episode", disable=not progress):
            try:
                seg.add_class("calibration", sample.support, sample.support_masks, color="rgb")
            except EmptyMaskError:
                continue  # the object vanishes at the network's size
            support = _decoder_support(seg, "calibration", len(sample.support))
            query = self.tensor(sample.query)
            features = seg.backend.run("backbone", {"images": query})
            self.backbone += [{"images": query}] + [{"images": self.tensor(s)} for s in sample.support]
            self.decoder.append({"mid": features["mid"], "high": features["high"], **support})
            self.samples.append(sample)
        if "calibration" in seg.classes:
            seg.remove_class("calibration")

    def tensor(self, rgb: np.ndarray) -> np.ndarray:
        seg = self.segmenter
        canvas, _ = resize_image(rgb, seg.size)
        return normalize(canvas, seg.mean, seg.std)[None]


def _decoder_support(seg: Any, name: str, shots: int) -> dict[str, np.ndarray]:
    """Class ``name``'s support features as the decoder takes them for one class: shot slots cut
    to its ``shots`` (as the Segmenter batches it)."""
    return {k: first_slots(k, v, shots) for k, v in seg.support_features(name).items()}


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index = 0

    def __len__(self) -> int:
        return len(self.feeds)


# -- quantization and the sweep ------------------------------------------------------------------------


def _quantize(graph: str, source: Path, target: Path, cache: Path, feeds: list[dict[str, np.ndarray]] | None,
              nodes: list[str] | None = None, exclude: list[str] | None = None) -> None:
    """``source`` (the FP32 ``graph``) -> QDQ INT8 ``target``: symmetric activations and weights,
    per-channel weights, FP32 biases, the operators of QUANTIZED_OPS and outputs per FLOAT_OUTPUTS;
    ranges from ``cache`` (computed from ``feeds`` the first time)."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # the tool logs every node it leaves alone
    ops = QUANTIZED_OPS[graph]
    quantize_static(str(source), str(target), _Reader(feeds) if feeds is not None else None,
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(ops) if ops else None, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_quantize=nodes, nodes_to_exclude=exclude or None,
                    calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                                   "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUTS[graph])})
    onnx.save_model(onnxruntime_encoding(onnx.load(str(target))), str(ort_path(target)))


def int8_path(path: Path) -> Path:
    """The INT8 graph of record whose ONNX Runtime encoding is ``path``."""
    return path.with_name(path.name.removesuffix(".onnxruntime.onnx") + ".onnx")


def ort_path(path: Path) -> Path:
    """Where the ONNX Runtime encoding of the INT8 graph ``path`` lives (see :func:`onnxruntime_encoding`)."""
    return path.with_name(path.name.removesuffix(".onnx") + ".onnxruntime.onnx")


def onnxruntime_encoding(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same quantized graph with its activations stored as UINT8 with zero point 128 instead of
    INT8 with zero point 0: every Q/DQ pair represents exactly the same values (q + 128, same scale),
    weights stay INT8. ONNX Runtime's x86 kernels are U8S8: on this encoding it fuses every Q/DQ pair
    into QLinearConv / QLinearMatMul, while on the INT8 one it leaves depthwise convolutions as
    DQ + FP32 Conv + Q (measured 2.6 x slower on the Lite-0 backbone). TensorRT takes only the INT8
    one, which stays the bundle's graph of record.

    The exception: an activation read only as the second operand of a product of two activations
    (the support keys of the prior, the attention's keys and values) stays INT8, so that the
    product is UINT8 x INT8, the pair VNNI multiplies, rather than UINT8 x UINT8 at half the speed.
    The SDK's sessions keep it INT8 where this CPU computes UINT8 x INT8 exactly, and let ONNX
    Runtime make every product UINT8 x UINT8 where it does not (x86 without VNNI:
    :mod:`sccan.sdk.int8_kernels`).

    Rectifiers between a dequantize and quantizes become table lookups (:func:`_lookup_rectifiers`),
    again with the same values."""
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    produced_by_q = {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    made: dict[str, str] = {}

    def shifted(name: str) -> str:
        if name not in made:
            zp = numpy_helper.to_array(inits[name])
            if zp.dtype != np.int8 or np.any(zp != 0):
                raise QuantizeError(f"activation zero point {name} is not INT8 0 (not a symmetric graph)")
            made[name] = f"{name}__u8"
            graph.initializer.append(numpy_helper.from_array(np.full(zp.shape, 128, np.uint8), made[name]))
        return made[name]

    signed = _signed_operands(graph, produced_by_q)
    for node in graph.node:
        activation = node.op_type == "QuantizeLinear" or (node.op_type == "DequantizeLinear"
                                                          and node.input[0] in produced_by_q)
        quantized = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
        if activation and quantized not in signed and len(node.input) > 2 and node.input[2] in inits:
            node.input[2] = shifted(node.input[2])
    _lookup_rectifiers(graph)
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


def _lookup_rectifiers(graph: onnx.GraphProto) -> list[str]:
    """Turn each ``Relu``, and each ``Clip(0, hi)`` whose upper bound the quantization after it
    already imposes, into ``LeakyRelu(alpha=0)`` where a dequantized activation feeds it and only
    quantizes read it; returns the names of the nodes changed.

    ONNX Runtime fuses DequantizeLinear -> LeakyRelu -> QuantizeLinear into one 256-entry table
    lookup (QLinearLeakyRelu) but leaves Relu and Clip in FP32 between a dequantize and a quantize
    (two passes over the tensor in FP32, measured 51 of 281 ms of the ResNet-50 INT8 backbone, 13 of
    30 ms of Lite-0's). The values are the same: LeakyRelu with alpha 0 is Relu (-0.0 for negative
    inputs, which quantizes as 0); and a symmetric INT8 quantize of scale s saturates at 127 s, so
    an upper bound hi >= 127 s changes nothing it outputs (every input at or above 127 s quantizes
    to 127 with or without the bound). A Clip whose bound would bind (hi < 127 s), or whose bounds
    are not constants, is left as it is."""
    from onnx import helper, numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    produced = producers(graph)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def scalar(name: str) -> float | None:
        value = constants.get(name)
        return float(value) if value is not None and value.size == 1 else None

    changed = []
    for node in graph.node:
        source = produced.get(node.input[0]) if node.input else None
        quantizes = readers.get(node.output[0], []) if node.output else []
        if (node.op_type not in ("Relu", "Clip") or source is None or source.op_type != "DequantizeLinear"
                or node.output[0] in outputs or not quantizes
                or any(q.op_type != "QuantizeLinear" for q in quantizes)):
            continue
        if node.op_type == "Clip":
            low = scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            high = scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            scales = [scalar(q.input[1]) for q in quantizes]
            if (node.attribute or low != 0.0 or high is None or any(s is None or s <= 0 for s in scales)
                    or any(high < 127.0 * s for s in scales)):
                continue
            del node.input[1:]
        node.op_type = "LeakyRelu"
        node.attribute.append(helper.make_attribute("alpha", 0.0))
        changed.append(node.name)
    return changed


def mask_products(model: onnx.ModelProto) -> list[str]:
    """The MatMul nodes that multiply by the support mask (``prior_mask``, through the ops that
    shape it): in the decoder, the prior's softmax weights (C x hw x S*N) times the shots' masks.
    They stay FP32 whatever the sweep says: quantizing the product adds a full pass over its
    large operand (the 3600 x 5*4096 softmax weights at 5 shots) to a product that reads memory
    once and does little arithmetic (measured 30 ms against 8 in FP32), and 8 bits cannot hold
    weights of about 1/4096 next to the largest ones."""
    made_by = producers(model.graph)

    def from_mask(name: str) -> bool:
        return computed_from(made_by, name, "prior_mask", 8, through=lambda node: node.op_type != "MatMul")

    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(from_mask(i) for i in n.input)]


def _signed_operands(graph: onnx.GraphProto, produced_by_q: set[str]) -> set[str]:
    """The quantized activations that stay INT8 in the ONNX Runtime encoding: those read only as
    the second operand of a MatMul whose first operand is a quantized activation too. ONNX
    Runtime multiplies UINT8 by INT8 (VNNI's operand types) twice as fast as UINT8 by UINT8
    (measured 101 against 210 ms for the prior's 4096 x 2048 x 3600 product on this host)."""
    dq_of = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "DequantizeLinear" and n.input[0] in produced_by_q}
    uses: dict[str, list[bool]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in dq_of:
                second = (node.op_type == "MatMul" and index == 1 and len(node.input) == 2
                          and node.input[0] in dq_of)
                uses.setdefault(dq_of[name], []).append(second)
    return {q for q, flags in uses.items() if all(flags)}


def _session(path: Path, threads: int | None = None):
    from sccan.sdk.patch_align_op import ort_session

    return ort_session(path, threads, providers=["CPUExecutionProvider"])


@dataclass
class GraphPlan:
    """What the sweep found for one graph."""

    graph: str
    candidates: int
    ranking: list[dict[str, Any]] = field(default_factory=list)  # most sensitive first
    kept_fp32: list[str] = field(default_factory=list)  # by the sweep
    by_rule: list[str] = field(default_factory=list)  # products with the support mask, never ranked
    steps: list[dict[str, Any]] = field(default_factory=list)  # FP32 nodes tried -> agreement
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "quantized": self.candidates - len(self.kept_fp32),
                "kept_fp32": self.kept_fp32, "mask_products_fp32": self.by_rule,
                "ranking_top": self.ranking[:12], "steps": self.steps,
                "seconds": round(self.seconds, 1)}


def _relative_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    return max(float(np.linalg.norm(got[k] - want[k]) / (np.linalg.norm(want[k]) or 1.0)) for k in want)


class Sweep:
    """The per-node sensitivity sweep and the choice of FP32 nodes, on the first ``samples`` feeds."""

    def __init__(self, bundle: Bundle, feeds: Feeds, work: Path, samples: int, progress: bool):
        self.bundle, self.feeds, self.work, self.progress = bundle, feeds, work, progress
        self.n = min(samples, len(feeds.decoder))
        fp32 = {g: _session(bundle.graph_path(g, "fp32")) for g in GRAPHS}
        self.fp32 = fp32
        self.backbone_want = [dict(zip(["mid", "high"], fp32["backbone"].run(["mid", "high"], f)))
                              for f in feeds.backbone[:self.n]]
        self.decoder_want = [self._probability(fp32["query_decoder"], f) for f in feeds.decoder[:self.n]]

    @staticmethod
    def _probability(session, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return foreground_probability(session.run(["logits"], feeds)[0].astype(np.float32))

    def node_error(self, graph: str, path: Path) -> float:
        """How far one variant of ``graph`` moves its outputs on the sweep samples (graph alone)."""
        session = _session(path)
        if graph == "backbone":
            errors = [_relative_error(dict(zip(["mid", "high"], session.run(["mid", "high"], f))), w)
                      for f, w in zip(self.feeds.backbone, self.backbone_want)]
        else:
            errors = [float(np.abs(self._probability(session, f) - w).mean())
                      for f, w in zip(self.feeds.decoder, self.decoder_want)]
        return float(np.mean(errors))

    def agreement(self, graph: str, path: Path) -> float:
        """Mask agreement with FP32 over the sweep samples, end to end, this graph quantized alone."""
        if graph == "query_decoder":
            session = _session(path)
            pairs = [(self._probability(session, f), w) for f, w in zip(self.feeds.decoder, self.decoder_want)]
        else:
            from sccan.sdk import Segmenter

            candidate = _candidate_manifest(self.bundle.manifest, self.bundle.path, {"backbone": int8_path(path)})
            seg = Segmenter(Bundle(self.bundle.path, candidate), backend="onnxruntime", precision="int8")
            pairs = []
            for sample, want in zip(self.feeds.samples[:self.n], self.decoder_want):
                seg.add_class("s", sample.support, sample.support_masks, color="rgb")
                support = _decoder_support(seg, "s", len(sample.support))
                features = seg.backend.run("backbone", {"images": self.feeds.tensor(sample.query)})
                got = self._probability(self.fp32["query_decoder"],
                                        {"mid": features["mid"], "high": features["high"], **support})
                pairs.append((got, want))
        return float(np.mean([((g > 0.5) == (w > 0.5)).mean() for g, w in pairs]))

    def plan(self, graph: str, cache: Path, target: Path, feeds: list[dict[str, np.ndarray]],
             rank: bool = True) -> GraphPlan:
        """Quantize ``graph`` into ``target``. If the whole graph keeps the masks within
        SWEEP_AGREEMENT of FP32's, done; otherwise rank its nodes by their error quantized alone
        and leave the most sensitive in FP32 (1, 2, 4, ... of them) until it does. The first
        quantization calibrates on ``feeds`` and fills ``cache``; the others reuse its ranges.
        Without ``rank`` (ungated graphs, for timing) the whole graph is quantized whatever its
        agreement."""
        start = time.perf_counter()
        source = self.bundle.graph_path(graph, "fp32")
        model = onnx.load(str(source), load_external_data=False)
        by_rule = mask_products(model)
        candidates = [n.name for n in model.graph.node if n.op_type in OP_TYPES and n.name not in by_rule]
        ops = {n.name: n.op_type for n in model.graph.node}
        plan = GraphPlan(graph, len(candidates), by_rule=by_rule)

        def attempt(excluded: list[str]) -> bool:
            _quantize(graph, source, target, cache, None if cache.is_file() else feeds, exclude=by_rule + excluded)
            agreement = self.agreement(graph, ort_path(target))
            plan.steps.append({"fp32_nodes": len(excluded), "agreement": round(agreement, 5)})
            return agreement >= SWEEP_AGREEMENT

        if attempt([]) or not rank:
            plan.seconds = time.perf_counter() - start
            return plan
        probe = self.work / f".{graph}.probe.onnx"
        bar = tqdm(candidates, desc=f"sensitivity {graph}", unit="node", disable=not self.progress)
        for name in bar:
            _quantize(graph, source, probe, cache, None, nodes=[name])
            plan.ranking.append({"node": name, "op": ops[name], "error": self.node_error(graph, ort_path(probe))})
        bar.close()
        probe.unlink(missing_ok=True)
        ort_path(probe).unlink(missing_ok=True)
        plan.ranking.sort(key=lambda r: -r["error"])
        ranked = [r["node"] for r in plan.ranking]
        for k in [2 ** i for i in range(len(ranked).bit_length()) if 2 ** i < len(ranked)]:
            if attempt(ranked[:k]):
                plan.kept_fp32 = ranked[:k]
                break
        else:  # nothing left to quantize: the graph stays FP32
            plan.kept_fp32 = ranked
            plan.steps.append({"fp32_nodes": len(ranked), "agreement": 1.0})
            target.unlink(missing_ok=True)
            ort_path(target).unlink(missing_ok=True)
        plan.seconds = time.perf_counter() - start
        return plan


# -- the gate ----------------------------------------------------------------------------------------


@dataclass
class QuantGate:
    """INT8 against FP32 through the SDK on held-out photos (and videos)."""

    episodes: int = 0
    mask_agreement: float = 1.0
    worst_episode_agreement: float = 1.0
    max_probability_diff: float = 0.0
    miou_fp32: float = 0.0
    miou_int8: float = 0.0
    video_j_fp32: float | None = None
    video_j_int8: float | None = None
    video_sequences: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "mask_agreement": round(self.mask_agreement, 5),
                "worst_episode_agreement": round(self.worst_episode_agreement, 5),
                "max_probability_diff": round(self.max_probability_diff, 4),
                "miou_fp32": round(self.miou_fp32, 4), "miou_int8": round(self.miou_int8, 4),
                "video_j_fp32": self.video_j_fp32, "video_j_int8": self.video_j_int8,
                "video_sequences": self.video_sequences,
                "limits": {"mask_agreement": MASK_AGREEMENT, "miou_drop": MIOU_DROP, "video_j_drop": J_DROP},
                "passed": self.ok, "failures": self.failures}

    def text(self) -> str:
        line = (f"gate on {self.episodes} held-out episodes: masks agree on {100 * self.mask_agreement:.2f}% of "
                f"pixels (limit {100 * MASK_AGREEMENT:.0f}%; worst episode {100 * self.worst_episode_agreement:.2f}%), "
                f"mIoU {self.miou_fp32:.4f} FP32 -> {self.miou_int8:.4f} INT8 (drop limit {MIOU_DROP})")
        if self.video_j_fp32 is not None:
            line += (f"; DAVIS J over {self.video_sequences} sequences {self.video_j_fp32:.4f} -> "
                     f"{self.video_j_int8:.4f} (drop limit {J_DROP})")
        return line + (": PASSED" if self.ok else ": FAILED: " + "; ".join(self.failures))


def run_gate(fp32: Any, int8: Any, samples: list[Sample], video_root: str | None = None,
             progress: bool = True) -> QuantGate:
    """Compare two Segmenters (FP32 and INT8) on ``samples`` (and the videos under ``video_root``)."""
    from sccan.sdk import EmptyMaskError
    from sccan.train.evaluate import IoUMeter

    gate = QuantGate()
    meters = {"fp32": IoUMeter(), "int8": IoUMeter()}
    agree, total = 0, 0
    for sample in tqdm(samples, desc="gate", unit="episode", disable=not progress):
        results = {}
        for name, seg in (("fp32", fp32), ("int8", int8)):
            try:
                seg.add_class("gate", sample.support, sample.support_masks, color="rgb")
            except EmptyMaskError:
                break
            results[name] = seg.segment(sample.query, color="rgb")
        if len(results) < 2:
            continue
        p32, p8 = results["fp32"].probabilities["gate"], results["int8"].probabilities["gate"]
        m32, m8 = p32 > 0.5, p8 > 0.5
        same = int((m32 == m8).sum())
        agree, total = agree + same, total + m32.size
        gate.worst_episode_agreement = min(gate.worst_episode_agreement, same / m32.size)
        gate.max_probability_diff = max(gate.max_probability_diff, float(np.abs(p32 - p8).max()))
        for name, mask in (("fp32", m32), ("int8", m8)):
            meters[name].add(mask.astype(np.int64), sample.query_label, sample.class_id)
        gate.episodes += 1
    if not gate.episodes:
        raise QuantizeError("the gate has no usable held-out episode (every support object vanished at the "
                            "network's size): give more or other --gate data")
    gate.mask_agreement = agree / total
    gate.miou_fp32, gate.miou_int8 = meters["fp32"].miou, meters["int8"].miou
    if gate.mask_agreement < MASK_AGREEMENT:
        gate.failures.append(f"INT8 masks agree with FP32 on {100 * gate.mask_agreement:.2f}% of pixels "
                             f"(limit {100 * MASK_AGREEMENT:.0f}%)")
    if gate.miou_fp32 - gate.miou_int8 > MIOU_DROP:
        gate.failures.append(f"mIoU drops by {gate.miou_fp32 - gate.miou_int8:.4f} ({gate.miou_fp32:.4f} -> "
                             f"{gate.miou_int8:.4f}; limit {MIOU_DROP})")
    if video_root:
        from sccan.train.evaluate import segmenter_predictor
        from sccan.train.video import evaluate_videos, list_sequences

        sequences = list_sequences(video_root)
        j = {}
        for name, seg in (("fp32", fp32), ("int8", int8)):
            j[name] = evaluate_videos(segmenter_predictor(seg), sequences, 1, progress=progress).j_mean
        gate.video_j_fp32, gate.video_j_int8 = round(j["fp32"], 4), round(j["int8"], 4)
        gate.video_sequences = len(sequences)
        if j["fp32"] - j["int8"] > J_DROP:
            gate.failures.append(f"DAVIS J drops by {j['fp32'] - j['int8']:.4f} ({j['fp32']:.4f} -> "
                                 f"{j['int8']:.4f}; limit {J_DROP})")
    return gate


# -- the command -------------------------------------------------------------------------------------


@dataclass
class QuantizeResult:
    bundle: Path
    plans: dict[str, GraphPlan]
    gate: QuantGate | None
    record: dict[str, Any]

    def summary(self) -> str:
        lines = []
        for graph, plan in self.plans.items():
            steps = ", ".join(f"{s['fp32_nodes']} FP32 -> {100 * s['agreement']:.2f}%" for s in plan.steps)
            rule = f", the prior's {len(plan.by_rule)} product(s) with the mask FP32 by rule" if plan.by_rule else ""
            lines.append(f"{graph}: {plan.candidates - len(plan.kept_fp32)} of {plan.candidates} Conv/MatMul nodes "
                         f"INT8, {len(plan.kept_fp32)} kept FP32 by the sweep ({steps}){rule}")
        lines.append(self.gate.text() if self.gate else "gate SKIPPED (--skip-gate): the INT8 graphs are ungated, "
                     "for timing only")
        return "\n".join(lines)


def calibration_and_gate_parts(source: DataSource, same: bool) -> tuple[str, str]:
    """The parts of ``source`` calibration and the gate draw from: a DAVIS folder that serves as
    both (``same``) is split by sequence, even ones for calibration and odd ones for the gate."""
    return ("even", "odd") if same and source.video else ("all", "all")


def quantize_bundle(bundle_path: str | os.PathLike, calibration: str | os.PathLike, precision: str = "int8",
                    images: int = 32, gate_data: str | os.PathLike | None = None, gate_episodes: int = 40,
                    video_root: str | os.PathLike | None = None, skip_gate: bool = False, sweep_samples: int = 4,
                    seed: int = 0, progress: bool = True) -> QuantizeResult:
    """Calibrate, sweep, gate and record the INT8 graphs of the bundle at ``bundle_path``.

    Args:
        calibration: a DAVIS-layout folder or a data config (see :class:`DataSource`).
        images: calibration episodes (each one query and its support images).
        gate_data: where the gate's photos come from (default: the calibration data, other photos).
        video_root: also gate on J over these DAVIS-layout videos.

    Raises:
        QuantizeError: bad arguments, too little data, or the gate failed (nothing is written then).
    """
    if precision == "bf16":
        why = bf16_unavailable()
        if why:
            raise QuantizeError(why)
        raise QuantizeError("BF16 graphs are not implemented by this version of sccan quantize")
    if precision != "int8":
        raise QuantizeError(f"--precision must be int8 or bf16, got {precision!r}")
    if images < 1 or gate_episodes < 1 or sweep_samples < 1:
        raise QuantizeError("--images, the gate's episodes and the sweep samples must be at least 1")
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    if manifest.get("patch_align") == "plugin":
        raise QuantizeError("this bundle's decoder uses the patch-alignment plugin node; quantize a bundle "
                            "exported with --patch-align standard-ops (or both)")
    source = DataSource(calibration)
    same = gate_data is None or str(gate_data) == str(calibration)
    gate_source = source if same else DataSource(gate_data)
    cal_part, gate_part = calibration_and_gate_parts(source, same)
    calib = list(source.samples(images, seed, cal_part))
    feeds = Feeds(bundle, calib, progress)
    if len(feeds.decoder) < 1:
        raise QuantizeError(f"no usable calibration episode in {source.describe()}")
    used = {d for s in feeds.samples for d in s.digests}
    calibration_sha = hashlib.sha256("".join(sorted(used)).encode()).hexdigest()

    work = Path(tempfile.mkdtemp(dir=bundle.path, prefix=".quantize-"))
    written: dict[str, Path] = {}
    try:
        plans: dict[str, GraphPlan] = {}
        sweep = Sweep(bundle, feeds, work, sweep_samples, progress)
        for graph in QUANTIZED_GRAPHS:
            target = work / graph_file(graph, "int8")
            plans[graph] = sweep.plan(graph, work / f"{graph}.ranges.json", target,
                                      feeds.backbone if graph == "backbone" else feeds.decoder, rank=not skip_gate)
            if target.exists():
                written[graph] = target
        candidate = _candidate_manifest(manifest, bundle.path, written)
        gate = None
        if not skip_gate:
            from sccan.sdk import Segmenter

            held_out = [s for s in gate_source.samples(gate_episodes, seed + 1, gate_part, avoid=used)]
            fp32 = Segmenter(bundle, backend="onnxruntime", precision="fp32")
            int8 = Segmenter(Bundle(bundle.path, candidate), backend="onnxruntime", precision="int8")
            gate = run_gate(fp32, int8, held_out, str(video_root) if video_root else None, progress)
            if not gate.ok:
                raise QuantizeError("INT8 gate failed: " + "; ".join(gate.failures) + ". Nothing was written; "
                                    "calibrate on data like the deployment's (--calibration), with more --images")
        record = {
            "library": f"onnxruntime.quantization {version('onnxruntime')} (quantize_static, QDQ)",
            "scheme": "INT8 symmetric activations and weights (zero points 0), per-channel weights (Conv axis 0, "
                      "MatMul axis 1), FP32 biases, min-max calibration",
            "quantized_ops": {g: list(ops) if ops else "ONNX Runtime's QDQ set" for g, ops in QUANTIZED_OPS.items()},
            "onnxruntime_encoding": "<graph>.int8.onnxruntime.onnx: the same graph with activations as UINT8 with zero "
                                    "point 128 and rectifiers between quantized tensors as LeakyRelu(0) table "
                                    "lookups (the same values), which ONNX Runtime's x86 U8S8 kernels fuse fully",
            "onnxruntime_prior": "<graph>.int8.onnxruntime.prior_{keys,product,rest}.onnx: the decoder's encoding cut "
                                 "around the prior's product, so that the SDK holds each class's INT8 keys as a "
                                 "constant of a session of their own (packed once; sccan.sdk.prior_product)",
            "support_encoder": "FP32 (runs once per class)",
            "calibration": {"source": source.describe(), "episodes": len(feeds.samples), "images": len(used),
                            "sha256": calibration_sha, "seed": seed},
            "sweep": {"samples": sweep.n, "agreement_target": SWEEP_AGREEMENT,
                      "graphs": {g: p.to_dict() for g, p in plans.items()}},
            "gated": gate is not None, "gate": gate.to_dict() if gate else None,
            "gate_source": gate_source.describe() if gate else None,
        }
        _commit(bundle, manifest, work, written, record)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return QuantizeResult(bundle.path, plans, gate, record)


def _candidate_manifest(manifest: dict[str, Any], root: Path, written: dict[str, Path]) -> dict[str, Any]:
    """An in-memory manifest whose int8 entries name the work files (FP32 where a graph has none),
    for the sweep's and the gate's Segmenter; never written."""
    candidate = dict(manifest)
    candidate["graphs"] = {g: dict(v) for g, v in manifest["graphs"].items()}
    for graph in GRAPHS:
        if graph in written:
            candidate["graphs"][graph]["int8"] = {"file": str(written[graph].relative_to(root)),
                                                  "onnxruntime_file": str(ort_path(written[graph]).relative_to(root))}
        else:
            candidate["graphs"][graph]["int8"] = dict(manifest["graphs"][graph]["fp32"])
    candidate["precision_plan"] = {**manifest.get("precision_plan", {}), "int8": {"gated": True, "candidate": True}}
    return candidate


def _commit(bundle: Bundle, manifest: dict[str, Any], work: Path, written: dict[str, Path],
            record: dict[str, Any]) -> None:
    """TensorRT check, then the INT8 graphs renamed into the bundle and the manifest rewritten."""
    problems, entries = [], {}
    split_paths: list[Path] = []
    for graph in GRAPHS:
        if graph in written:
            model = onnx.load(str(written[graph]))
            swept = record["sweep"]["graphs"][graph]
            kept = swept["mask_products_fp32"] + swept["kept_fp32"]
            entries[graph] = {**graph_entry(model, graph_file(graph, "int8")), "kept_fp32": kept}
            entries[graph]["onnxruntime_file"] = ort_path(Path(graph_file(graph, "int8"))).name
            if graph == "query_decoder":
                try:
                    parts = split_files(ort_path(written[graph]))
                except PriorSplitError as exc:
                    entries[graph]["onnxruntime_prior"] = None
                    record["onnxruntime_prior"] = f"not split: {exc}"
                else:
                    entries[graph]["onnxruntime_prior"] = {role: p.name for role, p in parts.items()}
                    split_paths += parts.values()
            problems += [f"{graph} (int8, TensorRT {t}): {p}" for t, ps in entries[graph]["tensorrt_problems"].items()
                         for p in ps]
        else:
            entries[graph] = {**manifest["graphs"][graph]["fp32"], "kept_fp32": "whole graph"}
    if problems:
        raise QuantizeError("the INT8 graphs fail the TensorRT check:\n  " + "\n  ".join(problems[:20]))
    old = {manifest["graphs"][g].get("int8", {}).get(k) for g in GRAPHS for k in ("file", "onnxruntime_file")}
    old |= set((manifest["graphs"]["query_decoder"].get("int8", {}).get("onnxruntime_prior") or {}).values())
    old -= {None} | {manifest["graphs"][g]["fp32"]["file"] for g in GRAPHS}
    new_files = []
    for src in [p for path in written.values() for p in (path, ort_path(path))] + split_paths:
        os.replace(src, bundle.path / src.name)
        new_files.append(src.name)
    for graph in GRAPHS:
        manifest["graphs"][graph]["int8"] = entries[graph]
    manifest.setdefault("precision_plan", {})["int8"] = record
    files = {k: v for k, v in manifest["files"].items() if k not in old}
    files.update({name: sha256_file(bundle.path / name) for name in new_files})
    manifest["files"] = files
    stale = manifest.get("engines", {}).pop("int8", None)  # engines of older INT8 graphs
    if stale:
        manifest.get("engine_gates", {}).pop("int8", None)
        for engine in stale.values():
            manifest["files"].pop(engine["file"], None)
    write_manifest(bundle.path, manifest)
    for name in old - set(new_files):
        (bundle.path / name).unlink(missing_ok=True)
    for engine in (stale or {}).values():
        (bundle.path / engine["file"]).unlink(missing_ok=True)


__all__ = ["quantize_bundle", "QuantizeError", "QuantizeResult", "QuantGate", "DataSource", "run_gate",
           "bf16_unavailable", "OP_TYPES", "MASK_AGREEMENT", "MIOU_DROP", "J_DROP"]
