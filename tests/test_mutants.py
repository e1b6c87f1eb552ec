"""Every planted mistake of ``tests/mutants.py`` is caught: the tests named for it fail with it
planted (each mutant in its own process), and pass without it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mutants import MUTANTS


def _assert_killed(mutants: dict, bundles: tuple[Path, Path]) -> None:
    """The control run (no mutant: the killers pass) and one run per mutant, each in a fresh process
    forked from a server that has imported numpy, OpenCV, torch and ONNX Runtime once (a pytest
    process per mutant spent most of its time importing them), as many at once as the host has cores.
    The killers run on the parent's exports (the small decisive model's and the synthetic model's:
    read-only there too)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from mutants import PRELOAD, run_tests

    small, synthetic = bundles
    env = {"SCCAN_TEST_SMALL_BUNDLE": str(small), "SCCAN_TEST_SYNTHETIC_BUNDLE": str(synthetic)}
    killers = sorted({t for m in mutants.values() for t in m.killers})
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)

    def timed(future, started: float) -> tuple[tuple[int, str], float]:
        return future.result(timeout=600), time.perf_counter() - started

    with ProcessPoolExecutor(max_workers=max(2, os.cpu_count() or 2), mp_context=context,
                             max_tasks_per_child=1) as pool:  # a fresh process per run: a mutant never leaks
        started = time.perf_counter()
        control = pool.submit(run_tests, killers, env, None)
        runs = {name: pool.submit(run_tests, list(mutant.killers), env, name) for name, mutant in mutants.items()}
        (code, output), _ = timed(control, started)
        assert code == 0, output[-3000:]  # the tests pass on the real code
        rows, survivors = [], []
        for name, future in runs.items():
            (code, output), seconds = timed(future, started)
            # a test that fails, or errs in its fixture (the build's own gate catching the mistake)
            failed = [line.split(" ")[1] + (" (in its fixture)" if line.startswith("ERROR") else "")
                      for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
            rows.append(f"{name:58s} {'killed' if code == 1 else 'SURVIVED'}  done at {seconds:4.1f} s  "
                        f"{', '.join(f.split('::')[-1] for f in failed)}")
            if code != 1 or not failed:  # 1: tests failed (2-4: an error of the run itself)
                survivors.append((name, code, output[-4000:]))
    print("\n".join(["mutant | result | time | tests that failed", *rows]))
    assert not survivors, survivors
    print(f"killed {len(mutants)} of {len(mutants)}")


def test_mutants_fail_the_tests_named_for_them(small_export, synthetic_export):
    """All of them, in the default suite: the killers run on the parent's exports (no export of their own)."""
    _assert_killed(MUTANTS, (small_export[1], synthetic_export))
