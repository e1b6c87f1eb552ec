"""A host-memory stand-in for the parts of the TensorRT 10 and cuda-python runtime APIs that
``sccan.sdk.tensorrt_backend`` calls, so its orchestration runs in CI (no GPU, no TensorRT).

* "Device" and page-locked memory are host allocations at real addresses; every copy and every
  tensor address is checked against the allocations (a stale or wrong pointer fails loudly, and a
  host-to-device copy from pageable memory is refused: the backend promises page-locked staging).
* Streams run work when it is submitted, except while capturing, when they record it;
  ``cudaGraphLaunch`` replays the record. An engine's enqueue reads and writes the addresses bound
  at enqueue time, as a captured CUDA graph does.
* An "engine" is an ONNX graph (the bundle's FP32 graph copied to ``*.engine``) run by ONNX Runtime.

Signatures follow cuda-python 13 (``cuda.bindings.runtime``: calls return ``(cudaError_t, value...)``)
and the TensorRT 10 Python API (named tensors, ``execute_async_v3``). This checks shapes,
addresses, copies, capture and replay; it says nothing about TensorRT's own kernels.
"""

from __future__ import annotations

import collections
import ctypes
import enum
import itertools
import types

import numpy as np
import onnx
import onnxruntime as ort


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


OK = cudaError_t.cudaSuccess


class FakeStream:
    _ids = itertools.count(0x1000)

    def __init__(self):
        self.handle = next(self._ids)
        self.recording: list | None = None

    def __int__(self) -> int:
        return self.handle

    def submit(self, op) -> None:
        if self.recording is not None:
            self.recording.append(op)
        else:
            op()


class FakeCudaRuntime(types.SimpleNamespace):
    """``cuda.bindings.runtime`` as far as the backend uses it. ``calls`` counts what was done."""

    cudaHostAllocDefault = 0
    cudaStreamNonBlocking = 1
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    def __init__(self):
        super().__init__()
        self.device: dict[int, np.ndarray] = {}
        self.pinned: dict[int, np.ndarray] = {}
        self.streams: dict[int, FakeStream] = {}
        self.calls: collections.Counter = collections.Counter()

    # memory
    def _alloc(self, table: dict, nbytes: int):
        block = np.zeros(nbytes, np.uint8)
        table[block.ctypes.data] = block
        return OK, block.ctypes.data

    def cudaSetDevice(self, device):
        return (OK,) if device == 0 else (cudaError_t.cudaErrorInvalidValue,)

    def cudaMalloc(self, nbytes):
        self.calls["cudaMalloc"] += 1
        return self._alloc(self.device, nbytes)

    def cudaFree(self, ptr):
        self.device.pop(int(ptr))
        return (OK,)

    def cudaHostAlloc(self, nbytes, flags):
        return self._alloc(self.pinned, nbytes)

    def cudaFreeHost(self, ptr):
        self.pinned.pop(int(ptr))
        return (OK,)

    def inside(self, table: dict, ptr: int, nbytes: int) -> bool:
        return any(start <= ptr and ptr + nbytes <= start + block.nbytes for start, block in table.items())

    def require(self, table: dict, ptr: int, nbytes: int, what: str) -> None:
        if not self.inside(table, int(ptr), nbytes):
            raise AssertionError(f"{what}: {nbytes} bytes at {int(ptr):#x} are not inside one allocation")

    # streams and copies
    def cudaStreamCreateWithFlags(self, flags):
        stream = FakeStream()
        self.streams[stream.handle] = stream
        return OK, stream

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.require(self.pinned, src, nbytes, "host-to-device source (must be page-locked)")
            self.require(self.device, dst, nbytes, "host-to-device destination")
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            self.require(self.device, src, nbytes, "device-to-host source")
            self.require(self.pinned, dst, nbytes, "device-to-host destination (must be page-locked)")
        else:
            raise AssertionError(f"unexpected copy kind {kind}")
        self.calls[kind.name] += 1
        stream.submit(lambda: ctypes.memmove(int(dst), int(src), nbytes))
        return (OK,)

    def cudaStreamSynchronize(self, stream):
        if stream.recording is not None:
            raise AssertionError("synchronize during capture")
        return (OK,)

    # graphs
    def cudaStreamBeginCapture(self, stream, mode):
        stream.recording = []
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        ops, stream.recording = stream.recording, None
        self.calls["captures"] += 1
        return OK, types.SimpleNamespace(ops=ops)

    def cudaGraphInstantiate(self, graph, flags):
        return OK, types.SimpleNamespace(ops=list(graph.ops), alive=True)

    def cudaGraphLaunch(self, executable, stream):
        assert executable.alive, "launch of a destroyed graph"
        self.calls["graph_launches"] += 1
        for op in executable.ops:
            stream.submit(op)
        return (OK,)

    def cudaGraphExecDestroy(self, executable):
        executable.alive = False
        return (OK,)

    def cudaGraphDestroy(self, graph):
        return (OK,)


class _DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 8


class _TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_NP = {_DataType.FLOAT: np.float32, _DataType.HALF: np.float16, _DataType.INT32: np.int32, _DataType.INT64: np.int64}
_ONNX = {onnx.TensorProto.FLOAT: _DataType.FLOAT, onnx.TensorProto.FLOAT16: _DataType.HALF,
         onnx.TensorProto.INT32: _DataType.INT32, onnx.TensorProto.INT64: _DataType.INT64}


class FakeEngine:
    def __init__(self, data: bytes, cuda: FakeCudaRuntime):
        model = onnx.load_from_string(data)
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.cuda = cuda
        self.dims = {}
        self.types = {}
        init = {i.name for i in model.graph.initializer}
        self.input_names = [v.name for v in model.graph.input if v.name not in init]
        self.output_names = [v.name for v in model.graph.output]
        for v in list(model.graph.input) + list(model.graph.output):
            t = v.type.tensor_type
            self.types[v.name] = _ONNX[t.elem_type]
            self.dims[v.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        self._shapes: dict[tuple, dict[str, tuple]] = {}
        self.executions = 0

    @property
    def num_io_tensors(self) -> int:
        return len(self.input_names) + len(self.output_names)

    def get_tensor_name(self, i: int) -> str:
        return (self.input_names + self.output_names)[i]

    def get_tensor_mode(self, name: str) -> _TensorIOMode:
        return _TensorIOMode.INPUT if name in self.input_names else _TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> _DataType:
        return self.types[name]

    def create_execution_context(self) -> "FakeContext":
        return FakeContext(self)

    def view(self, name: str, shape: tuple, ptr: int) -> np.ndarray:
        """The tensor ``name`` of ``shape`` at device address ``ptr`` (checked)."""
        dtype = np.dtype(_NP[self.types[name]])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.cuda.require(self.cuda.device, ptr, nbytes, f"tensor {name}")
        return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=dtype).reshape(shape)

    def output_shapes(self, shapes: dict[str, tuple], addresses: dict[str, int]) -> dict[str, tuple]:
        """Output shapes for these input shapes. TensorRT derives them from the shapes alone; the
        stand-in runs the graph once per input-shape combination on the bound inputs (some graphs
        gather with data-dependent indices, which zeros would put out of range)."""
        key = tuple(shapes[n] for n in self.input_names)
        if key not in self._shapes:
            feeds = {n: self.view(n, shapes[n], addresses[n]).copy() for n in self.input_names}
            self._shapes[key] = {n: a.shape for n, a in zip(self.output_names, self.session.run(None, feeds))}
        return self._shapes[key]


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        dims = self.engine.dims[name]
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape)):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.engine.input_names:
            return self.shapes[name]
        return self.engine.output_shapes(self.shapes, self.addresses)[name]

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine, cuda = self.engine, self.engine.cuda
        stream = cuda.streams[stream_handle]
        shapes = {n: self.shapes[n] for n in engine.input_names}
        outputs = engine.output_shapes(shapes, self.addresses)
        bound = dict(self.addresses)  # what the kernels are launched with (and a capture records)
        views = {name: engine.view(name, shape, bound[name])
                 for name, shape in list(shapes.items()) + list(outputs.items())}

        def kernel():
            for name, view in views.items():  # a replayed graph may point at memory freed since
                cuda.require(cuda.device, bound[name], view.nbytes, f"tensor {name} when the kernel runs")
            engine.executions += 1
            results = engine.session.run(engine.output_names, {n: views[n].copy() for n in engine.input_names})
            for name, value in zip(engine.output_names, results):
                views[name][...] = value

        stream.submit(kernel)
        return True


class FakeTensorRT(types.ModuleType):
    """The ``tensorrt`` module as far as the backend uses it."""

    DataType = _DataType
    TensorIOMode = _TensorIOMode

    class Logger:
        WARNING = 2

        def __init__(self, level=2):
            self.level = level

    def __init__(self, cuda: FakeCudaRuntime, version: str = "10.3.0"):
        super().__init__("tensorrt")
        self.__version__ = version
        self.cuda = cuda
        self.engines: list[FakeEngine] = []
        self.plugins: list[str] = []

    @staticmethod
    def nptype(dtype: _DataType):
        return _NP[dtype]

    def init_libnvinfer_plugins(self, logger, namespace) -> bool:
        return True

    def get_plugin_registry(self):
        return types.SimpleNamespace(load_library=self.plugins.append)

    def Runtime(self, logger):  # noqa: N802 - TensorRT's name
        def deserialize_cuda_engine(data: bytes):
            try:
                engine = FakeEngine(bytes(data), self.cuda)
            except Exception:  # noqa: BLE001 - TensorRT returns None for a bad engine
                return None
            self.engines.append(engine)
            return engine

        return types.SimpleNamespace(deserialize_cuda_engine=deserialize_cuda_engine)
