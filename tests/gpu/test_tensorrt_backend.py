"""TensorRT backend checks that need TensorRT and an NVIDIA GPU (skipped with the reason elsewhere)."""

from __future__ import annotations

import json
import shutil

import pytest

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
    (copy / MANIFEST).write_text(json.dumps(manifest))
    problems = preflight(load_bundle(copy, verify=False), "fp16", 0)
    assert any("TensorRT 0.0.0" in p and trt.__version__ in p for p in problems)
    assert any("compute capability 1.0" in p for p in problems)
    with pytest.raises(BundleMismatchError, match="TensorRT 0.0.0"):
        Segmenter(load_bundle(copy, verify=False), backend="tensorrt")
