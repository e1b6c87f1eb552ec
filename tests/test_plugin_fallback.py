"""``sccan export --patch-align both`` and ``sccan build --patch-align auto``: the standard-op decoder
first, the plugin variant when TensorRT's parser rejects it or it fails the gate. Run against the
TensorRT stand-in (``fake_tensorrt``), whose engines run the graphs, plugin node included, in
ONNX Runtime; the plugin library is any ELF file there (the stand-in checks only that)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import pytest

from conftest import scene
from fake_tensorrt import FakeCudaRuntime, FakeTensorRT, install
from sccan.export.engines import BuildError, BuildOptions, ParserRejection, build_engines
from sccan.sdk import Segmenter
from sccan.sdk.bundle import MANIFEST, write_manifest
from sccan.sdk.patch_align_op import uses_plugin

SIZE = 65


@pytest.fixture(scope="module")
def both_bundle(synthetic_export):
    """The shipped synthetic model exported with ``--patch-align both`` (conftest's, shared): trained,
    so a constant or shifted engine fails the comparisons with ONNX Runtime."""
    return synthetic_export


@pytest.fixture
def setup(monkeypatch, both_bundle, tmp_path):
    """(bundle copy, stand-in, a 'plugin library', timing-cache directory)."""
    copy = tmp_path / "bundle"
    shutil.copytree(both_bundle, copy)
    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    install(monkeypatch, cuda, trt)
    library = tmp_path / "libsccan_trt_plugin.so"
    shutil.copyfile(sys.executable, library)  # an ELF file: what the stand-in's load_library accepts
    return copy, trt, library, tmp_path / "cache"


def standard_only_op(manifest: dict) -> str:
    """An op of the standard decoder's alignment subgraph that no plugin-variant graph holds."""
    graphs = manifest["graphs"]
    others = set(graphs["backbone"]["fp32"]["op_counts"]) | set(graphs["support_encoder"]["fp32"]["op_counts"])
    plugin = set(manifest["plugin_variant"]["query_decoder"]["fp32"]["op_counts"])
    candidates = sorted(set(graphs["query_decoder"]["fp32"]["op_counts"]) - plugin - others)
    assert candidates, "the plugin variant should remove ops of the alignment subgraph"
    return candidates[0]


def same_as_onnxruntime(path, precision: str = "fp32", tol: float = 1e-5) -> None:
    seg = Segmenter(path, backend="tensorrt", precision=precision)
    ort_seg = Segmenter(path, backend="onnxruntime")
    for s in (seg, ort_seg):
        for i, name in enumerate(["a", "b", "c"]):
            image, mask = scene(10 * i)
            s.add_class(name, [image], [mask])
    for seed in (1, 2):
        got, want = seg.segment(scene(100 + seed)[0]), ort_seg.segment(scene(100 + seed)[0])
        for name in want.classes:
            assert np.abs(got.probabilities[name] - want.probabilities[name]).max() <= tol


def test_export_both_writes_a_plugin_decoder_equal_to_the_standard_one(both_bundle):
    manifest = json.loads((both_bundle / MANIFEST).read_text())
    variant = manifest["plugin_variant"]
    assert variant["parity"]["ok"] and variant["parity"]["index_mismatches"] == 0
    assert variant["parity"]["indices_checked"] > 0 and variant["parity"]["max_relative_logit_diff"] <= 1e-5
    for precision in ("fp32", "fp16"):
        path = both_bundle / variant["query_decoder"][precision]["file"]
        assert path.name in manifest["files"] and uses_plugin(onnx.load(str(path)))
        assert not any(variant["query_decoder"][precision]["tensorrt_problems"].values())
    assert not uses_plugin(onnx.load(str(both_bundle / "query_decoder.onnx")))
    assert "Plugin variant of the decoder" in (both_bundle / "report.txt").read_text()
    # ONNX Runtime runs the standard graphs of such a bundle, without onnxruntime-extensions
    assert Segmenter(both_bundle).backend.name == "onnxruntime"


def test_auto_falls_back_to_the_plugin_when_the_parser_rejects_the_decoder(setup, capsys, monkeypatch):
    path, trt, library, cache = setup
    op = standard_only_op(json.loads((path / MANIFEST).read_text()))
    trt.unsupported_ops = {op}
    result = build_engines(path, BuildOptions(precisions=("fp32", "fp16"), plugin_library=library,
                                              timing_cache=cache), progress=False)
    assert "falling back to the patch-alignment plugin" in capsys.readouterr().out
    manifest = json.loads((path / MANIFEST).read_text())
    for precision in ("fp32", "fp16"):
        decoder = manifest["engines"][precision]["query_decoder"]
        assert decoder["patch_align"] == "plugin" and decoder["source"] == f"query_decoder.plugin{'.fp16' if precision == 'fp16' else ''}.onnx"
        assert "parser rejected" in decoder["patch_align_reason"] and f"({op})" in decoder["patch_align_reason"]
        assert decoder["plugin_library"]["sha256"] == manifest["files"]["libsccan_trt_plugin.so"]
        assert decoder["file"].startswith("query_decoder.plugin.")
        assert manifest["engines"][precision]["backbone"]["patch_align"] is None
    assert (path / "libsccan_trt_plugin.so").read_bytes() == library.read_bytes() and trt.plugins
    assert "decoder uses the patch-alignment plugin" in result.summary()
    same_as_onnxruntime(path)
    same_as_onnxruntime(path, "fp16", tol=0.02)
    # forced standard ops: the parser's rejection is the error, naming the node's op
    with pytest.raises(ParserRejection, match=rf"\({op}\)"):
        build_engines(path, BuildOptions(precisions=("fp32",), force=True, patch_align="standard-ops",
                                         timing_cache=cache), progress=False)
    # in another process (a fresh TensorRT: no plugin registered), an engine using the plugin does not
    # deserialise until the library is loaded, and the Segmenter loads the bundle's copy itself
    cuda = FakeCudaRuntime()
    fresh = FakeTensorRT(cuda)
    install(monkeypatch, cuda, fresh)
    engine = (path / manifest["engines"]["fp32"]["query_decoder"]["file"]).read_bytes()
    assert fresh.Runtime(None).deserialize_cuda_engine(engine) is None
    same_as_onnxruntime(path)
    assert fresh.registry.creators


def test_auto_falls_back_when_the_standard_decoder_fails_the_gate(setup):
    path, trt, library, cache = setup

    def wrong_standard_decoder(name, model):
        if name == "query_decoder.onnx":  # the plugin variant stays right
            for init in model.graph.initializer:
                if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 1 and init.dims[0] > 1:
                    array = onnx.numpy_helper.to_array(init) + 3.0
                    init.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), init.name))
        return model

    trt.tamper = wrong_standard_decoder
    build_engines(path, BuildOptions(precisions=("fp32",), plugin_library=library, timing_cache=cache),
                  progress=False)
    decoder = json.loads((path / MANIFEST).read_text())["engines"]["fp32"]["query_decoder"]
    assert decoder["patch_align"] == "plugin" and "failed the gate" in decoder["patch_align_reason"]
    same_as_onnxruntime(path)


def test_the_fallback_needs_the_library_and_a_plugin_decoder(setup, monkeypatch):
    path, trt, library, cache = setup
    trt.unsupported_ops = {standard_only_op(json.loads((path / MANIFEST).read_text()))}
    monkeypatch.chdir(path)  # no build/libsccan_trt_plugin.so here
    with pytest.raises(BuildError, match="plugin library.*--plugin-library"):
        build_engines(path, BuildOptions(precisions=("fp32",), timing_cache=cache), progress=False)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["plugin_variant"] = None
    write_manifest(path, manifest)
    with pytest.raises(BuildError, match="parser rejected .*export it with --patch-align both"):
        build_engines(path, BuildOptions(precisions=("fp32",), plugin_library=library, timing_cache=cache),
                      progress=False)
    assert not (path / "libsccan_trt_plugin.so").exists()
    assert not json.loads((path / MANIFEST).read_text())["engines"]
