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


@pytest.fixture
def bundle(tmp_path):
    import torch

    from conftest import SMALL
    from sccan.export.exporter import export_bundle
    from sccan.train.model import build_model

    torch.manual_seed(0)
    return export_bundle(build_model("resnet50", **SMALL), tmp_path / "b", size=65, max_shots=2, max_classes=2,
                         check_episodes=1, progress=False).bundle


def test_bundle_without_engines_is_reported(bundle):
    from sccan.sdk.bundle import load_bundle
    from sccan.sdk.tensorrt_backend import tensorrt_unavailable

    why = tensorrt_unavailable(load_bundle(bundle))
    assert why is not None and "no fp16 TensorRT engines" in why


def test_preflight_names_both_sides_of_a_mismatch(bundle, tmp_path):
    from sccan.sdk import Segmenter
    from sccan.sdk.bundle import MANIFEST, load_bundle
    from sccan.sdk.errors import BundleMismatchError
    from sccan.sdk.tensorrt_backend import preflight

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["engines"] = {"fp16": {g: {"file": f"{g}.engine", "tensorrt": "0.0.0", "compute_capability": "1.0"}
                                    for g in ("backbone", "support_encoder", "query_decoder")}}
    write_manifest(copy, manifest)
    problems = preflight(load_bundle(copy, verify=False), "fp16", 0)
    assert any("TensorRT 0.0.0" in p and trt.__version__ in p for p in problems)
    assert any("compute capability 1.0" in p for p in problems)
    with pytest.raises(BundleMismatchError, match="TensorRT 0.0.0"):
        Segmenter(load_bundle(copy, verify=False), backend="tensorrt")


def _build_engines(bundle_path, precision: str) -> None:
    """Build the bundle's engines with TensorRT's ONNX parser (min 1, opt = max = the bundle's
    limits on every dynamic dimension) and list them in the manifest, as ``sccan build`` will."""
    from sccan.sdk.bundle import GRAPHS, sha256_file
    from sccan.sdk.info import cuda_devices

    manifest = json.loads((bundle_path / MANIFEST).read_text())
    limits = {"classes": manifest["max_classes"], "slots": manifest["max_shots"], "shots": manifest["max_shots"]}
    logger = trt.Logger(trt.Logger.WARNING)
    manifest.setdefault("engines", {})[precision] = {}
    for graph in GRAPHS:
        spec = manifest["graphs"][graph][precision]
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse_from_file(str(bundle_path / spec["file"])), \
            [parser.get_error(i).desc() for i in range(parser.num_errors)]
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for tensor in spec["inputs"]:
            low = [1 if isinstance(d, str) else d for d in tensor["shape"]]
            high = [limits.get(d, manifest["max_shots"]) if isinstance(d, str) else d for d in tensor["shape"]]
            profile.set_shape(tensor["name"], low, high, high)
        config.add_optimization_profile(profile)
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        assert serialized is not None, f"TensorRT could not build {graph}"
        name = f"{graph}.{precision}.engine"
        (bundle_path / name).write_bytes(bytes(serialized))
        manifest["engines"][precision][graph] = {"file": name, "tensorrt": trt.__version__,
                                                 "compute_capability": cuda_devices()[0][0]["compute_capability"]}
        manifest["files"][name] = sha256_file(bundle_path / name)
    write_manifest(bundle_path, manifest)


def _scene(seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 20:45] = 1
    return image, mask


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 0.02)])
def test_engines_match_onnxruntime(bundle, precision, tolerance):
    import numpy as np

    from sccan.sdk import Segmenter

    _build_engines(bundle, precision)
    reference = Segmenter(bundle, backend="onnxruntime", precision="fp32")
    engines = Segmenter(bundle, backend="tensorrt", precision=precision)
    from sccan.sdk.info import cuda_runtime_module

    # CUDA-graph capture needs cuda-python; with pycuda alone the plain path is what runs
    graphs = Segmenter(bundle, backend="tensorrt", precision=precision, cuda_graph=True) \
        if cuda_runtime_module() is not None else engines
    for seg in dict.fromkeys((reference, engines, graphs)):
        for i, name in enumerate("abc"):
            image, mask = _scene(i)
            seg.add_class(name, [image], [mask])
    for seed in (10, 11, 10):
        frame = _scene(seed)[0]
        want = reference.segment(frame)
        for seg in dict.fromkeys((engines, graphs)):
            got = seg.segment(frame)
            for name in "abc":
                assert np.abs(got.probabilities[name] - want.probabilities[name]).max() <= tolerance, (precision, name)
