"""The CUDA patch-alignment kernel (the TensorRT plugin's) against the model's PyTorch
``PatchAlignment`` on the same GPU, float32 and float16, at SCCAN's real sizes."""

from __future__ import annotations

import ctypes

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for PyTorch")]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(8, 81, 64, 256), (8, 64, 64, 256), (3, 25, 64, 128), (5, 300, 7, 33)])
def test_kernel_matches_the_model_on_the_gpu(shape, dtype):
    from native_lib import load, patch_align_inputs
    from sccan.train.model.transformer import PatchAlignment

    lib = load("sccan_patch_align_cuda")
    dt = getattr(torch, dtype)
    inputs = [x.to("cuda", dt) for x in patch_align_inputs(torch, *shape, seed=shape[1])]
    c, w, t, d = shape
    aligned = torch.empty_like(inputs[3])
    index = torch.full((c, w), -1, dtype=torch.int32, device="cuda")
    ptr = ctypes.c_void_p
    lib.sccan_patch_align_cuda.restype = ctypes.c_int32
    lib.sccan_patch_align_cuda.argtypes = [ptr] * 6 + [ctypes.c_int64] * 4 + [ctypes.c_int32, ptr]
    rc = lib.sccan_patch_align_cuda(*(ptr(x.data_ptr()) for x in inputs), ptr(aligned.data_ptr()),
                                    ptr(index.data_ptr()), c, w, t, d, int(dtype == "float16"),
                                    ptr(torch.cuda.current_stream().cuda_stream))
    torch.cuda.synchronize()
    assert rc == 0
    # Reference: the model's module in float64 on the values the kernel read.
    ref = [x.double() for x in inputs]
    module = PatchAlignment()
    *_, expected = module(*ref, ref[3])  # the node gathers one tensor; the model keys and values
    scores = module.scores(*ref[:3])
    got = index.long()
    assert ((got >= 0) & (got < w)).all()
    differ = got != expected
    if differ.any():
        gap = (scores.gather(1, expected[:, None]).squeeze(1) - scores.gather(1, got[:, None]).squeeze(1)).abs()
        assert gap[differ].max().item() <= 1e-5, "a decisive alignment index differs"
    # The aligned tokens are exactly the chosen windows' tokens.
    gathered = torch.gather(inputs[3], 1, got.reshape(c, w, 1, 1).expand(c, w, t, d))
    assert torch.equal(aligned, gathered)
    print(f"{dtype} {shape}: {int(differ.sum())} near-tie index differences of {c * w}")
