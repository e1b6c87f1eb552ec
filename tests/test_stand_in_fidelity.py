"""The TensorRT stand-in (``fake_tensorrt``) against a real TensorRT's Python bindings: every method
the stand-in offers exists in TensorRT with an argument count TensorRT accepts, and every enum
member it defines has TensorRT's value. CI runs the backend and ``sccan build`` against the stand-in
only, so a method that exists only there would pass CI and fail on the first GPU.

Runs where ``tensorrt`` imports, or TensorRT's lean runtime (``pip install tensorrt-lean-cu13-libs
tensorrt-lean-cu13-bindings``: the runtime classes and the plugin registry, no builder; the builder's
classes are then reported as not checked). Skipped elsewhere, in CI too."""

from __future__ import annotations

import enum
import inspect
import re


import fake_tensorrt as fake
from test_plugin_registry import real_tensorrt

# (stand-in class, TensorRT class): the runtime side first, then the builder's.
RUNTIME_PAIRS = [(fake.FakeEngine, "ICudaEngine"), (fake.FakeContext, "IExecutionContext"),
                 (fake.FakePluginRegistry, "IPluginRegistry")]
BUILDER_PAIRS = [(fake.FakeBuilder, "Builder"), (fake.FakeConfig, "IBuilderConfig"),
                 (fake.FakeNetwork, "INetworkDefinition"), (fake.FakeParser, "OnnxParser"),
                 (fake.FakeProfile, "IOptimizationProfile"), (fake.FakeTimingCache, "ITimingCache")]
# Helpers of the stand-in's own, which the SDK never calls.
STAND_IN_ONLY = {"FakeEngine": {"view", "output_shapes"}, "FakePluginRegistry": set()}
ENUMS = [(fake._DataType, "DataType"), (fake._TensorIOMode, "TensorIOMode"),
         (fake._MemoryPoolType, "MemoryPoolType"), (fake._HardwareCompatibilityLevel, "HardwareCompatibilityLevel"),
         (fake._NetworkFlag, "NetworkDefinitionCreationFlag")]


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
    return {n: m for n, m in vars(cls).items() if not n.startswith("_") and not n.isupper() and n not in skip}


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


def test_the_stand_in_offers_only_what_tensorrt_has():
    trt = real_tensorrt()
    problems = []
    for cls, name in RUNTIME_PAIRS:
        assert hasattr(trt, name), f"TensorRT {trt.__version__} has no {name}"
        problems += check_pair(cls, getattr(trt, name))
    unchecked = [name for _, name in BUILDER_PAIRS if not hasattr(trt, name)]
    for cls, name in BUILDER_PAIRS:
        if hasattr(trt, name):
            problems += check_pair(cls, getattr(trt, name))
    for attribute in ("Logger", "Runtime", "nptype", "get_plugin_registry", "TensorIOMode", "DataType"):
        if not hasattr(trt, attribute):
            problems.append(f"TensorRT has no {attribute}")
    assert hasattr(trt.Logger, "WARNING") and hasattr(trt.Runtime, "deserialize_cuda_engine")
    assert not problems, "\n".join(problems)
    print(f"TensorRT {trt.__version__}: runtime classes checked; builder classes not in this TensorRT: {unchecked}")


def test_the_stand_ins_enums_have_tensorrts_values():
    trt = real_tensorrt()
    problems, checked = [], 0
    major = int(trt.__version__.split(".")[0])
    flags = fake._BuilderFlag11 if major >= 11 else fake._BuilderFlag10  # as FakeTensorRT picks them
    for stand_in, name in [*ENUMS, (flags, "BuilderFlag")]:
        real = getattr(trt, name, None)
        if real is None:
            continue
        for member in stand_in:
            if not hasattr(real, member.name):
                problems.append(f"{name}.{member.name} is not in TensorRT")
                continue
            value = getattr(real, member.name)
            value = value.value if isinstance(value, enum.Enum) else int(value)
            checked += 1
            if value != member.value:
                problems.append(f"{name}.{member.name} is {member.value} in the stand-in, {value} in TensorRT")
    assert checked >= 6 and not problems, "\n".join(problems) or "too few enum members checked"
