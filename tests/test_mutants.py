"""Every planted mistake of ``tests/mutants.py`` is caught: the tests named for it fail with it
planted (each mutant in its own pytest process), and pass without it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[1]


def _pytest(tests: list[str], bundle: Path, mutant: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCCAN_TEST_SMALL_BUNDLE": str(bundle),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("SCCAN_MUTANT", None)
    if mutant is not None:
        env["SCCAN_MUTANT"] = mutant
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "mutants", "-p", "no:cacheprovider", "-q", "-x",
                           "--no-header", "-p", "no:logging", *tests], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _assert_killed(mutants: dict, bundle: Path) -> None:
    killers = sorted({t for m in mutants.values() for t in m.killers})
    control = _pytest(killers, bundle)
    assert control.returncode == 0, control.stdout[-3000:]  # the tests pass on the real code
    rows, survivors = [], []
    for name, mutant in mutants.items():
        start = time.perf_counter()
        run = _pytest(list(mutant.killers), bundle, name)
        # a test that fails, or errs in its fixture (the build's own gate catching the mistake)
        failed = [line.split(" ")[1] + (" (in its fixture)" if line.startswith("ERROR") else "")
                  for line in run.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        rows.append(f"{name:58s} {'killed' if run.returncode == 1 else 'SURVIVED'}  {time.perf_counter() - start:4.1f} s  "
                    f"{', '.join(f.split('::')[-1] for f in failed)}")
        if run.returncode != 1 or not failed:  # 1: tests failed (2-4: an error of the run itself)
            survivors.append((name, run.returncode, run.stdout[-2000:] + run.stderr[-2000:]))
    print("\n".join(["mutant | result | time | tests that failed", *rows]))
    assert not survivors, survivors
    print(f"killed {len(mutants)} of {len(mutants)}")


def test_sdk_mutants_fail_the_tests_named_for_them(small_export):
    _assert_killed({n: m for n, m in MUTANTS.items() if not m.slow}, small_export[1])


@pytest.mark.slow
def test_engine_mutants_fail_the_tests_named_for_them(small_export):
    _assert_killed({n: m for n, m in MUTANTS.items() if m.slow}, small_export[1])
