"""``tests/gpu`` only runs where TensorRT and a GPU exist, which CI never has: a NameError or a
stale call there would surface on the first GPU. Here the same file runs against the host stand-in
(``fake_tensorrt``): it proves the tests' own code and the build path they drive, not TensorRT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_gpu_backend_tests_run_against_the_stand_in(synthetic_export):
    """On the suite's shared export of the shipped synthetic model at 129 px, FP16 included (the GPU
    suite's own fixture exports the same model and configuration on a GPU machine)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               SCCAN_TEST_GPU_BUNDLE=str(synthetic_export))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "fake_tensorrt_plugin", "-p", "no:logging",
                          "-p", "no:cacheprovider", str(TESTS / "gpu" / "test_tensorrt_backend.py")],
                         capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=900)
    tail = run.stdout[-3000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert "4 passed" in run.stdout, tail
