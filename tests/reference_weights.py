"""The weights recipe of ``shared/reference/README.md`` (parity fixture of the published network)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"


def official_keys(backbone: str = "resnet50") -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a released checkpoint, in file order."""
    tag = {"resnet50": "r50", "resnet101": "r101"}[backbone]
    rows = []
    for line in (REFERENCE / f"official_keys_{tag}.tsv").read_text().splitlines():
        if line.strip():
            name, shape, _dtype = line.split("\t")
            rows.append((name, tuple(ast.literal_eval(shape))))
    return rows


def recipe_state_dict(backbone: str = "resnet50") -> dict[str, torch.Tensor]:
    """Tensor i from ``torch.Generator().manual_seed(i)`` by the README's table."""
    state = {}
    for i, (name, shape) in enumerate(official_keys(backbone)):
        g = torch.Generator().manual_seed(i)
        if name.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("running_mean") or (len(shape) == 1 and name.endswith("bias")):
            t = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:
            t = torch.rand(shape, generator=g) + 0.5
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        state[name] = t
    return state
