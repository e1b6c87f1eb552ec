"""TensorRT engines as a :class:`~sccan.sdk.backends.Backend` (TensorRT >= 10.3, named tensors).

Kept thin: device buffers, one CUDA stream, ``execute_async_v3``. Device memory goes through
cuda-python's runtime bindings, or pycuda (the binding JetPack users often have) when cuda-python
is absent. Before anything is deserialised, a preflight compares what each engine was built for
(TensorRT version, compute capability, plugin library hash, recorded in the manifest's
``engines`` section) with this system and refuses a mismatch with a message naming both sides:
a wrong engine must never segfault or compute silently wrong results.

Not run on the machines this project is developed and tested on (no GPU, no TensorRT): covered by
``tests/gpu`` on a machine that has both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import GRAPHS, Bundle
from .errors import BundleMismatchError
from .info import cuda_devices, cuda_runtime_module

MIN_TENSORRT = (10, 3)


def _cuda():
    """(module, flavour) for device memory: cuda-python's runtime, or pycuda's driver."""
    cudart = cuda_runtime_module()
    if cudart is not None:
        return cudart, "cuda-python"
    try:
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as drv
        return drv, "pycuda"
    except ImportError:
        return None, None


def _compute_capability(device: int) -> str | None:
    devices, _ = cuda_devices()
    return next((d["compute_capability"] for d in devices if d["index"] == device), None)


def preflight(bundle: Bundle, precision: str, device: int) -> list[str]:
    """Mismatches between the bundle's engines and this system (empty: safe to deserialise)."""
    import tensorrt as trt

    engines = bundle.manifest.get("engines", {}).get(precision)
    if not engines:
        return [f"bundle {bundle.path} has no {precision} TensorRT engines (build them with `sccan build`)"]
    problems = []
    here_cc = _compute_capability(device)
    for graph in GRAPHS:
        info = engines.get(graph)
        if info is None:
            problems.append(f"no {precision} engine for {graph}")
            continue
        if info.get("tensorrt") != trt.__version__:
            problems.append(f"{graph} engine built with TensorRT {info.get('tensorrt')}, this system has "
                            f"{trt.__version__}")
        if info.get("compute_capability") != here_cc:
            problems.append(f"{graph} engine built for compute capability {info.get('compute_capability')}, "
                            f"device {device} is {here_cc}")
        plugin = info.get("plugin_library")
        if plugin:
            path = bundle.path / plugin["file"]
            got = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
            if got != plugin["sha256"]:
                problems.append(f"{graph} engine needs plugin {plugin['file']} sha256 {plugin['sha256'][:12]}..., "
                                f"found {got[:12]}")
    return problems


def tensorrt_unavailable(bundle: Bundle, device: int = 0, precision: str = "fp16") -> str | None:
    """Why the TensorRT backend cannot run this bundle here, or None when it can."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return f"tensorrt is not importable ({exc})"
    version = tuple(int(v) for v in trt.__version__.split(".")[:2])
    if version < MIN_TENSORRT:
        return f"TensorRT {trt.__version__} is older than the supported 10.3"
    cuda, _ = _cuda()
    if cuda is None:
        return "neither cuda-python nor pycuda is installed"
    if _compute_capability(device) is None:
        return f"no CUDA device {device}"
    problems = preflight(bundle, precision, device)
    return "; ".join(problems) if problems else None


class _DeviceBuffer:
    def __init__(self, nbytes: int):
        self.cuda, self.flavour = _cuda()
        self.nbytes = max(nbytes, 1)
        if self.flavour == "cuda-python":
            err, self.ptr = self.cuda.cudaMalloc(self.nbytes)
            if int(err) != 0:
                raise MemoryError(f"cudaMalloc({self.nbytes}) failed: {err}")
        else:
            self.mem = self.cuda.mem_alloc(self.nbytes)
            self.ptr = int(self.mem)

    def free(self) -> None:
        if self.flavour == "cuda-python":
            self.cuda.cudaFree(self.ptr)


class TensorRTBackend:
    """The bundle's engines for one precision, one execution context and CUDA stream per engine set."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: int = 0, precision: str = "fp16"):
        import tensorrt as trt

        problems = preflight(bundle, precision, device)
        if problems:
            raise BundleMismatchError("refusing TensorRT engines: " + "; ".join(problems))
        self.trt, self.precision = trt, precision
        self.cuda, self.flavour = _cuda()
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        engines = bundle.manifest["engines"][precision]
        plugins = {e["plugin_library"]["file"] for e in engines.values() if e.get("plugin_library")}
        for plugin in plugins:
            trt.get_plugin_registry().load_library(str(bundle.path / plugin))
        runtime = trt.Runtime(self.logger)
        self.engines, self.contexts = {}, {}
        for graph in GRAPHS:
            data = Path(bundle.path / engines[graph]["file"]).read_bytes()
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise BundleMismatchError(f"TensorRT could not deserialise {engines[graph]['file']}")
            self.engines[graph] = engine
            self.contexts[graph] = engine.create_execution_context()
        if self.flavour == "cuda-python":
            _, self.stream = self.cuda.cudaStreamCreate()
        else:
            self.stream = self.cuda.Stream()
        self._buffers: dict[tuple[str, str], _DeviceBuffer] = {}

    def _io(self, graph: str) -> list[tuple[str, bool]]:
        engine = self.engines[graph]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        return [(n, engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT) for n in names]

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engines[graph].get_tensor_dtype(name)))

    def _buffer(self, graph: str, name: str, nbytes: int) -> _DeviceBuffer:
        buf = self._buffers.get((graph, name))
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self._buffers[(graph, name)] = _DeviceBuffer(nbytes)
        return buf

    def _copy(self, dst: Any, src: Any, nbytes: int, to_device: bool) -> None:
        if self.flavour == "cuda-python":
            kind = (self.cuda.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device
                    else self.cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost)
            self.cuda.cudaMemcpyAsync(dst, src, nbytes, kind, self.stream)
        elif to_device:
            self.cuda.memcpy_htod_async(dst, src, self.stream)
        else:
            self.cuda.memcpy_dtoh_async(dst, src, self.stream)

    def _sync(self) -> None:
        if self.flavour == "cuda-python":
            self.cuda.cudaStreamSynchronize(self.stream)
        else:
            self.stream.synchronize()

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context = self.contexts[graph]
        hosts = {}
        for name, is_input in self._io(graph):
            if is_input:
                array = np.ascontiguousarray(feeds[name], dtype=self.input_dtype(graph, name))
                context.set_input_shape(name, array.shape)
                buf = self._buffer(graph, name, array.nbytes)
                self._copy(buf.ptr if self.flavour == "cuda-python" else buf.mem, array.ctypes.data
                           if self.flavour == "cuda-python" else array, array.nbytes, True)
                hosts[name] = array  # keep alive until the copy is done
                context.set_tensor_address(name, buf.ptr)
        outputs = {}
        for name, is_input in self._io(graph):
            if not is_input:
                shape = tuple(context.get_tensor_shape(name))
                array = np.empty(shape, dtype=self.input_dtype(graph, name))
                buf = self._buffer(graph, name, array.nbytes)
                context.set_tensor_address(name, buf.ptr)
                outputs[name] = (array, buf)
        handle = self.stream if self.flavour == "cuda-python" else self.stream.handle
        if not context.execute_async_v3(int(handle)):
            raise RuntimeError(f"TensorRT execution of {graph} failed")
        for name, (array, buf) in outputs.items():
            self._copy(array.ctypes.data if self.flavour == "cuda-python" else array,
                       buf.ptr if self.flavour == "cuda-python" else buf.mem, array.nbytes, False)
        self._sync()
        return {name: array for name, (array, _) in outputs.items()}
