"""Locating the native libraries that CMake builds (``cmake -S . -B build``), for the tests.

``SCCAN_NATIVE_BUILD`` names the build folder (default ``build/`` at the repository root). In CI
(``CI=true``) a missing library is an error, not a skip: ``.ci/run`` builds them first.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build_dir() -> Path:
    return Path(os.environ.get("SCCAN_NATIVE_BUILD", ROOT / "build"))


def load(name: str) -> ctypes.CDLL:
    """Load ``lib<name>.so`` from the build folder, or skip (fail in CI) when it was not built."""
    path = build_dir() / f"lib{name}.so"
    if not path.is_file():
        message = f"{path} not built: run `cmake -S . -B build && cmake --build build` (or set SCCAN_NATIVE_BUILD)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return ctypes.CDLL(str(path))


def patch_align_inputs(torch, classes: int, windows: int, tokens: int, channels: int, seed: int = 0):
    """Random patch-alignment inputs with structure: half the query windows copy a support window's
    prototype direction (clear winners), two support windows are equal (an exact tie), and the last
    class has no foreground (every score 0: index 0)."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(classes, windows, tokens, channels, generator=g)
    prototypes = torch.randn(classes, windows, channels, generator=g)
    has_fg = (torch.rand(classes, windows, generator=g) < 0.7).float()
    support_tokens = torch.randn(classes, windows, tokens, channels, generator=g)
    if windows > 2:
        prototypes[:, 1] = prototypes[:, 0]
        has_fg[:, :2] = 1.0
    for b in range(0, windows, 2):
        query[:, b] = 3.0 * prototypes[:, (5 * b + 1) % windows, None, :] + 0.1 * query[:, b]
    if classes > 1:
        has_fg[-1] = 0.0
    return query, prototypes, has_fg, support_tokens
