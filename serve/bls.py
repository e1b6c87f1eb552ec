"""The Segmenter's graphs as separate Triton models, called from the Python model (BLS).

:class:`TritonBLSBackend` is a :class:`~sccan.sdk.backends.Backend` whose ``run`` sends one
Business Logic Scripting request to the model ``sccan_<graph>``. Everything else (preprocessing,
class batches, the support cache, postprocessing) is the Segmenter's own code, as in process.

The graph models are ``tensorrt_plan`` models (``sccan triton --backend tensorrt``: the bundle's
engines, run by Triton's TensorRT backend on the GPU) or, on a CPU, Python-backend models running
the ONNX graphs in ONNX Runtime (``--backend onnxruntime-bls``, :class:`GraphModel`; the layout the
tests run against a real server).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ContextManager

import numpy as np

from sccan.sdk.bundle import GRAPHS, Bundle
from sccan.sdk.errors import SCCANError

PREFIX = "sccan_"


class TritonBLSBackend:
    """Each graph is the Triton model ``sccan_<graph>``; tensors travel as host arrays."""

    name = "triton-bls"

    def __init__(self, bundle: Bundle, precision: str = "fp32"):
        import triton_python_backend_utils as pb_utils

        self.pb, self.precision = pb_utils, precision
        graphs = bundle.manifest["graphs"]
        self._dtypes = {g: {i["name"]: np.dtype(i["dtype"]) for i in graphs[g][precision]["inputs"]} for g in GRAPHS}
        self._outputs = {g: [o["name"] for o in graphs[g][precision]["outputs"]] for g in GRAPHS}

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return self._dtypes[graph][name]

    def resident(self, graph: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v, dtype=self._dtypes[graph][k]) for k, v in arrays.items()}

    def exclusive(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def fork(self) -> "TritonBLSBackend":
        return self

    def run(self, graph: str, feeds: Mapping[str, Any], keep: Collection[str] = (),
            outputs: Collection[str] | None = None) -> dict[str, np.ndarray]:
        pb = self.pb
        wanted = list(self._outputs[graph] if outputs is None else outputs)
        inputs = [pb.Tensor(name, np.ascontiguousarray(value, dtype=self._dtypes[graph][name]))
                  for name, value in feeds.items()]
        response = pb.InferenceRequest(model_name=PREFIX + graph, inputs=inputs,
                                       requested_output_names=wanted).exec()
        if response.has_error():
            raise SCCANError(f"the {PREFIX + graph} model failed: {response.error().message()}")
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in wanted}


class GraphModel:
    """A Python-backend model running one ONNX graph in ONNX Runtime (the CPU stand-in for a
    ``tensorrt_plan`` model in the BLS layout)."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        from sccan.sdk.patch_align_op import ort_session

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        graph = Path(args["model_repository"]).parent / params["graph"]
        threads = int(params["threads"]) if params.get("threads") else None
        self.session = ort_session(graph, threads, plugin=params.get("plugin") == "1",
                                   providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                feeds = {i.name: self.pb.get_input_tensor_by_name(request, i.name).as_numpy()
                         for i in self.session.get_inputs()}
                values = self.session.run(None, feeds)
                responses.append(self.pb.InferenceResponse([self.pb.Tensor(n, v) for n, v in zip(self.outputs, values)]))
            except Exception as exc:  # noqa: BLE001 - the error goes back to the caller
                responses.append(self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(str(exc))))
        return responses
