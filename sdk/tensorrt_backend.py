"""TensorRT engines as a :class:`~sccan.sdk.backends.Backend` (TensorRT >= 10.3, named tensors).

Kept thin: one execution context per engine and one CUDA stream per backend, ``execute_async_v3``
on named tensor addresses. Each backend (the first, and every :meth:`TensorRTBackend.fork`, which
``Segmenter.clone`` uses) holds one of the engines' optimisation profiles (``sccan build
--contexts N`` builds N identical ones): concurrently used contexts of a dynamic-shape engine each
need their own. Host staging buffers are page-locked (asynchronous copies need that);
resident tensors (the cached support features, the backbone's outputs on their way to the decoder)
stay in device memory and are bound by address, so a frame copies only its image in and the
logits out. With ``cuda_graph=True`` the per-frame graphs (backbone, query decoder) are captured
into CUDA graphs after one ordinary enqueue, cached per graph, shapes and addresses (so a frame
with two decoder batches replays both), at most :data:`MAX_CAPTURES` per backend.

Device memory goes through cuda-python's runtime bindings, or pycuda (the binding JetPack users
often have) when cuda-python is absent or cannot talk to the driver (cuda-python 13 on a CUDA 12
driver); CUDA-graph capture needs cuda-python. Before anything is deserialised, a preflight
compares what each engine was built for (TensorRT version, GPU model and compute capability,
plugin library hash, recorded in the manifest's ``engines`` section by ``sccan build``) with this
system, and checks each plan file's sha256; it refuses a mismatch with a message naming both
sides: a wrong or damaged engine must never segfault or compute silently wrong results.

Not run on a GPU by the machines this project is developed on (no GPU, no TensorRT): ``tests/gpu``
covers it on a machine that has both; ``tests/test_tensorrt_host.py`` runs this code against a
host-memory stand-in for the TensorRT and CUDA runtime APIs, which checks the orchestration
(shapes, addresses, copies, capture and replay) but not TensorRT itself.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import GRAPHS, Bundle, sha256_file
from .errors import BundleMismatchError, SCCANError
from .info import cuda_devices, cuda_runtime_module, pycuda_driver

MIN_TENSORRT = (10, 3)
#: The graphs that run once per frame, which ``cuda_graph=True`` captures.
PER_FRAME_GRAPHS = ("backbone", "query_decoder")
#: CUDA graphs kept per backend (per graph, shapes and addresses); the least recently used goes.
MAX_CAPTURES = 8


def _device(device: int) -> dict[str, Any] | None:
    """``{"name", "compute_capability"}`` of CUDA device ``device``, or None when there is none."""
    devices, _ = cuda_devices()
    return next((d for d in devices if d["index"] == device), None)


def preflight(bundle: Bundle, precision: str, device: int) -> list[str]:
    """Mismatches between the bundle's engines and this system (empty: safe to deserialise)."""
    import tensorrt as trt

    engines = bundle.manifest.get("engines", {}).get(precision)
    if not engines:
        return [f"bundle {bundle.path} has no {precision} TensorRT engines (build them with `sccan build`)"]
    problems = []
    here = _device(device) or {"name": None, "compute_capability": None}
    for graph in GRAPHS:
        info = engines.get(graph)
        if info is None:
            problems.append(f"no {precision} engine for {graph}")
            continue
        if info.get("tensorrt") != trt.__version__:
            problems.append(f"{graph} engine built with TensorRT {info.get('tensorrt')}, this system has "
                            f"{trt.__version__}")
        if info.get("compute_capability") != here["compute_capability"]:
            problems.append(f"{graph} engine built for compute capability {info.get('compute_capability')}, "
                            f"device {device} is {here['compute_capability']}")
        elif info.get("gpu") and info["gpu"] != here["name"] and not info.get("hardware_compatible"):
            # Engines are specific to the GPU model (Orin Nano and AGX Orin are both 8.7).
            problems.append(f"{graph} engine built on {info['gpu']}, device {device} is {here['name']} (rebuild "
                            "here with `sccan build`, or build with --hardware-compatible)")
        path = bundle.path / info.get("file", "")
        if not path.is_file():
            problems.append(f"{graph} engine file {info.get('file')} is missing from {bundle.path}")
        elif info.get("sha256") and sha256_file(path) != info["sha256"]:
            problems.append(f"{graph} engine file {info['file']} does not match its sha256 in the manifest "
                            "(truncated or altered; rebuild with `sccan build --force`)")
        plugin = info.get("plugin_library")
        if plugin:
            path = bundle.path / plugin["file"]
            got = sha256_file(path) if path.is_file() else "missing"
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
    if _device(device) is None:
        _, why = cuda_devices()
        return f"no CUDA device {device} ({why})" if why else f"no CUDA device {device}"
    problems = preflight(bundle, precision, device)
    return "; ".join(problems) if problems else None


# -- CUDA runtime calls, over cuda-python or pycuda --------------------------------------------------


class CudaError(SCCANError):
    """A CUDA runtime call failed (the message names the call and the error)."""


class _PinnedBuffer:
    """Page-locked host memory, ``array`` a uint8 view of it."""

    def __init__(self, cuda: "_Cuda", nbytes: int):
        self.cuda, self.nbytes = cuda, max(nbytes, 1)
        self.array, self._handle = cuda.host_alloc(self.nbytes)

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return self.array[:count].view(dtype).reshape(shape)

    def __del__(self) -> None:
        try:
            self.cuda.host_free(self._handle)
        except Exception:  # noqa: BLE001 - interpreter shutdown: the driver frees it anyway
            pass


class _DeviceBuffer:
    """Device memory; freed when the last reference goes."""

    def __init__(self, cuda: "_Cuda", nbytes: int):
        self.cuda, self.nbytes = cuda, max(nbytes, 1)
        self.ptr, self._handle = cuda.malloc(self.nbytes)

    def __del__(self) -> None:
        try:
            self.cuda.free(self._handle)
        except Exception:  # noqa: BLE001 - interpreter shutdown: the driver frees it anyway
            pass


class _Cuda:
    """The few CUDA calls the backend makes. ``flavour`` is ``"cuda-python"`` or ``"pycuda"``."""

    def __init__(self, device: int):
        self.device = device
        errors = []
        rt = cuda_runtime_module()
        if rt is not None:
            err = rt.cudaSetDevice(device)
            err = err[0] if isinstance(err, tuple) else err
            if int(err) == 0:
                self.flavour, self.rt = "cuda-python", rt
                return
            errors.append(f"cuda-python: cudaSetDevice({device}) failed: {getattr(err, 'name', err)}")
        else:
            errors.append("cuda-python: not installed")
        drv = pycuda_driver()
        if drv is None:
            errors.append("pycuda: not installed")
        else:
            try:
                drv.init()
                self.context = drv.Device(device).retain_primary_context()
                self.flavour, self.drv, self.rt = "pycuda", drv, None
                return
            except Exception as exc:  # noqa: BLE001 - pycuda's own error types
                errors.append(f"pycuda: {exc}")
        raise CudaError("no CUDA binding works here (" + "; ".join(errors) + "); `sccan info` says more")

    @staticmethod
    def _check(result: Any, call: str) -> Any:
        """cuda-python returns (error, value...) tuples: raise on an error, return the value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise CudaError(f"{call} failed: {err}")
        return values[0] if len(values) == 1 else (values or None)

    def activate(self) -> None:
        """Make the device current for the calling thread (CUDA contexts are per thread)."""
        if self.flavour == "cuda-python":
            self._check(self.rt.cudaSetDevice(self.device), "cudaSetDevice")
        else:
            self.context.push()

    def deactivate(self) -> None:
        if self.flavour == "pycuda":
            self.drv.Context.pop()

    def malloc(self, nbytes: int) -> tuple[int, Any]:
        if self.flavour == "cuda-python":
            ptr = self._check(self.rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
            return int(ptr), ptr
        allocation = self.drv.mem_alloc(nbytes)
        return int(allocation), allocation

    def free(self, handle: Any) -> None:
        if self.flavour == "cuda-python":
            self.rt.cudaFree(handle)
        else:
            handle.free()

    def host_alloc(self, nbytes: int) -> tuple[np.ndarray, Any]:
        if self.flavour == "cuda-python":
            ptr = self._check(self.rt.cudaHostAlloc(nbytes, self.rt.cudaHostAllocDefault), f"cudaHostAlloc({nbytes})")
            return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(int(ptr))), ptr
        array = self.drv.pagelocked_empty((nbytes,), np.uint8)
        return array, array

    def host_free(self, handle: Any) -> None:
        if self.flavour == "cuda-python":
            self.rt.cudaFreeHost(handle)
        # pycuda frees page-locked arrays with the array

    def stream(self) -> Any:
        if self.flavour == "cuda-python":
            return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking),
                               "cudaStreamCreateWithFlags")
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream) if self.flavour == "cuda-python" else int(stream.handle)

    def to_device(self, dst: int, src: np.ndarray, stream: Any) -> None:
        if self.flavour == "cuda-python":
            self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                        "cudaMemcpyAsync(host to device)")
        else:
            self.drv.memcpy_htod_async(dst, src, stream)

    def to_host(self, dst: np.ndarray, src: int, stream: Any) -> None:
        if self.flavour == "cuda-python":
            self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                        "cudaMemcpyAsync(device to host)")
        else:
            self.drv.memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream: Any) -> None:
        if self.flavour == "cuda-python":
            self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        else:
            stream.synchronize()

    # events and memory (the bench's device figures)
    def event(self) -> Any:
        if self.flavour == "cuda-python":
            return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")
        return self.drv.Event()

    def record(self, event: Any, stream: Any) -> None:
        if self.flavour == "cuda-python":
            self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")
        else:
            event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two recorded events (both complete: the stream was synchronised)."""
        if self.flavour == "cuda-python":
            return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))
        return float(start.time_till(end))

    def memory_used(self) -> tuple[int, int]:
        """(bytes in use on the device, total bytes), all processes."""
        if self.flavour == "cuda-python":
            free, total = self._check(self.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        else:
            free, total = self.drv.mem_get_info()
        return int(total) - int(free), int(total)

    # CUDA graphs (cuda-python only)
    def capture(self, stream: Any, enqueue: Any) -> tuple[Any, Any]:
        """Record what ``enqueue()`` puts on ``stream`` into a CUDA graph: (graph, executable).

        If ``enqueue`` raises, the capture is ended (the stream must not stay in capture mode) and
        whatever it recorded destroyed, and the original error propagates (the end-capture error of
        an invalidated capture would only hide it)."""
        rt = self.rt
        self._check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                    "cudaStreamBeginCapture")
        try:
            enqueue()
        except BaseException:
            err, *graph = rt.cudaStreamEndCapture(stream)
            if int(err) == 0 and graph and graph[0] is not None:
                rt.cudaGraphDestroy(graph[0])
            raise
        graph = self._check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            executable = self._check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except BaseException:
            rt.cudaGraphDestroy(graph)
            raise
        return graph, executable

    def launch(self, executable: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(executable, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph: Any, executable: Any) -> None:
        self.rt.cudaGraphExecDestroy(executable)
        self.rt.cudaGraphDestroy(graph)


# -- the backend ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceTensor:
    """A resident tensor of the TensorRT backend: device address, shape, dtype. ``owner`` keeps the
    memory alive (a buffer of its own, or the backend's output buffer it was written to)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    owner: Any = None


@dataclass
class _Capture:
    graph: Any
    executable: Any


class _ProfilePool:
    """The optimisation profiles of a set of engines; each live backend holds one."""

    def __init__(self, count: int):
        self.count = count
        self.free = list(range(count))
        self.lock = threading.Lock()

    def acquire(self) -> int:
        with self.lock:
            if not self.free:
                raise SCCANError(f"all {self.count} execution contexts of these engines are in use: they were built "
                                 f"with {self.count} optimisation profile(s) (`sccan build --contexts "
                                 f"{self.count}`), one per concurrently used Segmenter or clone; rebuild with a "
                                 "larger --contexts, or drop a clone first")
            return self.free.pop(0)

    def release(self, index: int) -> None:
        with self.lock:
            self.free.append(index)
            self.free.sort()


class TensorRTBackend:
    """The bundle's engines for one precision: one execution context per engine on one of the
    engines' optimisation profiles, one CUDA stream, page-locked staging buffers and reused device
    buffers per tensor.

    A backend runs one graph at a time (a lock); :meth:`fork` gives another thread its own contexts
    (on another profile), stream and buffers on the same deserialised engines.

    Args:
        bundle: a bundle whose manifest lists engines for ``precision``.
        device: CUDA device index.
        precision: ``"fp16"`` or ``"fp32"`` engines.
        cuda_graph: capture the per-frame graphs into CUDA graphs and replay them (cuda-python).
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: int = 0, precision: str = "fp16", cuda_graph: bool = False):
        import tensorrt as trt

        problems = preflight(bundle, precision, device)
        if problems:
            raise BundleMismatchError("refusing TensorRT engines: " + "; ".join(problems))
        self.trt, self.precision, self.device = trt, precision, device
        self.cuda = _Cuda(device)
        if cuda_graph and self.cuda.flavour != "cuda-python":
            raise SCCANError("CUDA-graph capture needs cuda-python (pip install cuda-python); pycuda is in use")
        self.cuda_graph = cuda_graph
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        engines = bundle.manifest["engines"][precision]
        plugins = {e["plugin_library"]["file"] for e in engines.values() if e.get("plugin_library")}
        self.cuda.activate()
        try:
            for plugin in sorted(plugins):
                load_plugin_library(trt, bundle.path / plugin)
            self.runtime = trt.Runtime(self.logger)
            self.engines = {}
            for graph in GRAPHS:
                engine = self.runtime.deserialize_cuda_engine(Path(bundle.path / engines[graph]["file"]).read_bytes())
                if engine is None:
                    raise BundleMismatchError(f"TensorRT could not deserialise {engines[graph]['file']}")
                self.engines[graph] = engine
        finally:
            self.cuda.deactivate()
        #: the most classes one decode takes (the decoder engine's profile), or None: the bundle's
        self.max_classes = engines["query_decoder"].get("max_classes")
        self._profiles = _ProfilePool(min(e.num_optimization_profiles for e in self.engines.values()))
        self.inputs, self.outputs, self._dtypes = {}, {}, {}
        for graph, engine in self.engines.items():
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            self.inputs[graph] = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self.outputs[graph] = [n for n in names if n not in self.inputs[graph]]
            self._dtypes[graph] = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._start_execution()

    def _start_execution(self) -> None:
        """Per-thread state: a profile, contexts on it, stream, buffers, captured graphs."""
        self.profile = self._profiles.acquire()
        weakref.finalize(self, self._profiles.release, self.profile)
        self.cuda.activate()
        try:
            self.stream = self.cuda.stream()
            handle = self.cuda.stream_handle(self.stream)
            self.contexts = {}
            for graph, engine in self.engines.items():
                context = engine.create_execution_context()
                if context is None:
                    raise CudaError(f"TensorRT could not create an execution context for {graph} (device memory?)")
                if not context.set_optimization_profile_async(self.profile, handle):
                    raise SCCANError(f"TensorRT refused optimisation profile {self.profile} for {graph}")
                self.contexts[graph] = context
            self.cuda.synchronize(self.stream)
        finally:
            self.cuda.deactivate()
        self._device: dict[tuple[str, str], _DeviceBuffer] = {}
        self._pinned: dict[tuple[str, str], _PinnedBuffer] = {}
        self._captures: OrderedDict[tuple, _Capture] = OrderedDict()
        self._lock = threading.RLock()
        self.device_timing = False  # record CUDA events around each graph's execution
        self.device_ms: dict[str, float] = {}  # per graph: GPU time since the last reset
        self._events: dict[str, tuple[Any, Any]] = {}

    def fork(self) -> "TensorRTBackend":
        twin = object.__new__(TensorRTBackend)
        shared = ("trt", "precision", "device", "cuda", "cuda_graph", "logger", "runtime", "engines", "inputs",
                  "outputs", "_dtypes", "_profiles", "max_classes")
        twin.__dict__.update({k: self.__dict__[k] for k in shared})
        twin._start_execution()
        return twin

    def exclusive(self) -> threading.RLock:
        return self._lock

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return self._dtypes[graph][name]

    def _device_buffer(self, graph: str, name: str, nbytes: int) -> _DeviceBuffer:
        buf = self._device.get((graph, name))
        if buf is None or buf.nbytes < nbytes:
            buf = self._device[(graph, name)] = _DeviceBuffer(self.cuda, nbytes)
        return buf

    def _pinned_buffer(self, graph: str, name: str, nbytes: int) -> _PinnedBuffer:
        buf = self._pinned.get((graph, name))
        if buf is None or buf.nbytes < nbytes:
            buf = self._pinned[(graph, name)] = _PinnedBuffer(self.cuda, nbytes)
        return buf

    def resident(self, graph: str, arrays: Mapping[str, np.ndarray]) -> dict[str, DeviceTensor]:
        out = {}
        with self._lock:
            self.cuda.activate()
            try:
                for name, value in arrays.items():
                    array = np.ascontiguousarray(value, dtype=self._dtypes[graph][name])
                    pinned = _PinnedBuffer(self.cuda, array.nbytes)  # alive until the copy is done
                    staging = pinned.view(array.shape, array.dtype)
                    np.copyto(staging, array)
                    buf = _DeviceBuffer(self.cuda, array.nbytes)
                    self.cuda.to_device(buf.ptr, staging, self.stream)
                    self.cuda.synchronize(self.stream)
                    del pinned
                    out[name] = DeviceTensor(buf.ptr, array.shape, array.dtype, buf)
            finally:
                self.cuda.deactivate()
        return out

    def run(self, graph: str, feeds: Mapping[str, np.ndarray | DeviceTensor], keep: Collection[str] = (),
            outputs: Collection[str] | None = None) -> dict[str, np.ndarray | DeviceTensor]:
        missing = [n for n in self.inputs[graph] if n not in feeds]
        if missing:
            raise ValueError(f"{graph}: missing inputs {missing}")
        with self._lock:
            self.cuda.activate()
            try:
                return self._run(graph, feeds, keep, self.outputs[graph] if outputs is None else list(outputs))
            finally:
                self.cuda.deactivate()

    def _run(self, graph: str, feeds: Mapping[str, np.ndarray | DeviceTensor], keep: Collection[str],
             wanted: list[str]) -> dict[str, np.ndarray | DeviceTensor]:
        context, dtypes = self.contexts[graph], self._dtypes[graph]
        binding = []  # (name, shape, address): what a captured CUDA graph depends on
        for name in self.inputs[graph]:
            value = feeds[name]
            if isinstance(value, DeviceTensor):
                if value.dtype != dtypes[name]:
                    raise ValueError(f"{graph}.{name} takes {dtypes[name]}, the resident tensor is {value.dtype}")
                shape, ptr = value.shape, value.ptr
            else:
                array = np.asarray(value, dtype=dtypes[name])
                shape = array.shape
                staging = self._pinned_buffer(graph, name, array.nbytes).view(shape, array.dtype)
                np.copyto(staging, array)
                ptr = self._device_buffer(graph, name, array.nbytes).ptr
                self.cuda.to_device(ptr, staging, self.stream)
            if not context.set_input_shape(name, shape):
                raise ValueError(f"{graph}: input {name} of shape {shape} is outside the engine's profile")
            context.set_tensor_address(name, ptr)
            binding.append((name, tuple(shape), ptr))
        shapes = {}
        for name in self.outputs[graph]:
            shape = shapes[name] = tuple(context.get_tensor_shape(name))
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtypes[name].itemsize
            ptr = self._device_buffer(graph, name, nbytes).ptr
            context.set_tensor_address(name, ptr)
            binding.append((name, shape, ptr))
        timed = self._timing_events(graph)
        if timed:
            self.cuda.record(timed[0], self.stream)
        self._execute(graph, context, tuple(binding))
        if timed:
            self.cuda.record(timed[1], self.stream)
        results: dict[str, np.ndarray | DeviceTensor] = {}
        staged = {}
        for name in wanted:
            buf = self._device[(graph, name)]
            if name in keep:
                results[name] = DeviceTensor(buf.ptr, shapes[name], dtypes[name], buf)
            else:
                staged[name] = self._pinned_buffer(graph, name, buf.nbytes).view(shapes[name], dtypes[name])
                self.cuda.to_host(staged[name], buf.ptr, self.stream)
        self.cuda.synchronize(self.stream)
        if timed:
            self.device_ms[graph] = self.device_ms.get(graph, 0.0) + self.cuda.elapsed_ms(*timed)
        results.update({name: view.copy() for name, view in staged.items()})  # staging is reused next run
        return results

    def _timing_events(self, graph: str) -> tuple[Any, Any] | None:
        if not self.device_timing:
            return None
        if graph not in self._events:
            self._events[graph] = (self.cuda.event(), self.cuda.event())
        return self._events[graph]

    def take_device_ms(self) -> dict[str, float]:
        """GPU milliseconds per graph (CUDA events around each execution, copies excluded) since
        the last call; ``device_timing`` must be on."""
        out, self.device_ms = self.device_ms, {}
        return out

    def device_memory_mb(self) -> tuple[float, float]:
        """(MiB in use on the device, all processes; MiB total)."""
        with self._lock:
            self.cuda.activate()
            try:
                used, total = self.cuda.memory_used()
            finally:
                self.cuda.deactivate()
        return used / 2**20, total / 2**20

    def _execute(self, graph: str, context: Any, binding: tuple) -> None:
        handle = self.cuda.stream_handle(self.stream)
        if not (self.cuda_graph and graph in PER_FRAME_GRAPHS):
            if not context.execute_async_v3(handle):
                raise RuntimeError(f"TensorRT execution of {graph} failed")
            return
        key = (graph, binding)
        capture = self._captures.get(key)
        if capture is not None:
            self._captures.move_to_end(key)
            self.cuda.launch(capture.executable, self.stream)
            return
        # New shapes or addresses: an ordinary enqueue first (TensorRT does its shape-dependent
        # setup there, which must not be captured), then record the enqueue for later frames.
        if not context.execute_async_v3(handle):
            raise RuntimeError(f"TensorRT execution of {graph} failed")
        self.cuda.synchronize(self.stream)
        results = []
        cuda_graph, executable = self.cuda.capture(self.stream,
                                                   lambda: results.append(context.execute_async_v3(handle)))
        if not all(results):
            self.cuda.destroy_graph(cuda_graph, executable)
            raise RuntimeError(f"TensorRT execution of {graph} failed during CUDA-graph capture")
        self._captures[key] = _Capture(cuda_graph, executable)
        while len(self._captures) > MAX_CAPTURES:
            _, old = self._captures.popitem(last=False)
            self.cuda.destroy_graph(old.graph, old.executable)


# The plugin libraries loaded per TensorRT module in this process: {sha256: (path, handle)}.
_PLUGIN_LIBRARIES: weakref.WeakKeyDictionary[Any, dict[str, tuple[Path, Any]]] = weakref.WeakKeyDictionary()
_PLUGIN_LOCK = threading.Lock()
PLUGIN_CREATOR = ("SccanPatchAlign", "1", "sccan")


def load_plugin_library(trt: Any, path: Path) -> Any:
    """Load a TensorRT plugin library into this process's plugin registry, once, checked.

    TensorRT's ``load_library`` returns None (and logs) when it cannot load a library, which would
    otherwise surface later as an opaque deserialisation failure; it also returns None for a library
    whose creators are registered already, so a second load of the same library (a second
    Segmenter, or ``sccan build``'s gate after the build loaded it) reuses the first load of the
    same bytes. A different build of the plugin while one is loaded is refused, naming both:
    TensorRT keeps one ``SccanPatchAlign`` creator per process. A creator registered by other code
    (not through this function) is used as it is, with a warning.
    """
    if not path.is_file():
        raise BundleMismatchError(f"the TensorRT plugin library {path} is missing")
    digest = sha256_file(path)
    registry = trt.get_plugin_registry()
    with _PLUGIN_LOCK:
        loaded = _PLUGIN_LIBRARIES.setdefault(trt, {})
        if digest in loaded:
            return loaded[digest][1]
        handle = registry.load_library(str(path))
        if handle is None:
            if loaded:
                other = next(iter(loaded.values()))[0]
                raise BundleMismatchError(
                    f"TensorRT could not load the plugin library {path}: another build of it, {other}, is loaded in "
                    "this process already, and TensorRT keeps one SccanPatchAlign plugin per process. Build the "
                    "bundles' engines with the same plugin library, or use one process per bundle")
            if registry.get_creator(*PLUGIN_CREATOR) is not None:
                warnings.warn(f"the SccanPatchAlign plugin is registered in this process already (not from {path}); "
                              "TensorRT's engines use that one", stacklevel=2)
                return None
            raise BundleMismatchError(f"TensorRT could not load the plugin library {path} (built for another "
                                      "TensorRT or CUDA version, or for another architecture?)")
        loaded[digest] = (path, handle)
        return handle


__all__ = ["TensorRTBackend", "DeviceTensor", "preflight", "tensorrt_unavailable", "load_plugin_library", "CudaError",
           "MIN_TENSORRT", "MAX_CAPTURES"]
