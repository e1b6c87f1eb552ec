"""``sccan triton``: a Triton model repository that serves a bundle through the Segmenter.

Layout (``REPO`` is what ``tritonserver --model-repository`` takes)::

    REPO/sccan/config.pbtxt       Python backend, instance groups, dynamic batching, parameters
    REPO/sccan/1/model.py         imports sccan.serve.triton_model.TritonPythonModel
    REPO/sccan/1/bundle/          a verified copy of the bundle
    REPO/sccan/supports/          registered classes, one support file each (unless --support-dir)

The repository is written to a temporary directory beside ``REPO`` and renamed into place, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sccan.sdk.bundle import load_bundle, readable_by_others
from sccan.sdk.errors import BadArgumentError

from .protocol import INPUTS, MODEL_NAME, OUTPUTS

BACKENDS = ("onnxruntime", "tensorrt")

MODEL_PY = '''"""Triton Python-backend entry point; the model is sccan.serve.triton_model (installed sccan)."""

from sccan.serve.triton_model import TritonPythonModel  # noqa: F401
'''


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def model_config(backend: str, instances: int, max_batch: int, support_dir: str, precision: str | None,
                 threads: int | None, queue_delay_us: int = 2000) -> str:
    """The ``config.pbtxt`` text."""
    inputs = ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: {_dims(d)}{"" if n == "COMMAND" else " optional: true"} }}'
                        for n, (t, d) in INPUTS.items())
    outputs = ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: {_dims(d)} }}' for n, (t, d) in OUTPUTS.items())
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"
    params = {"bundle": "bundle", "support_dir": support_dir, "backend": backend, "precision": precision or "",
              "threads": str(threads or "")}
    parameters = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    return f'''name: "{MODEL_NAME}"
backend: "python"
max_batch_size: {max_batch}
input [
{inputs}
]
output [
{outputs}
]
instance_group [ {{ kind: {kind} count: {instances} }} ]
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
parameters [
{parameters}
]
'''


def make_repository(bundle: str | os.PathLike, repo: str | os.PathLike, backend: str = "onnxruntime",
                    instances: int = 1, max_batch: int = 4, support_dir: str | os.PathLike | None = None,
                    precision: str | None = None, threads: int | None = None, force: bool = False) -> Path:
    """Write a Triton model repository serving ``bundle``; returns its path.

    Args:
        backend: the Segmenter's backend inside Triton: ONNX Runtime (CPU instances) or the bundle's
            TensorRT engines (GPU instances; build them first with ``sccan build``).
        instances: model instances (Triton runs their requests in parallel).
        max_batch: most frames of one size Triton's dynamic batcher hands to one execution.
        support_dir: where registered classes live (default ``REPO/sccan/supports``); put it on
            shared storage so every replica sees the same classes (stored as an absolute path).
    """
    if backend not in BACKENDS:
        raise BadArgumentError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if instances < 1 or max_batch < 1:
        raise BadArgumentError(f"--instances and --max-batch must be at least 1, got {instances} and {max_batch}")
    source = load_bundle(bundle)  # verified before anything is written
    if backend == "tensorrt" and not source.manifest.get("engines"):
        raise BadArgumentError(f"bundle {source.path} has no TensorRT engines: build them with `sccan build` on the "
                               "serving GPU, or use --backend onnxruntime")
    repo = Path(repo)
    if repo.exists() and not force:
        raise BadArgumentError(f"{repo} already exists; pass --force to replace it")
    support = "supports" if support_dir is None else str(Path(support_dir).resolve())
    repo.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=repo.parent, prefix=f".{repo.name}.tmp-"))
    readable_by_others(work, directory=True)
    try:
        model_dir = work / MODEL_NAME
        (model_dir / "1").mkdir(parents=True)
        shutil.copytree(source.path, model_dir / "1" / "bundle")
        (model_dir / "1" / "model.py").write_text(MODEL_PY)
        (model_dir / "config.pbtxt").write_text(model_config(backend, instances, max_batch, support, precision,
                                                             threads))
        if support_dir is None:
            (model_dir / "supports").mkdir()
        kept = None
        if repo.exists():
            old_supports = repo / MODEL_NAME / "supports"
            if support_dir is None and old_supports.is_dir():  # registered classes survive --force
                shutil.rmtree(model_dir / "supports")
                shutil.copytree(old_supports, model_dir / "supports")
            kept = repo.with_name(f".{repo.name}.old-{os.getpid()}")
            repo.rename(kept)
        work.rename(repo)
        if kept is not None:
            shutil.rmtree(kept)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return repo
