"""TensorRT backend checks that need TensorRT and an NVIDIA GPU (skipped with the reason elsewhere)."""

from __future__ import annotations

import json
import shutil

import pytest

from sccan.sdk.bundle import MANIFEST, write_manifest
from sccan.sdk.info import cuda_devices

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be on the CI machines)")
devices, why = cuda_devices()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not devices, reason=f"no CUDA device: {why}")]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The shipped synthetic EfficientNet-Lite0 model at 129: a trained model whose probabilities
    spread, so a constant or shifted engine fails the comparisons."""
    import os
    from pathlib import Path

    from sccan.export.demo import DEMO_CHECKPOINT
    from sccan.export.exporter import export_bundle

    if os.environ.get("SCCAN_TEST_GPU_BUNDLE"):  # the dry run hands over the suite's export of this model
        return Path(os.environ["SCCAN_TEST_GPU_BUNDLE"])
    return export_bundle(DEMO_CHECKPOINT, tmp_path_factory.mktemp("gpu") / "b", size=129, max_shots=2,
                         max_classes=2, check_episodes=2, progress=False).bundle


@pytest.fixture
def fresh(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    return copy


def test_bundle_without_engines_is_reported(fresh):
    from sccan.sdk.bundle import load_bundle
    from sccan.sdk.tensorrt_backend import tensorrt_unavailable

    why = tensorrt_unavailable(load_bundle(fresh))
    assert why is not None and "no fp16 TensorRT engines" in why


def test_preflight_names_both_sides_of_a_mismatch(fresh, tmp_path):
    from sccan.sdk import Segmenter
    from sccan.sdk.bundle import load_bundle
    from sccan.sdk.errors import BundleMismatchError
    from sccan.sdk.tensorrt_backend import preflight

    copy = tmp_path / "copy"
    shutil.copytree(fresh, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["engines"] = {"fp16": {g: {"file": f"{g}.engine", "tensorrt": "0.0.0", "compute_capability": "1.0"}
                                    for g in ("backbone", "support_encoder", "query_decoder")}}
    write_manifest(copy, manifest)
    problems = preflight(load_bundle(copy, verify=False), "fp16", 0)
    assert any("TensorRT 0.0.0" in p and trt.__version__ in p for p in problems)
    assert any("compute capability 1.0" in p for p in problems)
    with pytest.raises(BundleMismatchError, match="TensorRT 0.0.0"):
        Segmenter(load_bundle(copy, verify=False), backend="tensorrt")


def _scene(seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 20:45] = 1
    return image, mask


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 0.02)])
def test_sccan_build_engines_match_onnxruntime(fresh, tmp_path, precision, tolerance):
    """``sccan build`` (strongly typed, two profiles, timing cache, its own gate), then the
    Segmenter on the engines against ONNX Runtime: plain, CUDA graphs with two decoder batches
    (three classes, max_classes 2), and a clone in a second thread on the second profile."""
    import threading

    import numpy as np

    from sccan.export.engines import BuildOptions, build_engines
    from sccan.sdk import Segmenter
    from sccan.sdk.info import cuda_binding

    result = build_engines(fresh, BuildOptions(precisions=(precision,), timing_cache=tmp_path / "cache"),
                           progress=False)
    gate = result.gates[precision]
    print(f"\n{precision} build: {result.summary()}stage diffs: {gate.stage_diffs}")
    assert gate.ok and gate.profiles_checked == 2
    reference = Segmenter(fresh, backend="onnxruntime", precision="fp32")
    engines = Segmenter(fresh, backend="tensorrt", precision=precision)
    # CUDA-graph capture needs cuda-python; with pycuda alone the plain path is what runs
    graphs = Segmenter(fresh, backend="tensorrt", precision=precision, cuda_graph=True) \
        if cuda_binding() == "cuda-python" else None
    spread = []
    for seg in [s for s in (reference, engines, graphs) if s is not None]:
        for i, name in enumerate("abc"):
            image, mask = _scene(i)
            seg.add_class(name, [image], [mask])
    clone = engines.clone()
    frames = [_scene(seed)[0] for seed in (10, 11, 10, 12)]
    wants = [reference.segment(f) for f in frames]
    out = {}
    worker = threading.Thread(target=lambda: out.update(r=[clone.segment(f) for f in frames]))
    worker.start()
    for frame, want in zip(frames, wants):
        for seg in [s for s in (engines, graphs) if s is not None]:
            got = seg.segment(frame)
            for name in "abc":
                assert np.abs(got.probabilities[name] - want.probabilities[name]).max() <= tolerance, (precision, name)
                spread.append(float(want.probabilities[name].std()))
    worker.join()
    for got, want in zip(out["r"], wants):
        for name in "abc":
            assert np.abs(got.probabilities[name] - want.probabilities[name]).max() <= tolerance
    assert np.mean(spread) > 0.05, "the model's probabilities do not spread: a constant engine would pass"
    # rebuilt from the timing cache
    again = build_engines(fresh, BuildOptions(precisions=(precision,), timing_cache=tmp_path / "cache", force=True),
                          progress=False)
    assert all(r["timing_cache_reused"] for r in again.built[precision].values())
