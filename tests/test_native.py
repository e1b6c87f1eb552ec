"""The C++ CPU reference of patch alignment (the oracle of the CUDA kernel's tests, and the
implementation behind the ONNX Runtime op) against the model's own PyTorch ``PatchAlignment``."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from native_lib import load, patch_align_inputs
from sccan.train.model.transformer import PatchAlignment


def _cpu_align(lib, query, prototypes, has_fg, tokens, eps=1e-7):
    c, w, t, d = tokens.shape
    arrays = [np.ascontiguousarray(x.numpy(), dtype=np.float32) for x in (query, prototypes, has_fg, tokens)]
    aligned = np.empty((c, w, t, d), np.float32)
    index = np.full((c, w), -1, np.int32)
    ptr = ctypes.c_void_p
    lib.sccan_patch_align_cpu.restype = ctypes.c_int32
    lib.sccan_patch_align_cpu.argtypes = [ptr] * 6 + [ctypes.c_int64] * 4 + [ctypes.c_float]
    rc = lib.sccan_patch_align_cpu(*(ptr(a.ctypes.data) for a in arrays), ptr(aligned.ctypes.data),
                                   ptr(index.ctypes.data), c, w, t, d, eps)
    return rc, aligned, index


@pytest.mark.parametrize("shape", [(3, 16, 16, 32), (2, 81, 64, 256), (1, 25, 64, 128), (4, 9, 1, 5)])
def test_cpu_reference_matches_the_model(shape):
    lib = load("sccan_patch_align_cpu")
    inputs = patch_align_inputs(torch, *shape, seed=sum(shape))
    rc, aligned, index = _cpu_align(lib, *inputs)
    assert rc == 0
    module = PatchAlignment()
    # The node gathers one tensor of windows; the model gathers keys and values: the same windows.
    expected_aligned, _, expected_index = module(*inputs, inputs[3])
    scores = module.scores(inputs[0], inputs[1], inputs[2]).double()  # C x Ws x Wq
    got = torch.from_numpy(index).long()
    best = scores.gather(1, expected_index[:, None, :]).squeeze(1)
    chosen = scores.gather(1, got[:, None, :]).squeeze(1)
    # Where the two differ, the reference's scores of both windows must be a near-tie (1e-5).
    differ = got != expected_index
    assert (best[differ] - chosen[differ]).abs().max().item() <= 1e-5 if differ.any() else True
    assert int(differ.sum()) <= max(1, int(0.02 * differ.numel()))
    assert (got[-1] == 0).all() if shape[0] > 1 else True  # no foreground: the first window
    same = ~differ
    np.testing.assert_array_equal(aligned[same.numpy()], expected_aligned[same].numpy())


def test_cpu_reference_takes_the_first_index_on_ties_and_refuses_bad_shapes():
    lib = load("sccan_patch_align_cpu")
    query, prototypes, has_fg, tokens = patch_align_inputs(torch, 1, 6, 4, 8)
    prototypes[0, :] = prototypes[0, 3]  # every support window the same: all tie
    has_fg[:] = 1.0
    rc, _, index = _cpu_align(lib, query, prototypes, has_fg, tokens)
    assert rc == 0 and (index == 0).all()
    has_fg[0, :3] = 0.0  # the first three lose: the first foreground window wins every tie
    rc, _, index = _cpu_align(lib, query, prototypes, has_fg, tokens)
    assert (index == 3).all()
    rc, _, index = _cpu_align(lib, *patch_align_inputs(torch, 1, 2, 2, 9000))
    assert rc == 1 and (index == -1).all()
