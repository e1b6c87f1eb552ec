"""Every planted mistake of ``tests/mutants.py`` is caught: the tests named for it fail with it
planted (each mutant in its own pytest process), and pass without it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[1]


def _pytest(tests: list[str], bundles: tuple[Path, Path], mutant: str | None = None
            ) -> subprocess.CompletedProcess:
    """The ``tests`` in a pytest process of their own, on the parent's exports (the small decisive
    model's and the synthetic model's: read-only there too)."""
    small, synthetic = bundles
    env = {**os.environ, "SCCAN_TEST_SMALL_BUNDLE": str(small), "SCCAN_TEST_SYNTHETIC_BUNDLE": str(synthetic),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("SCCAN_MUTANT", None)
    if mutant is not None:
        env["SCCAN_MUTANT"] = mutant
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "mutants", "-p", "no:cacheprovider", "-q", "-x",
                           "--no-header", "-p", "no:logging", *tests], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _assert_killed(mutants: dict, bundle: tuple[Path, Path]) -> None:
    """The control run (no mutant: the killers pass) and one run per mutant, as many at once as
    the host has cores (each is a pytest process that mostly imports and waits)."""
    from concurrent.futures import ThreadPoolExecutor

    killers = sorted({t for m in mutants.values() for t in m.killers})

    def timed(name: str | None, tests: list[str]) -> tuple[subprocess.CompletedProcess, float]:
        start = time.perf_counter()
        return _pytest(tests, bundle, name), time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        control = pool.submit(timed, None, killers)
        runs = {name: pool.submit(timed, name, list(mutant.killers)) for name, mutant in mutants.items()}
        control_run = control.result()[0]
        assert control_run.returncode == 0, control_run.stdout[-3000:]  # the tests pass on the real code
        rows, survivors = [], []
        for name, future in runs.items():
            run, seconds = future.result()
            # a test that fails, or errs in its fixture (the build's own gate catching the mistake)
            failed = [line.split(" ")[1] + (" (in its fixture)" if line.startswith("ERROR") else "")
                      for line in run.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
            rows.append(f"{name:58s} {'killed' if run.returncode == 1 else 'SURVIVED'}  {seconds:4.1f} s  "
                        f"{', '.join(f.split('::')[-1] for f in failed)}")
            if run.returncode != 1 or not failed:  # 1: tests failed (2-4: an error of the run itself)
                survivors.append((name, run.returncode, run.stdout[-2000:] + run.stderr[-2000:]))
    print("\n".join(["mutant | result | time | tests that failed", *rows]))
    assert not survivors, survivors
    print(f"killed {len(mutants)} of {len(mutants)}")


def test_mutants_fail_the_tests_named_for_them(small_export, synthetic_export):
    """All of them, in the default suite: the killers run on the parent's exports (no export of their own)."""
    _assert_killed(MUTANTS, (small_export[1], synthetic_export))
