"""The SDK's plugin loader (``load_plugin_library``) against TensorRT's plugin registry: the host
stand-in, and a real TensorRT where one imports.

A real TensorRT registry refuses a second ``load_library`` of a library whose creator is registered
(it returns None, as for a file it cannot load), so the loader loads each build once per process: a
second Segmenter, or ``sccan build``'s gate after the build, reuses that load. TensorRT's builder
wheels cannot be installed on these machines, but its lean runtime can (``pip install
tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings``) and its registry needs no GPU; the real case
also needs the plugin built (``cmake -DTensorRT_ROOT=...``, TensorRT's headers), and is skipped
otherwise, in CI too (no headers there)."""

from __future__ import annotations

import importlib
import shutil
import sys
import warnings

import pytest

from fake_tensorrt import FakeCudaRuntime, FakeTensorRT
from native_lib import build_dir
from sccan.sdk import tensorrt_backend
from sccan.sdk.errors import BundleMismatchError
from sccan.sdk.tensorrt_backend import PLUGIN_CREATOR, load_plugin_library


def real_tensorrt():
    """A real TensorRT module (full or lean), never the stand-in that a test put in sys.modules."""
    for name in ("tensorrt", "tensorrt_lean_bindings", "tensorrt_lean"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if not isinstance(module, FakeTensorRT):
            return module
    pytest.skip("no TensorRT imports (pip install tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings gives its registry)")


@pytest.fixture(params=["stand-in", "tensorrt"])
def registry_case(request, tmp_path):
    """(trt module, a plugin library, another build of it): for the stand-in any ELF file is a build
    of the plugin; for TensorRT the built library, and a copy with one byte appended."""
    if request.param == "stand-in":
        trt = FakeTensorRT(FakeCudaRuntime())
        library = tmp_path / "libsccan_trt_plugin.so"
        shutil.copyfile(sys.executable, library)
    else:
        trt = real_tensorrt()
        built = build_dir() / "libsccan_trt_plugin.so"
        if not built.is_file():
            pytest.skip(f"{built} not built (the plugin needs TensorRT's headers: cmake -DTensorRT_ROOT=DIR)")
        library = tmp_path / built.name
        shutil.copyfile(built, library)
    other = tmp_path / "other" / library.name
    other.parent.mkdir()
    other.write_bytes(library.read_bytes() + b"\0")  # still loadable, another sha256
    registry = trt.get_plugin_registry()
    assert registry.get_creator(*PLUGIN_CREATOR) is None, "the plugin is registered before the test"
    yield trt, library, other
    for _, handle in tensorrt_backend._PLUGIN_LIBRARIES.pop(trt, {}).values():
        registry.deregister_library(handle)


def test_a_library_is_loaded_once_and_reused(registry_case):
    trt, library, _ = registry_case
    registry = trt.get_plugin_registry()
    handle = load_plugin_library(trt, library)
    assert handle is not None and registry.get_creator(*PLUGIN_CREATOR) is not None
    # What a second Segmenter met before: TensorRT itself refuses the second load ...
    assert registry.load_library(str(library)) is None
    # ... so the loader reuses the first one, for the same bytes at any path.
    assert load_plugin_library(trt, library) is handle
    copy = library.parent / "copy" / library.name
    copy.parent.mkdir()
    shutil.copyfile(library, copy)
    assert load_plugin_library(trt, copy) is handle


def test_another_build_while_one_is_loaded_is_refused_by_name(registry_case):
    trt, library, other = registry_case
    load_plugin_library(trt, library)
    with pytest.raises(BundleMismatchError, match=f"could not load the plugin library {other}: another build of it, "
                                                  f"{library}, is loaded"):
        load_plugin_library(trt, other)


def test_a_creator_registered_by_other_code_is_used_with_a_warning(registry_case):
    trt, library, other = registry_case
    registry = trt.get_plugin_registry()
    handle = registry.load_library(str(library))  # not through the SDK
    assert handle is not None
    try:
        with pytest.warns(UserWarning, match="registered in this process already"):
            assert load_plugin_library(trt, other) is None
    finally:
        registry.deregister_library(handle)


def test_a_file_that_is_not_a_library_is_named(registry_case, tmp_path):
    trt, _, _ = registry_case
    bad = tmp_path / "libnot.so"
    bad.write_bytes(b"not a shared library")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BundleMismatchError, match="could not load the plugin library .*libnot.so .built for another"):
            load_plugin_library(trt, bad)
