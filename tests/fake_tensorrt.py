"""A host-memory stand-in for the parts of the TensorRT 10/11, cuda-python and pycuda APIs that
``sccan.sdk.tensorrt_backend`` and ``sccan.export.engines`` call, so their orchestration runs in CI
(no GPU, no TensorRT).

* "Device" and page-locked memory are host allocations at real addresses; every copy and every
  tensor address is checked against the allocations (a stale or wrong pointer fails loudly, and a
  host-to-device copy from pageable memory is refused: the backend promises page-locked staging).
  Page-locked allocations are counted (``calls["cudaHostAlloc"]``).
* Streams are asynchronous: submitted work runs only when the stream is synchronised, so a missing
  synchronise, or a staging buffer overwritten before its copy ran, gives wrong results. While
  capturing, a stream records; ``cudaGraphLaunch`` submits the record. An enqueue that raises
  during capture invalidates it (``cudaStreamEndCapture`` then fails, as CUDA's does).
* The builder records what it was asked for (network flags, builder flags, profiles, timing-cache
  use) in ``FakeTensorRT.builds``; its "plan" is a JSON header (profiles, flags) and the ONNX graph,
  run by ONNX Runtime when the engine executes. ``unsupported_ops``, ``out_of_memory`` and
  ``tamper`` plant a parser rejection, an out-of-memory build and a wrong engine.
* Engines have the profiles they were built with: ``set_input_shape`` enforces the active
  profile's min/max, and two live contexts executing on one profile fail.
* The plugin registry (``FakePluginRegistry``) behaves as real TensorRT's does: ``load_library``
  returns None for a file that is not a shared library and for a second load while the creator is
  registered.
* Device memory (``cudaMalloc``, pycuda's ``mem_alloc``) and page-locked host memory start as
  garbage, as CUDA's do: every byte 0xFF, a NaN in float16 and float32, so code that reads memory
  it never wrote fails instead of reading zeros.
* Engines, contexts and builder configs refuse attributes TensorRT's classes lack, as pybind11
  objects (no ``__dict__``) do. A new context is on profile 0: TensorRT 8.6 made that the default
  for every context (before it, only the first context got profile 0 and the others -1; the
  header of ``IExecutionContext::getOptimizationProfile`` says so), and two live contexts
  executing on one profile fail here, as they would race on a GPU.
* ``FakePycuda`` is ``pycuda.driver`` over the same memory, so the pycuda path runs too;
  ``FakeCudaRuntime(driver_error=True)`` is cuda-python 13 on a CUDA 12 driver (every call fails).

``tests/test_stand_in_fidelity.py`` holds this stand-in to a real TensorRT's Python bindings (the
lean runtime's and the full ones, installed by the dev extra): every method here exists there with
an argument count TensorRT accepts, and every enum value is TensorRT's.

This checks shapes, addresses, copies, capture and replay, profiles and the build's bookkeeping;
it says nothing about TensorRT's own kernels or FP16 arithmetic (ONNX Runtime's CPU kernels run
the FP16 graphs).
"""

from __future__ import annotations

import collections
import ctypes
import enum
import importlib.machinery
import itertools
import json
import struct
import types
import weakref

import numpy as np
import onnx

from sccan.sdk.patch_align_op import ort_session
from sccan.sdk.tensorrt_backend import PLUGIN_CREATOR

PLAN_MAGIC = b"FAKEPLAN"


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInsufficientDriver = 35
    cudaErrorStreamCaptureInvalidated = 901


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
#: What fresh device and page-locked memory hold: every byte 0xFF (float16 0xFFFF and float32
#: 0xFFFFFFFF are NaN), where CUDA leaves whatever was there.
GARBAGE = 0xFF


class FakeStream:
    _ids = itertools.count(0x1000)

    def __init__(self):
        self.handle = next(self._ids)
        self.recording: list | None = None
        self.invalidated = False
        self.pending: list = []

    def __int__(self) -> int:
        return self.handle

    def submit(self, op) -> None:
        (self.recording if self.recording is not None else self.pending).append(op)

    def flush(self) -> None:
        ops, self.pending = self.pending, []
        for op in ops:
            op()

    synchronize = flush  # pycuda's Stream.synchronize


class FakeCudaRuntime(types.SimpleNamespace):
    """``cuda.bindings.runtime`` as far as the SDK uses it. ``calls`` counts what was done.
    ``driver_error=True``: cuda-python newer than the driver (every call fails)."""

    cudaHostAllocDefault = 0
    cudaStreamNonBlocking = 1
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    def __init__(self, gpu: str = "Orin", cc: tuple[int, int] = (8, 7), driver_error: bool = False):
        super().__init__()
        self.gpu, self.cc, self.driver_error = gpu, cc, driver_error
        self.device: dict[int, np.ndarray] = {}
        self.pinned: dict[int, np.ndarray] = {}
        self.streams: dict[int, FakeStream] = {}
        self.graphs_alive = 0
        self.calls: collections.Counter = collections.Counter()

    def _fail(self):
        return (cudaError_t.cudaErrorInsufficientDriver,) if self.driver_error else None

    # devices
    def cudaGetDeviceCount(self):
        return (cudaError_t.cudaErrorInsufficientDriver, 0) if self.driver_error else (OK, 1)

    def cudaGetDeviceProperties(self, i):
        prop = types.SimpleNamespace(name=self.gpu.encode() + b"\x00" * 4, major=self.cc[0], minor=self.cc[1])
        return OK, prop

    def cudaRuntimeGetVersion(self):
        return OK, 12060

    def cudaDriverGetVersion(self):
        return OK, 12060

    # memory
    def _alloc(self, table: dict, nbytes: int):
        block = np.full(nbytes, GARBAGE, np.uint8)  # uninitialised, as CUDA's: NaN to float readers
        table[block.ctypes.data] = block
        return OK, block.ctypes.data

    def cudaSetDevice(self, device):
        if self.driver_error:
            return self._fail()
        return (OK,) if device == 0 else (cudaError_t.cudaErrorInvalidValue,)

    def cudaMalloc(self, nbytes):
        self.calls["cudaMalloc"] += 1
        return self._alloc(self.device, nbytes)

    def cudaFree(self, ptr):
        self.device.pop(int(ptr))
        return (OK,)

    def cudaHostAlloc(self, nbytes, flags):
        self.calls["cudaHostAlloc"] += 1
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

    def copy(self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind, stream: FakeStream) -> None:
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

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self.copy(dst, src, nbytes, kind, stream)
        return (OK,)

    def cudaStreamSynchronize(self, stream):
        if stream.recording is not None:
            raise AssertionError("synchronize during capture")
        stream.flush()
        return (OK,)

    # events and memory
    def cudaEventCreate(self):
        return OK, types.SimpleNamespace(time=None)

    def cudaEventRecord(self, event, stream):
        import time

        stream.submit(lambda: setattr(event, "time", time.perf_counter()))
        return (OK,)

    def cudaEventElapsedTime(self, start, end):
        assert start.time is not None and end.time is not None, "event not complete (no synchronise?)"
        return OK, 1000.0 * (end.time - start.time)

    def cudaMemGetInfo(self):
        total = 8 << 30
        return OK, total - sum(b.nbytes for b in self.device.values()), total

    # graphs
    def cudaStreamBeginCapture(self, stream, mode):
        assert stream.recording is None, "capture begun on a stream that is already capturing"
        stream.recording, stream.invalidated = [], False
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        ops, stream.recording = stream.recording, None
        if stream.invalidated:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        self.calls["captures"] += 1
        self.graphs_alive += 1
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
        self.graphs_alive -= 1
        return (OK,)


class FakePycuda(types.ModuleType):
    """``pycuda.driver`` over a :class:`FakeCudaRuntime`'s memory tables."""

    def __init__(self, cuda: FakeCudaRuntime):
        super().__init__("pycuda.driver")
        self.cuda = cuda
        outer = self

        class Device:
            def __init__(self, index):
                if index != 0:
                    raise RuntimeError(f"cuDeviceGet failed: invalid device ordinal {index}")

            @staticmethod
            def count():
                return 1

            def name(self):
                return outer.cuda.gpu

            def compute_capability(self):
                return outer.cuda.cc

            def retain_primary_context(self):
                return types.SimpleNamespace(push=lambda: outer.cuda.calls.update(["ctx_push"]))

        class Context:
            @staticmethod
            def pop():
                outer.cuda.calls["ctx_pop"] += 1

        class Allocation:
            def __init__(self, nbytes):
                _, self.ptr = outer.cuda.cudaMalloc(nbytes)

            def __int__(self):
                return self.ptr

            def free(self):
                outer.cuda.cudaFree(self.ptr)

        self.Device, self.Context, self.Allocation = Device, Context, Allocation

    def init(self):
        pass

    def get_driver_version(self):
        return 12060

    def get_version(self):
        return (12, 6, 0)

    def mem_get_info(self):
        _, free, total = self.cuda.cudaMemGetInfo()
        return free, total

    def Event(self):  # noqa: N802 - pycuda's name
        cuda = self.cuda
        event = types.SimpleNamespace(time=None)

        def record(stream):
            _, = cuda.cudaEventRecord(event, stream)

        def time_till(other):
            return cuda.cudaEventElapsedTime(event, other)[1]

        event.record, event.time_till = record, time_till
        return event

    def mem_alloc(self, nbytes):
        return self.Allocation(nbytes)

    def pagelocked_empty(self, shape, dtype):
        self.cuda.calls["cudaHostAlloc"] += 1
        array = np.empty(shape, dtype)
        array.view(np.uint8).fill(GARBAGE)  # pagelocked_empty: uninitialised
        self.cuda.pinned[array.ctypes.data] = array
        return array

    def Stream(self):  # noqa: N802 - pycuda's name
        stream = FakeStream()
        self.cuda.streams[stream.handle] = stream
        return stream

    def memcpy_htod_async(self, dst, src, stream):
        self.cuda.copy(int(dst), src.ctypes.data, src.nbytes, cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def memcpy_dtoh_async(self, dst, src, stream):
        self.cuda.copy(dst.ctypes.data, int(src), dst.nbytes, cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)


# -- TensorRT ------------------------------------------------------------------------------------------


class _DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 8


class _TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class _NetworkFlag10(enum.IntEnum):
    STRONGLY_TYPED = 1  # after kEXPLICIT_BATCH = 0


class _NetworkFlag11(enum.IntEnum):  # TensorRT 11 removed kEXPLICIT_BATCH; the flag is deprecated (always on)
    STRONGLY_TYPED = 0


class _BuilderFlag10(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    TF32 = 6


class _BuilderFlag11(enum.IntEnum):  # TensorRT 11 removed the precision flags of weak typing
    TF32 = 6


class _MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class _HardwareCompatibilityLevel(enum.IntEnum):
    NONE = 0
    AMPERE_PLUS = 1


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _ILogger:
    Severity = _Severity

    def __init__(self):
        pass


_NP = {_DataType.FLOAT: np.float32, _DataType.HALF: np.float16, _DataType.INT32: np.int32, _DataType.INT64: np.int64}
_ONNX = {onnx.TensorProto.FLOAT: _DataType.FLOAT, onnx.TensorProto.FLOAT16: _DataType.HALF,
         onnx.TensorProto.INT32: _DataType.INT32, onnx.TensorProto.INT64: _DataType.INT64}


def _io(model: onnx.ModelProto):
    init = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init]
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            for v in list(inputs) + list(model.graph.output)}
    types_ = {v.name: _ONNX[v.type.tensor_type.elem_type] for v in list(inputs) + list(model.graph.output)}
    return [v.name for v in inputs], [v.name for v in model.graph.output], dims, types_


def make_plan(model: onnx.ModelProto, header: dict) -> bytes:
    head = json.dumps(header).encode()
    return PLAN_MAGIC + struct.pack("<Q", len(head)) + head + model.SerializeToString()


def read_plan(data: bytes) -> tuple[dict, bytes]:
    if not data.startswith(PLAN_MAGIC):
        raise ValueError("not a plan")
    (n,) = struct.unpack("<Q", data[8:16])
    return json.loads(data[16:16 + n]), data[16 + n:]


class _TensorRTObject:
    """pybind11 objects have no ``__dict__``: assigning an attribute that TensorRT's class lacks raises
    AttributeError. Stand-in objects accept, after ``__init__``, only attributes they hold already."""

    _TENSORRT_NAME = "object"

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_sealed") and not hasattr(self, name):
            raise AttributeError(f"'tensorrt.{self._TENSORRT_NAME}' object has no attribute '{name}'")
        object.__setattr__(self, name, value)

    def _seal(self) -> None:
        object.__setattr__(self, "_sealed", True)


class FakeEngine(_TensorRTObject):
    _TENSORRT_NAME = "ICudaEngine"

    def __init__(self, data: bytes, cuda: FakeCudaRuntime):
        self.header, graph = read_plan(data)
        model = onnx.load_from_string(graph)
        # the SDK's session maker: it runs the patch-alignment plugin node too (onnxruntime-extensions)
        self.session = ort_session(model, providers=["CPUExecutionProvider"])
        self.cuda = cuda
        self.input_names, self.output_names, self.dims, self.types = _io(model)
        self.plugin_ops = sorted({n.op_type for n in model.graph.node if n.domain == "sccan"})
        self.profiles = self.header["profiles"]  # [{input: [min, opt, max]}]
        self._shapes: dict[tuple, dict[str, tuple]] = {}
        self.contexts: weakref.WeakSet = weakref.WeakSet()
        self.executions = 0
        self._seal()

    @property
    def num_io_tensors(self) -> int:
        return len(self.input_names) + len(self.output_names)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_name(self, i: int) -> str:
        return (self.input_names + self.output_names)[i]

    def get_tensor_mode(self, name: str) -> _TensorIOMode:
        return _TensorIOMode.INPUT if name in self.input_names else _TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> _DataType:
        return self.types[name]

    def get_tensor_profile_shape(self, name: str, profile: int):
        return self.profiles[profile][name]

    def create_execution_context(self) -> "FakeContext":
        context = FakeContext(self)
        self.contexts.add(context)
        return context

    def view(self, name: str, shape: tuple, ptr: int) -> np.ndarray:
        """The tensor ``name`` of ``shape`` at device address ``ptr`` (checked)."""
        dtype = np.dtype(_NP[self.types[name]])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.cuda.require(self.cuda.device, ptr, nbytes, f"tensor {name}")
        return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=dtype).reshape(shape)

    def output_shapes(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        """Output shapes for these input shapes, from the shapes alone (as TensorRT derives them):
        the graph run once per shape combination on random inputs of those shapes."""
        key = tuple(shapes[n] for n in self.input_names)
        if key not in self._shapes:
            rng = np.random.default_rng(0)
            feeds = {n: rng.standard_normal(shapes[n]).astype(_NP[self.types[n]]) for n in self.input_names}
            self._shapes[key] = {n: a.shape for n, a in zip(self.output_names, self.session.run(None, feeds))}
        return self._shapes[key]


class FakeContext(_TensorRTObject):
    _TENSORRT_NAME = "IExecutionContext"

    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.fail_enqueue_during_capture = False
        self._seal()

    def set_optimization_profile_async(self, index: int, stream_handle: int) -> bool:
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.engine.cuda.streams[int(stream_handle)]  # a real stream
        self.profile = index
        self.shapes.clear()
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        dims = self.engine.dims[name]
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape)):
            return False
        bounds = self.engine.profiles[self.profile].get(name)
        if bounds is not None and any(s < lo or s > hi for s, lo, hi in zip(shape, bounds[0], bounds[2])):
            return False  # outside the active profile
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.engine.input_names:
            return self.shapes[name]
        return self.engine.output_shapes(self.shapes)[name]

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine, cuda = self.engine, self.engine.cuda
        stream = cuda.streams[stream_handle]
        sharing = [c for c in engine.contexts if c is not self and c.profile == self.profile]
        if sharing:
            raise AssertionError(f"two live execution contexts of one engine use optimisation profile {self.profile}")
        if self.fail_enqueue_during_capture and stream.recording is not None:
            stream.invalidated = True
            raise RuntimeError("planted: enqueue failed during capture")
        shapes = {n: self.shapes[n] for n in engine.input_names}
        outputs = engine.output_shapes(shapes)
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


class FakeTimingCache:
    def __init__(self, data: bytes):
        self.entries: set[str] = set(json.loads(data.decode())) if data else set()

    def serialize(self) -> bytes:
        return json.dumps(sorted(self.entries)).encode()


class FakeProfile:
    def __init__(self):
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's names
        lo, mid, hi = (list(map(int, s)) for s in (min, opt, max))
        assert len(lo) == len(mid) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, mid, hi)), (name, lo, mid, hi)
        self.shapes[name] = [lo, mid, hi]


class FakeConfig(_TensorRTObject):
    _TENSORRT_NAME = "IBuilderConfig"

    def __init__(self, trt: "FakeTensorRT"):
        self.trt = trt
        self.flags = {trt.BuilderFlag.TF32}  # TensorRT's default: TF32 on
        self.pools: dict = {}
        self.profiles: list[FakeProfile] = []
        self.cache: FakeTimingCache | None = None
        self.hardware_compatibility_level = _HardwareCompatibilityLevel.NONE
        self._seal()

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool, nbytes):
        self.pools[pool] = nbytes

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.cache


class _ParserError:
    def __init__(self, index: int, node: onnx.NodeProto, desc: str):
        self._index, self._node, self._desc = index, node, desc

    def desc(self):
        return self._desc

    def node(self):
        return self._index

    def node_name(self):
        return self._node.name

    def node_operator(self):
        return self._node.op_type

    def code(self):
        return 8  # UNSUPPORTED_NODE


class FakeNetwork:
    def __init__(self, flags: int):
        self.flags = flags
        self.model: onnx.ModelProto | None = None
        self.path = None

    @property
    def num_inputs(self) -> int:
        return len(_io(self.model)[0])

    def get_input(self, i: int):
        names, _, dims, types_ = _io(self.model)
        return types.SimpleNamespace(name=names[i], shape=tuple(dims[names[i]]), dtype=types_[names[i]])


class FakeParser:
    def __init__(self, trt: "FakeTensorRT", network: FakeNetwork):
        self.trt, self.network, self.errors = trt, network, []

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path)
        uint8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.UINT8}
        for i, node in enumerate(model.graph.node):
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in uint8:
                # TensorRT's explicit quantization is INT8 / FP8 / INT4 only
                self.errors.append(_ParserError(i, node, "Assertion failed: UINT8 quantization is not supported"))
            elif node.op_type in self.trt.unsupported_ops:
                self.errors.append(_ParserError(i, node, f"No importer registered for op: {node.op_type}"))
            elif node.domain == "sccan" and not self.trt.plugins:
                self.errors.append(_ParserError(i, node, f"plugin {node.op_type} not found in the registry"))
        self.network.model, self.network.path = model, path
        return not self.errors

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> _ParserError:
        return self.errors[i]


class FakeBuilder:
    def __init__(self, trt: "FakeTensorRT", logger):
        self.trt, self.logger = trt, logger

    def create_network(self, flags: int = 0) -> FakeNetwork:
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig(self.trt)

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig):
        trt = self.trt
        name = network.path.rsplit("/", 1)[-1]
        if trt.out_of_memory:
            self.logger.log(_Severity.ERROR, "[virtualMemoryBuffer.cpp::resizePhysical] Error Code 2: OutOfMemory "
                                             "(Requested size was 1073741824 bytes.)")
            return None
        inputs, _, dims, _ = _io(network.model)
        dynamic = [n for n in inputs if -1 in dims[n]]
        for profile in config.profiles:
            missing = [n for n in dynamic if n not in profile.shapes]
            if missing:
                self.logger.log(_Severity.ERROR, f"{name}: no shapes in an optimization profile for {missing}")
                return None
        if dynamic and not config.profiles:
            self.logger.log(_Severity.ERROR, f"{name}: dynamic inputs but no optimization profile")
            return None
        layers = {f"{name}:{n.name}" for n in network.model.graph.node}
        hits = len(layers & config.cache.entries) if config.cache else 0
        if config.cache is not None:
            config.cache.entries |= layers
        flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        strongly_typed = trt.major >= 11 or bool(network.flags & flag)
        trt.builds.append({
            "graph": name, "network_flags": network.flags, "strongly_typed": strongly_typed,
            "builder_flags": sorted(f.name for f in config.flags), "tf32": trt.BuilderFlag.TF32 in config.flags,
            "workspace": config.pools.get(_MemoryPoolType.WORKSPACE),
            "hardware_compatibility": config.hardware_compatibility_level.name,
            "profiles": [p.shapes for p in config.profiles], "timing_cache": config.cache is not None,
            "cache_hits": hits, "layers": len(layers)})
        model = network.model
        if trt.tamper is not None:
            model = trt.tamper(name, model)
        return memoryview(make_plan(model, {"profiles": [p.shapes for p in config.profiles]}))


class FakePluginRegistry:
    """TensorRT's plugin registry as real TensorRT 11.4 behaves (seen with libnvinfer_lean): a library
    registers its creators when loaded; loading one whose creator is registered already returns None,
    as does a file that is not a shared library. Every ELF file stands for a build of SccanPatchAlign."""

    def __init__(self, plugins: list[str]):
        self.plugins = plugins
        self.creators: dict[tuple[str, str, str], str] = {}

    def load_library(self, path: str):
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None  # TensorRT logs and returns None
        if PLUGIN_CREATOR in self.creators:
            return None  # "fails and returns None if any of the plugins are already registered"
        self.creators[PLUGIN_CREATOR] = path
        self.plugins.append(path)
        return types.SimpleNamespace(path=path)

    def get_creator(self, name: str, version: str, namespace: str = ""):
        path = self.creators.get((name, version, namespace))
        return None if path is None else types.SimpleNamespace(name=name, path=path)

    def deregister_library(self, handle) -> None:
        self.creators = {k: v for k, v in self.creators.items() if v != handle.path}


class FakeTensorRT(types.ModuleType):
    """The ``tensorrt`` module as far as the SDK and the engine build use it."""

    DataType = _DataType
    TensorIOMode = _TensorIOMode
    MemoryPoolType = _MemoryPoolType
    HardwareCompatibilityLevel = _HardwareCompatibilityLevel
    ILogger = _ILogger

    class Logger:
        WARNING = 2

        def __init__(self, level=2):
            self.level = level

    def __init__(self, cuda: FakeCudaRuntime, version: str = "10.3.0"):
        super().__init__("tensorrt")
        self.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch.export looks for it
        self.__version__ = version
        self.major = int(version.split(".")[0])
        self.BuilderFlag = _BuilderFlag11 if self.major >= 11 else _BuilderFlag10
        self.NetworkDefinitionCreationFlag = _NetworkFlag11 if self.major >= 11 else _NetworkFlag10
        self.cuda = cuda
        self.engines: list[FakeEngine] = []
        self.plugins: list[str] = []
        self.registry = FakePluginRegistry(self.plugins)
        self.builds: list[dict] = []
        self.unsupported_ops: set[str] = set()
        self.out_of_memory = False
        self.tamper = None  # (graph file name, model) -> model: plant a wrong engine

    @staticmethod
    def nptype(dtype: _DataType):
        return _NP[dtype]

    def init_libnvinfer_plugins(self, logger, namespace) -> bool:
        return True

    def get_plugin_registry(self):
        return self.registry

    def Builder(self, logger):  # noqa: N802 - TensorRT's name
        return FakeBuilder(self, logger)

    def OnnxParser(self, network, logger):  # noqa: N802
        return FakeParser(self, network)

    def Runtime(self, logger):  # noqa: N802
        def deserialize_cuda_engine(data: bytes):
            try:
                engine = FakeEngine(bytes(data), self.cuda)
            except Exception:  # noqa: BLE001 - TensorRT returns None for a bad engine
                return None
            if engine.plugin_ops and PLUGIN_CREATOR not in self.registry.creators:
                # real TensorRT: "getPluginCreator could not find plugin SccanPatchAlign version 1", None
                return None
            self.engines.append(engine)
            return engine

        return types.SimpleNamespace(deserialize_cuda_engine=deserialize_cuda_engine)


def install(monkeypatch, cuda: FakeCudaRuntime | None, trt: FakeTensorRT | None, pycuda: FakePycuda | None = None):
    """Make ``import tensorrt``, cuda-python's runtime and ``pycuda.driver`` (each when given) the
    stand-ins for the SDK and the engine build."""
    import sys

    import sccan.sdk.info as info
    import sccan.sdk.tensorrt_backend as backend

    monkeypatch.setitem(sys.modules, "tensorrt", trt)  # None: `import tensorrt` raises ImportError
    for module in (info, backend):
        monkeypatch.setattr(module, "cuda_runtime_module", lambda: cuda)
        monkeypatch.setattr(module, "pycuda_driver", lambda: pycuda)
