"""Training configuration: a YAML file with sections model, data, train, eval, output."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from sccan.sdk.errors import SCCANError

DEFAULTS: dict[str, Any] = {
    "model": {"backbone": "resnet50"},
    "backbone_weights": None,
    "init_checkpoint": None,
    "data": {"dataset": "synthetic", "size": 473, "shots": 1},
    "train": {"epochs": 200, "batch_size": 8, "lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4, "power": 0.9,
              "transformer_lr": 6e-5, "transformer_weight_decay": 0.01, "max_steps": None, "seed": 123,
              "amp": True, "log_every": 10, "workers": 0, "time_budget_s": None,
              "feature_cache": None, "negative_ratio": 0.0, "ce_weight": 0.0, "checkpoint_every": 100},
    "eval": {"episodes": 1000, "seed": 321, "every": 1},
    "output": "runs/sccan",
}


#: The configs shipped with the package (``sccan train --config synthetic_lite0`` finds them by name).
BUILTIN = Path(__file__).resolve().parent / "configs"


def builtin_configs() -> list[str]:
    """Names of the shipped configs (``paper/...`` for the paper's runs)."""
    return sorted([p.stem for p in BUILTIN.glob("*.yaml")] + [f"paper/{p.stem}" for p in BUILTIN.glob("paper/*.yaml")])


def resolve_config(name: str | Path) -> Path:
    """A config file path, or the shipped config of that name."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = BUILTIN / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config file {path} does not exist (shipped configs: {', '.join(builtin_configs()[:6])}, ...)")


class ConfigError(SCCANError):
    """A configuration file that cannot be used (the message names the key)."""


def merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"unknown config key '{where}{key}' (known: {sorted(base)})")
        if isinstance(base[key], dict) and key not in ("model",):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}{key}' must be a mapping")
            # data holds dataset-specific keys: allow any there
            out[key] = {**out[key], **value} if key == "data" else merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The defaults, then the YAML file, then ``overrides`` (same structure)."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = resolve_config(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections")
        config = merge(config, loaded)
    if overrides:
        config = merge(config, overrides)
    return config
