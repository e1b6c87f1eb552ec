"""A pytest plugin that installs the TensorRT / cuda-python stand-in before collection, so that
``tests/gpu`` can be dry-run on a CPU (``test_gpu_suite_dry_run``): its code paths, not a GPU's results."""

import pytest

from fake_tensorrt import FakeCudaRuntime, FakeTensorRT, install

_patch = pytest.MonkeyPatch()
_cuda = FakeCudaRuntime()
install(_patch, _cuda, FakeTensorRT(_cuda))
