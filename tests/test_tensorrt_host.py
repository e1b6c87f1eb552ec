"""The TensorRT backend's orchestration, run against a host-memory stand-in for TensorRT and the CUDA
runtime (``fake_tensorrt``): engine selection, named-tensor binding, page-locked staging, the
device-resident support cache, CUDA-graph capture and replay, per-thread contexts, the preflight.

The stand-in executes each "engine" with ONNX Runtime, so results must equal the ONNX Runtime
backend's. What only a GPU can show (TensorRT's kernels, FP16 arithmetic, real timing) is in
``tests/gpu``.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading

import numpy as np
import pytest
import torch

from conftest import SMALL, randomize_bn, scene
from fake_tensorrt import FakeCudaRuntime, FakeTensorRT
from sccan.export.exporter import export_bundle
from sccan.sdk import BundleMismatchError, Segmenter
from sccan.sdk.bundle import GRAPHS, MANIFEST, graph_file, sha256_file, write_manifest
from sccan.train.model import build_model

SIZE = 65


@pytest.fixture(scope="module")
def engine_bundle(tmp_path_factory):
    """A bundle whose manifest lists FP32 "engines" (the stand-in's engines are the ONNX graphs)."""
    torch.manual_seed(0)
    model = randomize_bn(build_model("resnet50", **SMALL))
    path = export_bundle(model, tmp_path_factory.mktemp("trt") / "bundle", size=SIZE, max_shots=2, max_classes=2,
                         check_episodes=1, progress=False).bundle
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["engines"] = {"fp32": {}}
    for graph in GRAPHS:
        name = f"{graph}.fp32.engine"
        shutil.copy(path / graph_file(graph, "fp32"), path / name)
        manifest["engines"]["fp32"][graph] = {"file": name, "tensorrt": "10.3.0", "compute_capability": "8.7"}
        manifest["files"][name] = sha256_file(path / name)
    write_manifest(path, manifest)
    return path


@pytest.fixture
def fake(monkeypatch):
    """Install the stand-in: ``import tensorrt`` and cuda-python's runtime; device 0 is sm 8.7."""
    import sccan.sdk.tensorrt_backend as backend_module

    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(backend_module, "cuda_runtime_module", lambda: cuda)
    monkeypatch.setattr(backend_module, "_compute_capability", lambda device: "8.7" if device == 0 else None)
    return trt


def register(seg: Segmenter) -> None:
    for i, name in enumerate(["a", "b", "c"]):  # three classes: two decoder batches of max_classes=2
        shots = [scene(10 * i + k) for k in range(1 + i % 2)]
        seg.add_class(name, [s[0] for s in shots], [s[1] for s in shots])


def assert_same(result, expected, tol=1e-5):
    assert result.classes == expected.classes
    for name in expected.classes:
        np.testing.assert_allclose(result.probabilities[name], expected.probabilities[name], atol=tol)
    assert np.array_equal(result.label_map, expected.label_map)


def test_auto_picks_engines_and_matches_onnxruntime(fake, engine_bundle):
    seg = Segmenter(engine_bundle, precision="fp32")
    assert seg.backend.name == "tensorrt" and len(fake.engines) == 3
    ort_seg = Segmenter(engine_bundle, backend="onnxruntime")
    register(seg)
    register(ort_seg)
    for seed in (1, 2, 1):
        frame = scene(100 + seed, 60, 45)[0]
        assert_same(seg.segment(frame), ort_seg.segment(frame))


def test_a_frame_copies_only_the_image_in_and_the_logits_out(fake, engine_bundle):
    seg = Segmenter(engine_bundle, backend="tensorrt", precision="fp32")
    register(seg)
    seg.segment(scene(1)[0])  # first frame: support batches go to the device
    calls = fake.cuda.calls
    before = calls.copy()
    for seed in range(3):
        seg.segment(scene(seed)[0])
    per_frame = {k: (calls[k] - before[k]) / 3 for k in ("cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost",
                                                         "cudaMalloc")}
    # one image in; logits out of each of the two decoder batches; no allocation
    assert per_frame == {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2, "cudaMalloc": 0}
    seg.remove_class("c")  # the resident batches are rebuilt for the new class set
    ort_seg = Segmenter(engine_bundle, backend="onnxruntime")
    register(ort_seg)
    ort_seg.remove_class("c")
    assert_same(seg.segment(scene(7)[0]), ort_seg.segment(scene(7)[0]))


def test_cuda_graphs_are_captured_once_and_replayed(fake, engine_bundle):
    seg = Segmenter(engine_bundle, backend="tensorrt", precision="fp32", cuda_graph=True)
    ort_seg = Segmenter(engine_bundle, backend="onnxruntime")
    register(seg)
    register(ort_seg)
    calls = fake.cuda.calls
    frames = [scene(200 + i)[0] for i in range(4)]
    for frame in frames:
        assert_same(seg.segment(frame), ort_seg.segment(frame))
    # backbone + two decoder batches whose addresses differ: the decoder re-captures per batch,
    # the backbone is captured once and replayed.
    decoder = next(e for e in fake.engines if "logits" in e.output_names)
    assert calls["captures"] >= 2 and calls["graph_launches"] >= 3
    # One class batch (a fixed class count): after the first frame every frame is a replay.
    seg.remove_class("c")
    ort_seg.remove_class("c")
    seg.segment(frames[0])
    captures, launches, executions = calls["captures"], calls["graph_launches"], decoder.executions
    for frame in frames:
        assert_same(seg.segment(frame), ort_seg.segment(frame))
    assert calls["captures"] == captures and calls["graph_launches"] == launches + 2 * len(frames)
    assert decoder.executions == executions + len(frames)  # the replays did run the decoder


def test_clones_run_in_threads_with_their_own_contexts(fake, engine_bundle):
    seg = Segmenter(engine_bundle, backend="tensorrt", precision="fp32")
    register(seg)
    frames = [scene(300 + i)[0] for i in range(6)]
    expected = [seg.segment(f) for f in frames]
    clones = [seg.clone() for _ in range(3)]
    assert all(c.backend.contexts["backbone"] is not seg.backend.contexts["backbone"] for c in clones)
    assert all(c.backend.engines["backbone"] is seg.backend.engines["backbone"] for c in clones)
    out: dict[int, list] = {}

    def work(i):
        out[i] = [clones[i].segment(f) for f in frames]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for results in out.values():
        for got, want in zip(results, expected):
            assert_same(got, want, tol=0)


def test_preflight_refuses_engines_of_another_system(fake, engine_bundle, tmp_path):
    from sccan.sdk.bundle import load_bundle

    copy = tmp_path / "copy"
    shutil.copytree(engine_bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["engines"]["fp32"]["backbone"]["tensorrt"] = "10.7.0"
    manifest["engines"]["fp32"]["query_decoder"]["compute_capability"] = "9.0"
    write_manifest(copy, manifest)
    with pytest.raises(BundleMismatchError) as info:
        Segmenter(load_bundle(copy, verify=False), backend="tensorrt", precision="fp32")
    message = str(info.value)
    assert "TensorRT 10.7.0, this system has 10.3.0" in message
    assert "compute capability 9.0, device 0 is 8.7" in message
    assert not fake.engines, "nothing may be deserialised after a failed preflight"
    # auto falls back to ONNX Runtime with the same bundle
    assert Segmenter(load_bundle(copy, verify=False), precision="fp32").backend.name == "onnxruntime"
    with pytest.raises(ValueError, match="cuda_graph"):
        Segmenter(load_bundle(copy, verify=False), backend="onnxruntime", cuda_graph=True)
