"""The TensorRT stand-in (``fake_tensorrt``) against a real TensorRT's Python bindings: every method
the stand-in offers exists in TensorRT with an argument count TensorRT accepts, and every enum
member it defines has TensorRT's value. CI runs the backend and ``sccan build`` against the stand-in
only, so a method that exists only there would pass CI and fail on the first GPU.

The runtime side runs where ``tensorrt`` imports, or TensorRT's lean runtime (``pip install
tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings``, in the dev extra): the runtime classes and
the plugin registry. The builder side needs the full bindings (``tensorrt-cu13-bindings``, also in
the dev extra, a real wheel on PyPI) whose libraries (libnvinfer, the ONNX parser) cannot be
installed here: a subprocess loads stand-in libraries of those names first, whose functions abort
if called, and only reads the classes and their signatures. Skipped where neither is installed."""

from __future__ import annotations

import ctypes
import enum
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fake_tensorrt as fake
from test_plugin_registry import real_tensorrt

# (stand-in class, TensorRT class): the runtime side first, then the builder's.
RUNTIME_PAIRS = [(fake.FakeEngine, "ICudaEngine"), (fake.FakeContext, "IExecutionContext"),
                 (fake.FakePluginRegistry, "IPluginRegistry")]
BUILDER_PAIRS = [(fake.FakeBuilder, "Builder"), (fake.FakeConfig, "IBuilderConfig"),
                 (fake.FakeNetwork, "INetworkDefinition"), (fake.FakeParser, "OnnxParser"),
                 (fake.FakeProfile, "IOptimizationProfile"), (fake.FakeTimingCache, "ITimingCache")]
# Helpers of the stand-in's own, which the SDK never calls.
STAND_IN_ONLY = {"FakeEngine": {"view", "output_shapes"}}
ENUMS = [(fake._DataType, "DataType"), (fake._TensorIOMode, "TensorIOMode"),
         (fake._MemoryPoolType, "MemoryPoolType"), (fake._HardwareCompatibilityLevel, "HardwareCompatibilityLevel")]


def split_top_level(text: str) -> list[str]:
    """Split a pybind11 parameter list at the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[(" or -(ch in "])")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def accepted_counts(doc: str, name: str) -> list[tuple[int, int]]:
    """(required, total) argument counts, self excluded, of each overload in a pybind11 docstring."""
    counts = []
    for params in re.findall(rf"^\s*(?:\d+\.\s*)?{re.escape(name)}\((.*)\)\s*->", doc or "", re.MULTILINE):
        args = [p for p in split_top_level(params) if not p.startswith("self")]
        counts.append((sum("=" not in a for a in args), len(args)))
    return counts


def stand_in_methods(cls: type) -> dict[str, object]:
    skip = STAND_IN_ONLY.get(cls.__name__, set())
    return {n: m for n, m in vars(cls).items() if not n.startswith("_") and n not in skip}


def check_pair(cls: type, real: type) -> list[str]:
    problems = []
    for name, member in stand_in_methods(cls).items():
        if not hasattr(real, name):
            problems.append(f"{cls.__name__}.{name}: TensorRT's {real.__name__} has no {name}")
            continue
        if isinstance(member, property):
            continue
        function = member.__func__ if isinstance(member, staticmethod) else member
        if not callable(function):
            continue
        params = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
        need = sum(p.default is inspect.Parameter.empty for p in params)
        counts = accepted_counts(getattr(real, name).__doc__, name)
        if counts and not any(lo <= need <= hi for lo, hi in counts):
            problems.append(f"{cls.__name__}.{name} takes {need} arguments; TensorRT's takes {counts}")
    return problems


def check_classes(trt) -> tuple[list[str], list[str]]:
    """(problems, the builder classes this TensorRT lacks): every stand-in class against TensorRT's."""
    problems = []
    for cls, name in RUNTIME_PAIRS:
        if not hasattr(trt, name):
            problems.append(f"TensorRT {trt.__version__} has no {name}")
    unchecked = [name for _, name in BUILDER_PAIRS if not hasattr(trt, name)]
    for cls, name in RUNTIME_PAIRS + BUILDER_PAIRS:
        if hasattr(trt, name):
            problems += check_pair(cls, getattr(trt, name))
    for attribute in ("Logger", "Runtime", "nptype", "get_plugin_registry", "TensorIOMode", "DataType"):
        if not hasattr(trt, attribute):
            problems.append(f"TensorRT has no {attribute}")
    return problems, unchecked


def test_the_stand_in_offers_only_what_tensorrt_has():
    trt = real_tensorrt()
    problems, unchecked = check_classes(trt)
    assert hasattr(trt.Logger, "WARNING") and hasattr(trt.Runtime, "deserialize_cuda_engine")
    assert not problems, "\n".join(problems)
    print(f"TensorRT {trt.__version__}: runtime classes checked; builder classes not in this TensorRT: {unchecked}")


def test_the_stand_ins_enums_have_tensorrts_values():
    trt = real_tensorrt()
    problems = check_enums(trt)
    assert hasattr(trt, "DataType") and hasattr(trt, "TensorIOMode")
    assert not problems, "\n".join(problems)


# The entry points the full bindings (tensorrt_bindings/tensorrt.so, 10.3 and 11.x alike) import
# from TensorRT's libraries (``nm -D --undefined-only``), each as a function that aborts: nothing
# here may call TensorRT. The libraries' names carry the major version.
STUB_FUNCTIONS = {
    "libnvinfer": ["createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
                   "getBuilderPluginRegistry", "getPluginRegistry"],
    "libnvinfer_plugin": ["initLibNvInferPlugins"],
    "libnvonnxparser": ["createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getNvOnnxParserVersion"],
}
ROOT = Path(__file__).resolve().parents[1]
#: TensorRT 10.3's full bindings (JetPack 6's TensorRT), unpacked beside the project by ``.ci/run``:
#: ``pip install --no-deps --target .trt10-bindings tensorrt-cu12-bindings==10.3.0`` (a 1 MB wheel;
#: it cannot share a site-packages with 11.x's, both being ``tensorrt_bindings``).
TRT10_BINDINGS = Path(os.environ.get("SCCAN_TRT10_BINDINGS") or ROOT / ".trt10-bindings")

CHECK_FULL = textwrap.dedent("""
    import ctypes, json, os, sys
    for path in sys.argv[2:]:
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL | os.RTLD_LAZY)
    sys.path.insert(0, sys.argv[1])
    for first in filter(None, os.environ.get("SCCAN_BINDINGS_FIRST", "").split(os.pathsep)):
        sys.path.insert(0, first)
    import tensorrt_bindings as trt
    import test_stand_in_fidelity as f
    problems, unchecked = f.check_classes(trt)
    problems += [f"{name} is not in the full bindings" for name in unchecked] + f.check_enums(trt)
    print(json.dumps({"version": trt.__version__, "problems": problems}))
""")


def check_enums(trt) -> list[str]:
    """Each enum value of the stand-in, as FakeTensorRT picks them for this TensorRT's major, against it."""
    stand_in = fake.FakeTensorRT(fake.FakeCudaRuntime(), version=trt.__version__)
    pairs = [*ENUMS, (stand_in.BuilderFlag, "BuilderFlag"),
             (stand_in.NetworkDefinitionCreationFlag, "NetworkDefinitionCreationFlag")]
    problems = []
    for members, name in pairs:
        real = getattr(trt, name, None)
        if real is None:
            continue
        for member in members:
            if not hasattr(real, member.name):
                problems.append(f"{name}.{member.name} is not in TensorRT")
                continue
            value = getattr(real, member.name)
            value = value.value if isinstance(value, enum.Enum) else int(value)
            if value != member.value:
                problems.append(f"{name}.{member.name} is {member.value} in the stand-in, {value} in TensorRT")
    return problems


def _full_bindings_report(tmp_path: Path, search_path: Path | None, major: int) -> dict:
    """Check the stand-in against the full bindings found first on ``search_path`` (then sys.path),
    loading stand-in libraries of TensorRT ``major``'s names first; returns {version, problems}."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the stand-in libraries")
    stubs = []
    for library, functions in STUB_FUNCTIONS.items():
        soname = f"{library}.so.{major}"
        source = tmp_path / f"{soname}.c"
        source.write_text("#include <stdlib.h>\n" + "".join(f"void {f}(void) {{ abort(); }}\n" for f in functions))
        stubs.append(tmp_path / soname)
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(stubs[-1]), f"-Wl,-soname,{soname}", str(source)],
                       check=True, capture_output=True, timeout=120)
    tests = Path(__file__).resolve().parent
    paths = os.pathsep.join([str(search_path)] if search_path else [])
    run = subprocess.run([sys.executable, "-c", CHECK_FULL, str(tests), *map(str, stubs)], capture_output=True,
                         text=True, timeout=300, cwd=tests.parent, env={**os.environ, "SCCAN_BINDINGS_FIRST": paths})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_stand_ins_builder_side_matches_tensorrts_full_bindings(tmp_path):
    if importlib.util.find_spec("tensorrt_bindings") is None:
        pytest.skip("TensorRT's full bindings are not installed (pip install tensorrt-cu13-bindings)")
    report = _full_bindings_report(tmp_path, None, 11)
    assert report["version"].startswith("11.") and not report["problems"], "\n".join(report["problems"])
    print(f"TensorRT {report['version']} full bindings: runtime and builder classes and enums checked")


def test_the_stand_in_as_tensorrt_10_matches_tensorrt_10_3s_bindings(tmp_path):
    """CI's default stand-in is TensorRT 10.3 (JetPack 6): its classes, argument counts, enum values and
    version-dependent flags against 10.3's own bindings."""
    if not (TRT10_BINDINGS / "tensorrt_bindings").is_dir():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"CI must check the stand-in against TensorRT 10.3: {TRT10_BINDINGS} is missing")
        pytest.skip(f"TensorRT 10.3's bindings are not at {TRT10_BINDINGS} (pip install --no-deps --target "
                    f"{TRT10_BINDINGS} tensorrt-cu12-bindings==10.3.0)")
    report = _full_bindings_report(tmp_path, TRT10_BINDINGS, 10)
    assert report["version"].startswith("10.3") and not report["problems"], "\n".join(report["problems"])
    print(f"TensorRT {report['version']} full bindings: runtime and builder classes and enums checked")


def test_the_stand_in_is_as_strict_as_tensorrt_and_cuda_where_code_could_lean_on_it(tmp_path):
    """Where the stand-in was kinder than TensorRT and CUDA: fresh device and page-locked memory held
    zeros (CUDA's hold garbage), any attribute could be set on its objects (TensorRT's, pybind11
    objects, refuse unknown ones), and it deserialised an engine whose plugin was never loaded."""
    cuda = fake.FakeCudaRuntime()
    trt = fake.FakeTensorRT(cuda)
    _, device = cuda.cudaMalloc(64)
    _, pointer = cuda.cudaHostAlloc(64, cuda.cudaHostAllocDefault)
    host = np.ctypeslib.as_array((ctypes.c_float * 16).from_address(pointer))
    assert np.isnan(host).all()
    host[:] = 1.0
    _, stream = cuda.cudaStreamCreateWithFlags(cuda.cudaStreamNonBlocking)
    cuda.cudaMemcpyAsync(pointer, device, 64, fake.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)
    cuda.cudaStreamSynchronize(stream)
    assert np.isnan(host).all()  # code that reads what it never wrote sees NaN, not zeros
    pinned = fake.FakePycuda(cuda).pagelocked_empty((4,), np.float16)
    assert np.isnan(pinned).all()
    config = trt.Builder(trt.Logger()).create_builder_config()
    config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS  # TensorRT has it
    with pytest.raises(AttributeError, match="IBuilderConfig"):
        config.max_workspace_size = 1 << 30  # TensorRT 8's, gone from 10: a silent no-op before
    real = real_tensorrt()
    with pytest.raises(AttributeError):  # as a real TensorRT object does
        real.Logger().max_workspace_size = 1 << 30


#: cuda-python's runtime bindings (``cuda-bindings``: they import, and fail each call cleanly, without a
#: GPU or driver), unpacked beside the project by ``.ci/run``: ``pip install --target .cuda-bindings
#: cuda-bindings``. Kept out of the test environment itself, where the SDK would find and try them.
#: pycuda has no such check: it compiles against CUDA's driver library at install and does not
#: build without one.
CUDA_BINDINGS = Path(os.environ.get("SCCAN_CUDA_BINDINGS") or ROOT / ".cuda-bindings")

CHECK_CUDA = textwrap.dedent("""
    import enum, inspect, json, sys
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    from cuda.bindings import runtime as real
    import fake_tensorrt as fake
    problems, checked = [], []
    for name, member in vars(fake.FakeCudaRuntime).items():
        if not name.startswith("cuda"):
            continue
        if not hasattr(real, name):
            problems.append(f"{name}: cuda-python's runtime has no {name}")
            continue
        if isinstance(member, type) and issubclass(member, enum.Enum):
            continue  # the enums, below
        if not callable(member):
            value = getattr(real, name)
            if int(value) != int(member):
                problems.append(f"{name} is {int(member)} in the stand-in, {int(value)} in cuda-python")
            checked.append(name)
            continue
        params = list(inspect.signature(member).parameters.values())[1:]
        ours = (sum(p.default is inspect.Parameter.empty for p in params), len(params))
        theirs = list(inspect.signature(getattr(real, name)).parameters.values())
        theirs = (sum(p.default is inspect.Parameter.empty for p in theirs), len(theirs))
        if ours[0] > theirs[1] or ours[1] < theirs[0]:
            problems.append(f"{name} takes {ours} arguments in the stand-in, {theirs} in cuda-python")
        checked.append(name)
    for cls in (fake.cudaError_t, fake.cudaMemcpyKind, fake.cudaStreamCaptureMode):
        for member in cls:
            value = getattr(getattr(real, cls.__name__), member.name, None)
            if value is None or int(value) != member.value:
                problems.append(f"{cls.__name__}.{member.name} is {member.value} in the stand-in, {value} in cuda-python")
        checked.append(cls.__name__)
    import cuda.bindings
    print(json.dumps({"version": cuda.bindings.__version__, "problems": problems, "checked": checked}))
""")


def test_the_cuda_stand_in_matches_cuda_pythons_runtime():
    if not (CUDA_BINDINGS / "cuda" / "bindings").is_dir():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"CI must check the CUDA stand-in against cuda-python: {CUDA_BINDINGS} is missing")
        pytest.skip(f"cuda-python's bindings are not at {CUDA_BINDINGS} (pip install --target {CUDA_BINDINGS} "
                    "cuda-bindings)")
    tests = Path(__file__).resolve().parent
    run = subprocess.run([sys.executable, "-c", CHECK_CUDA, str(tests), str(CUDA_BINDINGS)], capture_output=True,
                         text=True, timeout=300, cwd=tests.parent)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(report["checked"]) >= 20 and not report["problems"], "\n".join(report["problems"])
    print(f"cuda-python {report['version']}: {len(report['checked'])} runtime functions, constants and enums checked")
