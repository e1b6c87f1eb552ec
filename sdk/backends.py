"""Inference backends behind one small interface: run a named graph on named inputs.

* :class:`OnnxRuntimeBackend`: the bundle's ONNX graphs in ONNX Runtime (CPU, or the CUDA provider
  where ``onnxruntime-gpu`` is installed). The embedded default.
* :class:`TensorRTBackend` (:mod:`sccan.sdk.tensorrt_backend`): the bundle's engines.

Everything else (preprocessing, batching classes, postprocessing, the support cache) sits above
this interface in :class:`sccan.sdk.Segmenter`, so it is the same code whichever backend runs.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .bundle import GRAPHS, Bundle
from .errors import BundleMismatchError


class Backend(Protocol):
    """What the Segmenter needs from an inference engine."""

    name: str
    precision: str

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``graph`` ("backbone", "support_encoder", "query_decoder") on named inputs."""
        ...

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        """The dtype the graph's input ``name`` takes (float32, or float16 for FP16 graphs)."""
        ...


class OnnxRuntimeBackend:
    """ONNX Runtime sessions for the three graphs. ``InferenceSession.run`` is thread-safe, so one
    backend may serve several threads."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, precision: str = "fp32", device: int = 0, threads: int | None = None,
                 providers: list[str] | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if providers is None:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available \
                else ["CPUExecutionProvider"]
        if precision == "fp16" and providers[0] == "CPUExecutionProvider":
            raise BundleMismatchError("FP16 graphs are for TensorRT and ONNX Runtime's CUDA provider; on a CPU "
                                      "use precision='fp32' (ONNX Runtime's CPU kernels compute FP16 graphs in "
                                      "FP32 with extra casts, slower and no more accurate)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        provider_options = [{"device_id": device} if p == "CUDAExecutionProvider" else {} for p in providers]
        self.precision = precision
        self.providers = providers
        self.sessions = {g: ort.InferenceSession(str(bundle.graph_path(g, precision)), options, providers=providers,
                                                 provider_options=provider_options) for g in GRAPHS}
        self._dtypes = {g: {i.name: np.float16 if i.type == "tensor(float16)" else np.float32
                            for i in s.get_inputs()} for g, s in self.sessions.items()}
        self._outputs = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return np.dtype(self._dtypes[graph][name])

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        typed = {k: np.ascontiguousarray(v, dtype=self._dtypes[graph][k]) for k, v in feeds.items()}
        return dict(zip(self._outputs[graph], session.run(None, typed)))
