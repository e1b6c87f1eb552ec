"""Inference backends behind one small interface: run a named graph on named inputs.

* :class:`OnnxRuntimeBackend`: the bundle's ONNX graphs in ONNX Runtime (CPU, or the CUDA provider
  where ``onnxruntime-gpu`` is installed), through IO binding. The embedded default.
* :class:`~sccan.sdk.tensorrt_backend.TensorRTBackend`: the bundle's engines.

Everything else (preprocessing, batching classes, postprocessing, the support cache) sits above
this interface in :class:`sccan.sdk.Segmenter`, so it is the same code whichever backend runs.

Tensors that should not make a round trip through host memory every frame (the cached support
features, the backbone's outputs on their way to the decoder) are *resident*: handles made by
:meth:`Backend.resident` or returned for the outputs named in ``keep``, valid as inputs of the
same backend. What a handle is depends on the backend (an ``OrtValue``, a device pointer); the
Segmenter never looks inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from typing import Any, ContextManager, Protocol

import numpy as np

from .bundle import GRAPHS, Bundle
from .errors import BundleMismatchError
from .patch_align_op import ort_session, session_options
from .prior_product import FEED as PRIOR_FEED
from .prior_product import PriorProduct

#: A backend-specific handle to a tensor held where the backend computes.
Resident = Any


class Backend(Protocol):
    """What the Segmenter needs from an inference engine."""

    name: str
    precision: str

    def run(self, graph: str, feeds: Mapping[str, np.ndarray | Resident], keep: Collection[str] = (),
            outputs: Collection[str] | None = None) -> dict[str, np.ndarray | Resident]:
        """Run ``graph`` ("backbone", "support_encoder", "query_decoder") on named inputs (arrays
        or this backend's resident handles) and return ``outputs`` (default: all). Outputs named
        in ``keep`` come back resident, the others as host arrays. A kept output may live in a
        buffer the next run of the same graph reuses: use it before then (inside
        :meth:`exclusive`)."""
        ...

    def resident(self, graph: str, arrays: Mapping[str, np.ndarray]) -> dict[str, Resident]:
        """Copy inputs of ``graph`` to where the backend computes, once, as handles for :meth:`run`."""
        ...

    # Optional, as a pair (None or absent where not had): ``class_part(graph, part)``, what the
    # backend keeps of one class's support inputs (1 x ... each: the Segmenter's cached arrays),
    # made when the class is registered and kept as long as it is; and
    # ``resident_classes(graph, class_parts)``, a batch of such parts. A backend that has them gets
    # the classes apart (the split INT8 decoder keeps one product session per class), and the
    # Segmenter keeps its batches that a new registration leaves right; the others get
    # ``resident(graph, schema.stack_classes(parts))`` when a frame first asks for the batch.

    def exclusive(self) -> ContextManager[Any]:
        """Held across runs whose kept outputs feed later runs (one frame)."""
        ...

    def fork(self) -> "Backend":
        """A backend for another thread, sharing the loaded graphs (or ``self`` where runs are
        already safe to interleave)."""
        ...

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        """The dtype the graph's input ``name`` takes (float32, or float16 for FP16 graphs)."""
        ...


class OnnxRuntimeBackend:
    """ONNX Runtime sessions for the three graphs. ``InferenceSession.run_with_iobinding`` is
    thread-safe with one binding per call, so one backend serves several threads.

    Resident handles are ``OrtValue``s on the provider's device: the support features and the
    backbone's outputs stay in CUDA memory under the CUDA provider (IO binding), and are passed
    without a copy on the CPU.
    """

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
        provider_options = [{"device_id": device} if p == "CUDAExecutionProvider" else {} for p in providers]
        self.ort = ort
        self.precision = precision
        self.providers = providers
        self.device_type = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self.device_id = device if self.device_type == "cuda" else 0
        plugin = bundle.manifest.get("patch_align") == "plugin"
        # INT8: the encoding ONNX Runtime's U8S8 kernels fuse (the same values as the INT8 graph)
        self.sessions = {g: ort_session(bundle.graph_path(g, precision, onnxruntime=True), threads,
                                        plugin=plugin and g == "query_decoder", providers=providers,
                                        provider_options=provider_options) for g in GRAPHS}
        self._dtypes = {g: {i.name: np.float16 if i.type == "tensor(float16)" else np.float32
                            for i in s.get_inputs()} for g, s in self.sessions.items()}
        self._outputs = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}
        # INT8 on the CPU: the prior's product with each class's keys as a constant, packed once
        # (sccan.sdk.prior_product), where `sccan quantize` wrote the split decoder.
        split = bundle.manifest["graphs"]["query_decoder"].get(precision, {}).get("onnxruntime_prior")
        self.prior = None
        if split and self.device_type == "cpu" and not plugin:
            self.prior = PriorProduct(bundle.path, split, lambda: session_options(threads),
                                      lambda source, options: ort.InferenceSession(source, options, providers=providers))
        # Backend's optional capability: a batch's classes apart, where the split decoder runs.
        self.class_part = self._class_part if self.prior is not None else None
        self.resident_classes = self._split_classes if self.prior is not None else None

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return np.dtype(self._dtypes[graph][name])

    def _class_part(self, graph: str, part: Mapping[str, np.ndarray]) -> Any:
        if graph != "query_decoder":
            raise ValueError(f"only the query decoder's support inputs are kept per class, not {graph!r}'s")
        return self.prior.for_class(part)

    def _split_classes(self, graph: str, parts: list[Any]) -> dict[str, Resident]:
        if graph != "query_decoder":
            raise ValueError(f"only the query decoder's support inputs are kept per class, not {graph!r}'s")
        return {PRIOR_FEED: self.prior.for_classes(parts)}  # the split decoder's support batch

    def resident(self, graph: str, arrays: Mapping[str, np.ndarray]) -> dict[str, Resident]:
        return {k: self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v, dtype=self._dtypes[graph][k]),
                                                         self.device_type, self.device_id)
                for k, v in arrays.items()}

    def exclusive(self) -> ContextManager[Any]:
        return contextlib.nullcontext()  # every run has its own binding and outputs

    def fork(self) -> "OnnxRuntimeBackend":
        return self

    def run(self, graph: str, feeds: Mapping[str, np.ndarray | Resident], keep: Collection[str] = (),
            outputs: Collection[str] | None = None) -> dict[str, np.ndarray | Resident]:
        products = feeds.get(PRIOR_FEED)
        if products is not None:  # a support batch that resident() made for the split decoder: arrays out
            return self.prior.run(products, feeds, lambda session, rest: self._run(session, graph, rest, (),
                                                                                   outputs))
        return self._run(self.sessions[graph], graph, feeds, keep, outputs)

    def _run(self, session: Any, graph: str, feeds: Mapping[str, np.ndarray | Resident], keep: Collection[str],
             outputs: Collection[str] | None) -> dict[str, np.ndarray | Resident]:
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, self.ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=self._dtypes[graph][name]))
        for name in self._outputs[graph]:
            # outputs nobody reads stay on the device (no copy under the CUDA provider)
            where = self.device_type if name in keep or (outputs is not None and name not in outputs) else "cpu"
            binding.bind_output(name, where, self.device_id if where == "cuda" else 0)
        session.run_with_iobinding(binding)
        values = dict(zip(self._outputs[graph], binding.get_outputs()))
        return {name: values[name] if name in keep else values[name].numpy()
                for name in (self._outputs[graph] if outputs is None else outputs)}
