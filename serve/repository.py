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
from typing import Any

from sccan.sdk.bundle import GRAPHS, load_bundle, readable_by_others
from sccan.sdk.errors import BadArgumentError

from .protocol import INPUTS, MODEL_NAME, OUTPUTS

#: "onnxruntime": the Python model runs the Segmenter on ONNX Runtime. "tensorrt": the per-frame
#: engines are ``tensorrt_plan`` models (GPU instances) that the Python model calls through BLS.
#: "onnxruntime-bls": the same BLS layout with the graphs as Python-backend ONNX Runtime models
#: (runs on a CPU: how the BLS path is tested here).
BACKENDS = ("onnxruntime", "tensorrt", "onnxruntime-bls")
GRAPH_MODEL_PY = '''"""Triton Python-backend model running one of the bundle's ONNX graphs (the BLS layout on a CPU)."""

from sccan.serve.bls import GraphModel as TritonPythonModel  # noqa: F401
'''
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                 "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}

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
    kind = "KIND_CPU"  # the Python model; with "tensorrt" the engines' models hold the GPU instances
    params = {"bundle": "bundle", "support_dir": support_dir, "backend": "onnxruntime" if backend == "onnxruntime"
              else "triton-bls", "precision": precision or "",
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


def graph_model_config(graph: str, spec: dict, backend: str, instances: int, params: dict[str, str]) -> str:
    """``config.pbtxt`` of one graph's model in the BLS layout (no Triton batching: the graphs'
    dynamic dimensions are explicit)."""
    def tensors(items: list[dict]) -> str:
        return ",\n".join(f'  {{ name: "{t["name"]}" data_type: {_TRITON_TYPES[t["dtype"]]} '
                           f'dims: {_dims([d if isinstance(d, int) else -1 for d in t["shape"]])} }}' for t in items)

    head = 'platform: "tensorrt_plan"' if backend == "tensorrt" else 'backend: "python"'
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"
    parameters = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    return (f'name: "sccan_{graph}"\n{head}\nmax_batch_size: 0\ninput [\n{tensors(spec["inputs"])}\n]\n'
            f'output [\n{tensors(spec["outputs"])}\n]\ninstance_group [ {{ kind: {kind} count: {instances} }} ]\n'
            + (f"parameters [\n{parameters}\n]\n" if parameters else ""))


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
    if backend == "tensorrt":
        precision = precision or "fp16"
        if not source.manifest.get("engines", {}).get(precision):
            raise BadArgumentError(f"bundle {source.path} has no {precision} TensorRT engines: build them with "
                                   "`sccan build` on the serving GPU model, or use --backend onnxruntime")
    elif backend == "onnxruntime-bls":
        precision = precision or "fp32"
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
        if backend != "onnxruntime":
            _graph_models(work, source, backend, precision, instances, threads)
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


def _graph_models(work: Path, bundle: Any, backend: str, precision: str, instances: int,
                  threads: int | None) -> None:
    """The BLS layout's ``sccan_<graph>`` models: engines as ``tensorrt_plan``, or ONNX graphs in
    Python-backend ONNX Runtime models."""
    manifest = bundle.manifest
    for graph in GRAPHS:
        spec = manifest["graphs"][graph][precision]
        model = work / f"sccan_{graph}"
        (model / "1").mkdir(parents=True)
        if backend == "tensorrt":
            engine = manifest["engines"][precision][graph]
            shutil.copyfile(bundle.path / engine["file"], model / "1" / "model.plan")
            params: dict[str, str] = {}  # (a plugin decoder has the standard decoder's inputs and outputs)
        else:
            (model / "1" / "model.py").write_text(GRAPH_MODEL_PY)
            plugin = manifest.get("patch_align") == "plugin" and graph == "query_decoder"
            params = {"graph": f"{MODEL_NAME}/1/bundle/{spec['file']}", "threads": str(threads or ""),
                      "plugin": "1" if plugin else "0"}
        (model / "config.pbtxt").write_text(graph_model_config(graph, spec, backend, instances, params))
