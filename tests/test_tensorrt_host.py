"""The TensorRT backend's orchestration, run against a host-memory stand-in for TensorRT and the CUDA
runtime (``fake_tensorrt``): engine selection, named-tensor binding, page-locked staging, the
device-resident support cache, CUDA-graph capture and replay, per-thread contexts, the preflight.

The stand-in executes each "engine" with ONNX Runtime, so results must equal the ONNX Runtime
backend's. What only a GPU can show (TensorRT's kernels, FP16 arithmetic, real timing) is in
``tests/gpu``.
"""

from __future__ import annotations

import gc
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import scene
from fake_tensorrt import FakeCudaRuntime, FakeTensorRT, install
from sccan.export.engines import BuildError, BuildOptions, build_engines
from sccan.sdk import BundleMismatchError, SCCANError, Segmenter
from sccan.sdk.bundle import MANIFEST, write_manifest
from sccan.sdk.schema import SLOT_AXES

SIZE = 129  # the shared synthetic export (conftest.synthetic_export)
WEIGHTS = Path(__file__).resolve().parents[1] / "train" / "weights"
CONTEXTS = 4  # a Segmenter and three clones at once


@pytest.fixture(scope="module")
def engine_bundle(synthetic_export, tmp_path_factory):
    """A bundle with FP32 and FP16 "engines" built by ``sccan build`` against the stand-in (whose
    engines run the bundle's graphs in ONNX Runtime), on a copy of the suite's shared export of the
    shipped synthetic model at 129 px (conftest.synthetic_export): trained, so its probabilities
    spread over 0-1 and a constant fails the comparisons, and its FP16 graphs pass the gate."""
    path = tmp_path_factory.mktemp("trt") / "bundle"
    shutil.copytree(synthetic_export, path)
    with pytest.MonkeyPatch.context() as mp:
        cuda = FakeCudaRuntime()
        install(mp, cuda, FakeTensorRT(cuda))
        build_engines(path, BuildOptions(precisions=("fp32", "fp16"), contexts=CONTEXTS,
                                         timing_cache=tmp_path_factory.mktemp("cache")), progress=False)
    return path


@pytest.fixture
def fake(monkeypatch):
    """Install the stand-in: ``import tensorrt`` and cuda-python's runtime; device 0 is an Orin (sm 8.7)."""
    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    install(monkeypatch, cuda, trt)
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
                                                         "cudaMalloc", "cudaHostAlloc")}
    # one image in; logits out of each of the two decoder batches; no allocation, pinned or not
    assert per_frame == {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2, "cudaMalloc": 0,
                         "cudaHostAlloc": 0}
    seg.remove_class("c")  # the resident batches are rebuilt for the new class set
    ort_seg = Segmenter(engine_bundle, backend="onnxruntime")
    register(ort_seg)
    ort_seg.remove_class("c")
    assert_same(seg.segment(scene(7)[0]), ort_seg.segment(scene(7)[0]))


def test_cuda_graphs_are_captured_once_and_replayed(fake, engine_bundle):
    """Three classes are two decoder batches per frame: each batch has its own CUDA graph, so after
    the first frame every frame is three replays (with one graph per name, the decoder was
    re-captured twice every frame and never replayed)."""
    seg = Segmenter(engine_bundle, backend="tensorrt", precision="fp32", cuda_graph=True)
    ort_seg = Segmenter(engine_bundle, backend="onnxruntime")
    register(seg)
    register(ort_seg)
    calls = fake.cuda.calls
    frames = [scene(200 + i)[0] for i in range(4)]
    assert_same(seg.segment(frames[0]), ort_seg.segment(frames[0]))
    decoder = next(e for e in fake.engines if "logits" in e.output_names)
    captures, launches, executions = calls["captures"], calls["graph_launches"], decoder.executions
    assert captures >= 3  # the backbone (per image count and buffer), the decoder for each class batch
    for frame in frames:
        assert_same(seg.segment(frame), ort_seg.segment(frame))
    assert calls["captures"] == captures, "a frame re-captured a graph it had captured before"
    assert calls["graph_launches"] == launches + 3 * len(frames)
    assert decoder.executions == executions + 2 * len(frames)  # the replays did run the decoder
    seg.remove_class("c")  # a new class set: new resident batch, one more capture, then replays
    ort_seg.remove_class("c")
    for frame in frames:
        assert_same(seg.segment(frame), ort_seg.segment(frame))
    assert calls["captures"] == captures + 1


def test_a_failed_capture_ends_the_capture_and_raises_the_original_error(fake, engine_bundle):
    """An enqueue that raises while capturing: the capture is ended and its graph destroyed, and the
    enqueue's own error reaches the caller (before, cudaStreamEndCapture's error replaced it)."""
    seg = Segmenter(engine_bundle, backend="tensorrt", precision="fp32", cuda_graph=True)
    seg.backend.contexts["backbone"].fail_enqueue_during_capture = True
    image, mask = scene(5)
    with pytest.raises(RuntimeError, match="planted: enqueue failed during capture"):
        seg.add_class("a", [image], [mask])  # the backbone runs (and is captured) for the support
    assert seg.backend.stream.recording is None, "the stream was left capturing"
    assert fake.cuda.graphs_alive == 0
    seg.backend.contexts["backbone"].fail_enqueue_during_capture = False
    register(seg)
    ort_seg = Segmenter(engine_bundle, backend="onnxruntime")
    register(ort_seg)
    assert_same(seg.segment(scene(5)[0]), ort_seg.segment(scene(5)[0]))


def test_captured_graphs_are_bounded(fake, engine_bundle, monkeypatch):
    import sccan.sdk.tensorrt_backend as backend_module

    monkeypatch.setattr(backend_module, "MAX_CAPTURES", 2)
    seg = Segmenter(engine_bundle, backend="tensorrt", precision="fp32", cuda_graph=True)
    register(seg)
    for i in range(3):
        seg.segment(scene(i)[0])
    assert len(seg.backend._captures) == 2 and fake.cuda.graphs_alive == 2


def test_clones_run_in_threads_with_their_own_contexts(fake, engine_bundle):
    seg = Segmenter(engine_bundle, backend="tensorrt", precision="fp32")
    register(seg)
    frames = [scene(300 + i)[0] for i in range(6)]
    expected = [seg.segment(f) for f in frames]
    clones = [seg.clone() for _ in range(3)]
    assert all(c.backend.contexts["backbone"] is not seg.backend.contexts["backbone"] for c in clones)
    # each context on its own optimisation profile (the stand-in fails two live contexts on one)
    assert sorted(b.backend.profile for b in [seg, *clones]) == list(range(CONTEXTS))
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
    with pytest.raises(SCCANError, match=f"all {CONTEXTS} execution contexts .* --contexts"):
        seg.clone()
    profile = clones[0].backend.profile
    del clones[0], threads
    gc.collect()
    again = seg.clone()  # a dropped clone's profile is free again
    assert again.backend.profile == profile
    assert_same(again.segment(frames[0]), expected[0], tol=0)


def test_fp16_engines_match_the_fp32_graphs_within_the_gate(fake, engine_bundle):
    seg = Segmenter(engine_bundle)  # auto: TensorRT, FP16 engines
    assert seg.backend.name == "tensorrt" and seg.backend.precision == "fp16"
    assert seg.backend.input_dtype("backbone", "images") == np.float16
    ort_seg = Segmenter(engine_bundle, backend="onnxruntime")
    register(seg)
    register(ort_seg)
    frame = scene(11, 60, 45)[0]
    got, want = seg.segment(frame), ort_seg.segment(frame)
    for name in want.classes:
        truth = want.probabilities[name]
        assert np.abs(truth - truth.mean()).max() > 0.2  # decisive: a constant is far outside the gate
        assert np.abs(got.probabilities[name] - truth).max() < 0.02
        assert (got.masks[name] == want.masks[name]).mean() > 0.995


def test_pycuda_is_used_when_cuda_python_cannot_reach_the_driver(monkeypatch, engine_bundle):
    """cuda-python 13 on a CUDA 12 driver fails every call: the backend falls back to pycuda (before,
    the TensorRT backend was reported unusable and auto went to ONNX Runtime)."""
    from fake_tensorrt import FakePycuda
    from sccan.sdk import info

    cuda = FakeCudaRuntime(driver_error=True)
    trt = FakeTensorRT(cuda)
    install(monkeypatch, cuda, trt, FakePycuda(cuda))
    seg = Segmenter(engine_bundle, precision="fp32")
    assert seg.backend.name == "tensorrt" and seg.backend.cuda.flavour == "pycuda"
    ort_seg = Segmenter(engine_bundle, backend="onnxruntime")
    register(seg)
    register(ort_seg)
    assert_same(seg.segment(scene(3)[0]), ort_seg.segment(scene(3)[0]))
    report = info.collect()["cuda_bindings"]
    assert report["pycuda"]["works"] and not report["cuda-python"]["works"]
    assert "cudaErrorInsufficientDriver" in report["cuda-python"]["why"] and "cuda-python<13" in \
        report["cuda-python"]["why"]
    with pytest.raises(SCCANError, match="CUDA-graph capture needs cuda-python"):
        Segmenter(engine_bundle, backend="tensorrt", precision="fp32", cuda_graph=True)
    install(monkeypatch, cuda, trt, None)  # no pycuda either: a clear reason, and auto uses ONNX Runtime
    assert Segmenter(engine_bundle, precision="fp32").backend.name == "onnxruntime"
    with pytest.raises(BundleMismatchError, match="cudaErrorInsufficientDriver.*pycuda: not installed"):
        Segmenter(engine_bundle, backend="tensorrt", precision="fp32")


def test_engines_built_for_one_class_per_decode(monkeypatch, engine_bundle, tmp_path):
    copy = tmp_path / "one"
    shutil.copytree(engine_bundle, copy)
    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    install(monkeypatch, cuda, trt)
    build_engines(copy, BuildOptions(precisions=("fp32",), max_classes=1, force=True, timing_cache=tmp_path),
                  progress=False)
    seg = Segmenter(copy, precision="fp32")
    assert seg.max_classes == 1
    ort_seg = Segmenter(copy, backend="onnxruntime")
    register(seg)
    register(ort_seg)
    assert_same(seg.segment(scene(4)[0]), ort_seg.segment(scene(4)[0]))


def _edited(engine_bundle, tmp_path, edit) -> "object":
    from sccan.sdk.bundle import load_bundle

    copy = tmp_path / "copy"
    shutil.copytree(engine_bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    edit(copy, manifest)
    write_manifest(copy, manifest)
    return load_bundle(copy, verify=False)


def test_preflight_refuses_another_gpu_model_unless_hardware_compatible(fake, engine_bundle, tmp_path):
    """Orin Nano and AGX Orin are both sm 8.7: the GPU name decides (before, only the compute
    capability was compared)."""
    def edit(path, manifest):
        for info in manifest["engines"]["fp32"].values():
            info["gpu"] = "Orin Nano"

    bundle = _edited(engine_bundle, tmp_path, edit)
    with pytest.raises(BundleMismatchError, match="built on Orin Nano, device 0 is Orin"):
        Segmenter(bundle, backend="tensorrt", precision="fp32")
    bundle.manifest["engines"]["fp32"]["backbone"]["hardware_compatible"] = True
    for info in bundle.manifest["engines"]["fp32"].values():
        info["hardware_compatible"] = True
    assert Segmenter(bundle, backend="tensorrt", precision="fp32").backend.name == "tensorrt"


def test_an_altered_engine_is_caught_by_its_hash_before_deserialisation(fake, engine_bundle, tmp_path):
    def edit(path, manifest):
        plan = path / manifest["engines"]["fp32"]["query_decoder"]["file"]
        plan.write_bytes(plan.read_bytes()[:-100])  # truncated

    with pytest.raises(BundleMismatchError, match="does not match its sha256"):
        Segmenter(_edited(engine_bundle, tmp_path, edit), backend="tensorrt", precision="fp32")
    assert not fake.engines


def test_a_plugin_library_that_does_not_load_is_named(fake, engine_bundle, tmp_path):
    """TensorRT's load_library returns None for a library it cannot load; that is an error naming
    the library (before, the return value was ignored)."""
    from sccan.sdk.bundle import sha256_file

    def edit(path, manifest):
        lib = path / "libsccan_trt_plugin.so"
        lib.write_bytes(b"not a shared library")
        for info in manifest["engines"]["fp32"].values():
            info["plugin_library"] = {"file": lib.name, "sha256": sha256_file(lib)}

    with pytest.raises(BundleMismatchError, match="could not load the plugin library .*libsccan_trt_plugin.so"):
        Segmenter(_edited(engine_bundle, tmp_path, edit), backend="tensorrt", precision="fp32")
    assert not fake.engines


def test_preflight_refuses_engines_of_another_system(fake, engine_bundle, tmp_path):
    from sccan.sdk.bundle import load_bundle

    copy = tmp_path / "copy"
    shutil.copytree(engine_bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["engines"]["fp32"]["backbone"]["tensorrt"] = "10.7.0"
    manifest["engines"]["fp32"]["query_decoder"]["compute_capability"] = "9.0"
    write_manifest(copy, manifest)
    (copy / manifest["engines"]["fp32"]["support_encoder"]["file"]).unlink()
    with pytest.raises(BundleMismatchError) as info:
        Segmenter(load_bundle(copy, verify=False), backend="tensorrt", precision="fp32")
    message = str(info.value)
    assert "TensorRT 10.7.0, this system has 10.3.0" in message
    assert "compute capability 9.0, device 0 is 8.7" in message
    assert "support_encoder engine file" in message and "is missing" in message
    assert not fake.engines, "nothing may be deserialised after a failed preflight"
    # auto falls back to ONNX Runtime with the same bundle
    assert Segmenter(load_bundle(copy, verify=False), precision="fp32").backend.name == "onnxruntime"
    with pytest.raises(ValueError, match="cuda_graph"):
        Segmenter(load_bundle(copy, verify=False), backend="onnxruntime", cuda_graph=True)


# -- sccan build against the stand-in -----------------------------------------------------------------


@pytest.fixture
def built(monkeypatch, engine_bundle, tmp_path):
    """A copy of the bundle, a fresh stand-in and a timing-cache directory: (path, trt, cache dir)."""
    copy = tmp_path / "bundle"
    shutil.copytree(engine_bundle, copy)
    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    install(monkeypatch, cuda, trt)
    return copy, trt, tmp_path / "cache"


def test_build_sets_strong_typing_profiles_and_reuses_the_timing_cache(built):
    path, trt, cache = built
    result = build_engines(path, BuildOptions(precisions=("fp16", "fp32"), contexts=2, opt_classes=2, force=True,
                                              workspace_mib=512, timing_cache=cache), progress=False)
    assert len(trt.builds) == 6
    for b in trt.builds:
        assert b["strongly_typed"] and "FP16" not in b["builder_flags"], b  # precision from the graphs' types
        assert b["tf32"] == ("fp16" in b["graph"]), b  # TF32 cleared for FP32 (backbone.onnx, ...)
        assert b["workspace"] == 512 << 20 and b["timing_cache"] and len(b["profiles"]) == 2
        assert b["profiles"][0] == b["profiles"][1]  # identical, one per context
    shapes = {b["graph"]: b["profiles"][0] for b in trt.builds if "fp16" not in b["graph"]}
    assert shapes["backbone.onnx"]["images"] == [[1, 3, SIZE, SIZE], [1, 3, SIZE, SIZE], [2, 3, SIZE, SIZE]]
    decoder = shapes["query_decoder.onnx"]
    assert "mid" not in decoder and len(decoder) > 3  # the query's features are static; support inputs not
    assert all((v[0][0], v[1][0], v[2][0]) == (1, 2, 2) for v in decoder.values())  # classes 1/opt/max
    slots = {name: v for name, v in decoder.items() if v[0][1:] != v[2][1:]}
    assert sorted(slots) == sorted(SLOT_AXES)
    for name, v in slots.items():  # shot slots 1/1/max_shots, on each tensor's slot axis
        axis = SLOT_AXES[name]
        assert (v[0][axis], v[1][axis], v[2][axis]) == (1, 1, 2), (name, v)
    assert all(b["cache_hits"] == 0 for b in trt.builds)
    caches = sorted(p.name for p in cache.iterdir())
    assert caches == ["timing-orin-sm87-trt10.3.0-fp16.cache", "timing-orin-sm87-trt10.3.0-fp32.cache"]
    manifest = json.loads((path / MANIFEST).read_text())
    record = manifest["engines"]["fp16"]["backbone"]
    assert record["file"] == "backbone.fp16.orin-sm87-trt10.3.0.plan" and (path / record["file"]).is_file()
    assert record["gpu"] == "Orin" and record["flags"]["strongly_typed"] and record["contexts"] == 2
    assert manifest["engine_gates"]["fp32"]["ok"] and manifest["engine_gates"]["fp32"]["indices_checked"] > 0
    assert result.gates["fp16"].profiles_checked == 2
    assert not [p for p in path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    # unchanged engines are not rebuilt; --force rebuilds them from the timing cache
    assert build_engines(path, BuildOptions(precisions=("fp16",), timing_cache=cache), progress=False).skipped
    before = len(trt.builds)
    build_engines(path, BuildOptions(precisions=("fp16",), force=True, timing_cache=cache), progress=False)
    assert len(trt.builds) == before + 3 and all(b["cache_hits"] == b["layers"] for b in trt.builds[before:])
    assert json.loads((path / MANIFEST).read_text())["engines"]["fp16"]["backbone"]["timing_cache_reused"]


def test_build_on_tensorrt_11(monkeypatch, engine_bundle, tmp_path):
    """TensorRT 11 has no FP16 builder flag and strongly types every network."""
    copy = tmp_path / "b"
    shutil.copytree(engine_bundle, copy)
    cuda = FakeCudaRuntime(gpu="NVIDIA H100 80GB HBM3", cc=(9, 0))
    trt = FakeTensorRT(cuda, version="11.1.0")
    install(monkeypatch, cuda, trt)
    build_engines(copy, BuildOptions(precisions=("fp16", "fp32"), force=True, timing_cache=tmp_path), progress=False)
    assert all(b["network_flags"] == 0 and b["strongly_typed"] for b in trt.builds)
    assert Segmenter(copy).backend.name == "tensorrt"
    assert json.loads((copy / MANIFEST).read_text())["engines"]["fp16"]["backbone"]["file"] == \
        "backbone.fp16.nvidia-h100-80gb-hbm3-sm90-trt11.1.0.plan"


def test_a_failed_gate_names_the_output_and_keeps_the_previous_engines(built):
    """A decoder engine whose logits are constant (planted) fails the gate; the bundle is untouched."""
    path, trt, cache = built
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def constant_logits(name, model):
        if name.startswith("query_decoder"):
            out = model.graph.output[0].name
            for node in model.graph.node:
                node.output[:] = [f"{o}_real" if o == out else o for o in node.output]
            zero = onnx.helper.make_tensor(f"{out}_zero", onnx.TensorProto.FLOAT, [], [0.0])
            model.graph.initializer.append(zero)
            model.graph.node.append(onnx.helper.make_node("Mul", [f"{out}_real", zero.name], [out]))
        return model

    trt.tamper = constant_logits
    with pytest.raises(BuildError, match="fp32 engines failed the gate: FP32 logits differ .*first diverging "
                                         "output: query_decoder.logits"):
        # standard ops forced: the bundle also holds the plugin variant, which auto would fall back to
        build_engines(path, BuildOptions(precisions=("fp32",), force=True, patch_align="standard-ops",
                                         timing_cache=cache), progress=False)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # previous engines, nothing left over
    assert Segmenter(path, precision="fp32").backend.name == "tensorrt"


def test_build_errors_name_what_to_do(built, monkeypatch, capsys):
    from sccan.sdk.cli import main

    path, trt, cache = built
    trt.unsupported_ops = {"Softmax"}
    with pytest.raises(BuildError, match=r"parser rejected backbone.fp32.onnx|parser rejected .*: .*\(Softmax\): "
                                         "No importer"):
        build_engines(path, BuildOptions(precisions=("fp32",), force=True, timing_cache=cache), progress=False)
    trt.unsupported_ops = set()
    trt.out_of_memory = True
    with pytest.raises(BuildError, match="ran out of GPU memory .*--workspace"):
        build_engines(path, BuildOptions(precisions=("fp32",), force=True, timing_cache=cache), progress=False)
    trt.out_of_memory = False
    with pytest.raises(BuildError, match="--max-classes must be between 1 and the bundle's 2"):
        build_engines(path, BuildOptions(max_classes=3), progress=False)
    assert main(["build", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT 10.3.0 on Orin (sm 8.7)" in out and "fp16: engines present, usable here" in out
    # no GPU
    install(monkeypatch, FakeCudaRuntime(driver_error=True), trt)
    assert main(["build", str(path), "--force"]) == 2
    assert "no CUDA device 0" in capsys.readouterr().err
    # no TensorRT: one line saying what to install
    install(monkeypatch, FakeCudaRuntime(), None)
    assert main(["build", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt is not importable" in err and "sccan[tensorrt]" in err


@pytest.mark.parametrize("binding", ["cuda-python", "pycuda"])
def test_bench_reports_gpu_time_and_device_memory(monkeypatch, engine_bundle, binding):
    """On the TensorRT backend, `sccan bench` adds GPU time per stage from CUDA events and the device
    memory in use (the stand-in's events time its host execution; no figure is asserted)."""
    from fake_tensorrt import FakePycuda
    from sccan.sdk.bench import run_benchmark

    cuda = FakeCudaRuntime(driver_error=binding == "pycuda")
    install(monkeypatch, cuda, FakeTensorRT(cuda), FakePycuda(cuda) if binding == "pycuda" else None)
    result = run_benchmark(engine_bundle, backend="tensorrt", precision="fp32", classes=(1, 3),
                           frames_sizes=((48, 64),), frames=2, warmup=1, baseline=False, progress=False)
    assert result.backend == "tensorrt"
    for case in result.cases:
        assert case.device_stages["backbone"]["median_ms"] > 0 and case.device_stages["decode"]["median_ms"] > 0
        assert case.device_memory_mb > 0
    assert "GPU (CUDA events) backbone" in result.table() and "tensorrt fp32" in result.table()
    assert result.gpu == "Orin"


def test_triton_repository_with_the_engines_as_tensorrt_plan_models(engine_bundle, tmp_path):
    """`sccan triton --backend tensorrt`: the per-frame engines as tensorrt_plan models (GPU
    instances) that the Python model calls through BLS. Only the layout is checked here (no Triton
    container with TensorRT on these machines)."""
    from sccan.sdk.errors import BadArgumentError
    from sccan.serve import make_repository

    repo = make_repository(engine_bundle, tmp_path / "repo", backend="tensorrt", instances=2)
    manifest = json.loads((engine_bundle / MANIFEST).read_text())
    for graph in ("backbone", "support_encoder", "query_decoder"):
        model = repo / f"sccan_{graph}"
        assert (model / "1" / "model.plan").read_bytes() == \
            (engine_bundle / manifest["engines"]["fp16"][graph]["file"]).read_bytes()
        config = (model / "config.pbtxt").read_text()
        assert 'platform: "tensorrt_plan"' in config and "kind: KIND_GPU count: 2" in config
        assert "max_batch_size: 0" in config and "TYPE_FP16" in config
    assert f'name: "images" data_type: TYPE_FP16 dims: [ -1, 3, {SIZE}, {SIZE} ]' in (repo / "sccan_backbone" /
                                                                            "config.pbtxt").read_text()
    assert 'string_value: "triton-bls"' in (repo / "sccan" / "config.pbtxt").read_text()
    copy = tmp_path / "no-engines"
    shutil.copytree(engine_bundle, copy)
    manifest["engines"] = {}
    write_manifest(copy, manifest)
    with pytest.raises(BadArgumentError, match="no fp16 TensorRT engines"):
        make_repository(copy, tmp_path / "repo2", backend="tensorrt")


def test_onnxruntime_picks_the_fp16_graphs_on_its_cuda_provider(engine_bundle, monkeypatch, tmp_path):
    """Auto precision on ONNX Runtime: the FP16 graphs where the CUDA provider comes first, FP32 on the
    CPU, FP32 when asked for, and FP32 for a bundle without FP16 graphs. (The CUDA provider is named
    available; ONNX Runtime's CPU build then runs the sessions on its CPU provider, with a warning.)"""
    import onnxruntime

    install(monkeypatch, None, None)  # no TensorRT: auto falls to ONNX Runtime
    assert Segmenter(engine_bundle).backend.precision == "fp32"  # CPU only
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    seg = Segmenter(engine_bundle)
    assert seg.backend.name == "onnxruntime" and seg.backend.providers[0] == "CUDAExecutionProvider"
    assert seg.backend.precision == "fp16" and seg.backend.input_dtype("backbone", "images") == np.float16
    assert Segmenter(engine_bundle, precision="fp32").backend.precision == "fp32"
    fp32_only = tmp_path / "fp32-only"
    shutil.copytree(engine_bundle, fp32_only)
    manifest = json.loads((fp32_only / MANIFEST).read_text())
    for graph in manifest["graphs"].values():
        graph.pop("fp16", None)
    manifest["engines"] = {}
    write_manifest(fp32_only, manifest)
    assert Segmenter(fp32_only).backend.precision == "fp32"
