"""Planted mistakes ("mutants") that the default suite must catch, and the pytest plugin that plants one.

``SCCAN_MUTANT=<name> python -m pytest -p mutants TESTS`` imports the mutant's module with its
source text edited (each edit must match exactly once, or the run stops with a usage error), so
the tests run against the broken code in that process only; nothing on disk changes.
``tests/test_mutants.py`` runs every mutant against the tests named for it and asserts they fail.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Mutant:
    """One planted mistake: ``edits`` (old text, new text) in ``module``'s source; ``killers``, the
    test node ids (relative to the repository) that must fail on it."""

    module: str
    edits: tuple[tuple[str, str], ...]
    killers: tuple[str, ...]


SDK = "tests/test_sdk.py::"
MUTANTS: dict[str, Mutant] = {
    "mean/std in reversed channel order": Mutant(
        "sccan.sdk.preprocess",
        (("mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)",
          "mean32, std32 = np.asarray(mean[::-1], np.float32), np.asarray(std[::-1], np.float32)"),),
        (SDK + "test_probabilities_match_pytorch",)),
    "RGB read as BGR": Mutant(
        "sccan.sdk.preprocess",
        (("return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)", "return image.copy()"),
         ("        return image[..., ::-1]\n    raise ValueError", "        return image\n    raise ValueError")),
        (SDK + "test_probabilities_match_pytorch",)),
    "overlay returns the frame": Mutant(
        "sccan.sdk.segmenter",
        (("for i, name in enumerate(self.classes):\n            mask = self.label_map == i + 1",
          "for i, name in enumerate(()):\n            mask = self.label_map == i + 1"),),
        (SDK + "test_multi_class_label_map_and_overlay",)),
    "label map without background": Mutant(
        "sccan.sdk.segmenter",
        (("label_map *= masks.any(axis=0)", "label_map *= 1"),),
        (SDK + "test_multi_class_label_map_and_overlay",)),
    "support cache not invalidated on re-registration": Mutant(
        "sccan.sdk.segmenter",
        (("            self._parts[name] = part\n        self._forget_batches({name})",
          "            self._parts[name] = part"),),
        (SDK + "test_replacing_a_class_replaces_its_cached_features",)),
    "segment_batch returns the first frame's result for all": Mutant(
        "sccan.sdk.segmenter",
        (("            results += part\n", "            results += [part[0]] * len(part)\n"),),
        (SDK + "test_a_batch_of_frames_equals_frame_by_frame",)),
    "support masks shifted (the model must care)": Mutant(
        "sccan.sdk.segmenter",
        (("labels.append((label == 1).astype(np.float32))",
          "labels.append(np.roll((label == 1).astype(np.float32), label.shape[0] // 2, axis=(0, 1)))"),),
        (SDK + "test_probabilities_match_pytorch",)),
    "classes' supports shuffled within a decode": Mutant(
        "sccan.sdk.segmenter",
        (("batches = [self._support_batch(tuple(names[i:i + self.max_classes]))",
          "batches = [self._support_batch(tuple(names[i:i + self.max_classes][::-1]))"),),
        (SDK + "test_a_class_decoded_in_the_second_chunk_equals_a_single_class_run",
         SDK + "test_multi_class_label_map_and_overlay")),
    "colour order argument ignored": Mutant(
        "sccan.sdk.preprocess",
        (("    if color == \"rgb\":\n        return image\n    if color == \"bgr\":",
          "    if color == \"never\":\n        return image\n    if color in (\"bgr\", \"rgb\"):"),),
        (SDK + "test_rgb_colour_order_is_honoured_for_supports_and_frames",)),
    "presence always 1 (an absent object still gets a mask)": Mutant(
        "sccan.sdk.presence",
        (("def presence_scores(", "def _presence_scores("),
         ("\n__all__", "\ndef presence_scores(logits, height, width):\n"
                       "    return np.ones(len(logits), np.float32)\n\n\n__all__")),
        ("tests/test_objects_apart.py::test_absent_class_gets_an_empty_mask_and_no_label_map_pixels",)),
    "a bad frame fails its whole server batch": Mutant(
        "sccan.serve.triton_model",
        (("            if len(items) == 1:\n                raise\n", "            raise\n"),),
        ("tests/test_triton_model.py::test_one_bad_frame_in_a_batch_fails_alone",)),
    "FP16 engine's logits replaced by a constant": Mutant(
        "sccan.sdk.tensorrt_backend",
        (("results.update({name: view.copy() for name, view in staged.items()})",
          "results.update({name: view.copy() if self.precision != \"fp16\" or name != \"logits\" else "
          "np.full_like(view, view.mean()) for name, view in staged.items()})"),),
        ("tests/test_tensorrt_host.py::test_fp16_engines_match_the_fp32_graphs_within_the_gate",)),
    "the plugin library never loaded": Mutant(
        "sccan.sdk.tensorrt_backend",
        (("                load_plugin_library(trt, bundle.path / plugin)\n", "                pass\n"),),
        ("tests/test_plugin_fallback.py::test_auto_falls_back_to_the_plugin_when_the_parser_rejects_the_decoder",)),
    "FP16 never picked on ONNX Runtime's CUDA provider": Mutant(
        "sccan.sdk.segmenter",
        (("if precision is None and ort_backend.providers[0] == \"CUDAExecutionProvider\" and",
          "if False and ort_backend.providers[0] == \"CUDAExecutionProvider\" and"),),
        ("tests/test_tensorrt_host.py::test_onnxruntime_picks_the_fp16_graphs_on_its_cuda_provider",)),
}


class _Loader(importlib.abc.Loader):
    def __init__(self, origin: str, edits: tuple[tuple[str, str], ...]):
        self.origin, self.edits = origin, edits

    def create_module(self, spec):  # the default module object
        return None

    def exec_module(self, module) -> None:
        source = Path(self.origin).read_text()
        for old, new in self.edits:
            if source.count(old) != 1:
                raise pytest.UsageError(f"mutant edit found {source.count(old)} times in {self.origin}: {old!r}")
            source = source.replace(old, new)
        exec(compile(source, self.origin, "exec"), module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, mutant: Mutant):
        self.mutant = mutant

    def find_spec(self, fullname, path, target=None):
        if fullname != self.mutant.module:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return importlib.util.spec_from_file_location(fullname, spec.origin,
                                                              loader=_Loader(spec.origin, self.mutant.edits))
        return None


#: What the processes that run the mutants import once, before they fork (none of them a module a
#: mutant edits: each child imports ``sccan`` afresh, through the finder).
PRELOAD = ["numpy", "cv2", "torch", "onnxruntime", "pytest"]


def run_tests(tests: list[str], env: dict[str, str], mutant: str | None) -> tuple[int, str]:
    """Run ``tests`` with ``mutant`` planted (None: none), in this process, and return pytest's exit
    code and its output. Called in a fresh child of a fork server that has imported :data:`PRELOAD`
    (``tests/test_mutants.py``), so a run costs the tests, not the imports; the child ends after it."""
    import contextlib
    import io

    root = Path(__file__).resolve().parents[1]
    os.environ.update(env)
    os.environ.pop("SCCAN_MUTANT", None)
    if mutant is not None:
        os.environ["SCCAN_MUTANT"] = mutant
    os.chdir(root)
    sys.path.insert(0, str(root / "tests"))
    if any(m == "sccan" or m.startswith("sccan.") for m in sys.modules):
        raise RuntimeError("sccan was imported before the mutant could be planted")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = pytest.main(["-p", "mutants", "-p", "no:cacheprovider", "-q", "-x", "--no-header", "-p", "no:logging",
                            *tests])
    return int(code), out.getvalue()


def pytest_configure(config) -> None:
    name = os.environ.get("SCCAN_MUTANT")
    if not name:
        return
    if name not in MUTANTS:
        raise pytest.UsageError(f"unknown mutant {name!r}; known: {sorted(MUTANTS)}")
    mutant = MUTANTS[name]
    if mutant.module in sys.modules:
        raise pytest.UsageError(f"{mutant.module} was imported before the mutant could be planted")
    sys.meta_path.insert(0, _Finder(mutant))
