"""``sccan bench``: what a frame costs through the SDK, against the uncached reference, in one run.

For each shot count, class count and frame size asked for: register the classes (timed), warm up,
then segment ``frames`` frames and report per stage (preprocess, backbone, decode, postprocess,
total) the median, p90 and p99 in milliseconds and the frames per second. Beside them, measured in
the same run on the same machine (these machines are shared and noisy, so only ratios within one
run mean anything):

* the ceiling: this machine's FP32 matrix-multiply rate (one ONNX Runtime MatMul, 1024 x 1024, same
  threads), and the per-frame path's achieved GFLOP/s from the manifest's operation counts;
* the baseline: the PyTorch model's full eager forward with the support recomputed every frame (as
  the authors' code runs), same input, same thread count, where torch and ``sccan.train`` are
  installed (plugged in through the ``sccan.bench_baselines`` entry point, so this module never
  imports torch); its forwards run between the SDK's timed frames, spread evenly, so that the
  machine's speed drifting during a run moves both sides of the ratio alike;
* peak resident memory; with ``soak``, N frames with classes added and removed along the way and the
  growth of resident memory after warm-up.

Output: a table on the terminal, ``bench.json`` and PNG charts (latency against shots, classes and
frame size, cached against the baseline).
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .bundle import write_json_atomic
from .errors import BadArgumentError
from .segmenter import BACKENDS, Segmenter

STAGES = ("preprocess", "backbone", "decode", "postprocess", "total")
#: Baseline factories: ``make(bundle_path, threads) -> run(frame_bgr, supports, masks) -> None``.
BASELINE_GROUP = "sccan.bench_baselines"


def decoder_gflops(cost: dict[str, Any], shots: int) -> float:
    """The query decoder's GFLOPs per class at ``shots`` slots, from the manifest's counts at 1 and
    at the export's maximum slots (linear in the slots: the prior is computed per slot). Older
    manifests give only the maximum, an upper bound."""
    full = float(cost["query_decoder_per_class"])
    if "query_decoder_per_class_1_shot" not in cost:
        return full
    one, slots = float(cost["query_decoder_per_class_1_shot"]), int(cost["query_decoder_slots"])
    return one if slots <= 1 else one + (full - one) * (shots - 1) / (slots - 1)


def parse_list(text: str, what: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4] (positive integers), or :class:`BadArgumentError`."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BadArgumentError(f"{what} takes positive integers separated by commas, got {text!r}")
    return values


def parse_frames(text: str) -> list[tuple[int, int]]:
    """``"640x480,1920x1080"`` -> [(480, 640), (1080, 1920)] as (height, width)."""
    sizes = []
    for item in text.split(","):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise BadArgumentError(f"--frame takes WIDTHxHEIGHT sizes separated by commas, got {item!r}") from None
        if w < 1 or h < 1:
            raise BadArgumentError(f"--frame sizes must be positive, got {item!r}")
        sizes.append((h, w))
    return sizes


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90 and p99 in milliseconds."""
    ms = np.asarray(seconds, np.float64) * 1000.0
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """This process's resident set size now (MB), from /proc where it exists."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def matmul_gflops(seconds: float = 1.0, n: int = 1024, threads: int | None = None) -> tuple[float, str]:
    """This machine's FP32 matrix-multiply rate, the ceiling for the graphs' rate: one ONNX Runtime
    MatMul (the kernels the graphs run, same thread count) when the ``onnx`` package is here to
    build it, else numpy's BLAS. Returns (GFLOP/s, what measured it)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = min(model.ir_version, 10)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        run, what = (lambda: session.run(None, {"a": a, "b": b})), f"ONNX Runtime MatMul {n}x{n}"
    except ImportError:
        run, what = (lambda: a @ b), f"numpy matmul {n}x{n}"
    run()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        count += 1
    return 2.0 * n ** 3 * count / (time.perf_counter() - start) / 1e9, what


def synthetic_scene(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured BGR frame with an elliptical object of its own colour, and the object's mask."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    frame = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((height, width), np.uint8)
    center = (int(width * rng.uniform(0.35, 0.65)), int(height * rng.uniform(0.35, 0.65)))
    axes = (max(2, int(width * rng.uniform(0.12, 0.25))), max(2, int(height * rng.uniform(0.12, 0.25))))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 255, -1)
    frame[mask > 0] = (frame[mask > 0] // 3 + np.array(rng.integers(80, 170, 3), np.uint8)).astype(np.uint8)
    return frame, mask


@dataclass
class Case:
    """One measured configuration."""

    shots: int
    classes: int
    frame: tuple[int, int]  # height, width
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    fps: float = 0.0
    register_ms_per_class: float = 0.0
    gflops_per_frame: float | None = None
    achieved_gflops: float | None = None
    #: the decoder alone: its GFLOPs (classes x per class at these shots) over its median time
    decoder_gflops: float | None = None
    baseline: dict[str, float] | None = None
    ratio_to_baseline: float | None = None
    #: TensorRT only: GPU time per stage from CUDA events (copies excluded), and device memory in use
    device_stages: dict[str, dict[str, float]] | None = None
    device_memory_mb: float | None = None
    #: track mode (--memory): the frame's total with remember=True, timed alternately with the plain
    #: frames of the same case, and its mean over the plain frames' mean
    memory_total: dict[str, float] | None = None
    memory_ratio: float | None = None

    @property
    def label(self) -> str:
        return f"{self.shots} shot, {self.classes} class, {self.frame[1]}x{self.frame[0]}"


@dataclass
class BenchResult:
    bundle: str
    backend: str
    precision: str
    threads: int | None
    frames: int
    matmul_gflops: float
    cases: list[Case]
    ceiling_note: str = ""
    peak_rss_mb: float = 0.0
    baseline_note: str = ""
    soak: dict[str, Any] | None = None
    gpu: str | None = None  # the GPU's name, on the TensorRT backend
    memory: int = 0  # track mode's slots (--memory), 0 when not measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        head = (f"{'case':<34} {'total ms':>9} {'p90':>7} {'p99':>7} {'FPS':>6} {'backbone':>9} {'decode':>7} "
                f"{'post':>6} {'GFLOP/s':>8} {'baseline ms':>11} {'ratio':>6}")
        lines = [head, "-" * len(head)]
        def cell(value: float | None, width: int, digits: int = 1) -> str:
            return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"

        for c in self.cases:
            s = c.stages
            lines.append(" ".join([
                f"{c.label:<34}", cell(s["total"]["median_ms"], 9), cell(s["total"]["p90_ms"], 7),
                cell(s["total"]["p99_ms"], 7), cell(c.fps, 6), cell(s["backbone"]["median_ms"], 9),
                cell(s["decode"]["median_ms"], 7), cell(s["postprocess"]["median_ms"], 6), cell(c.achieved_gflops, 8),
                cell(c.baseline["median_ms"] if c.baseline else None, 11), cell(c.ratio_to_baseline, 6, 3)]))
        for c in self.cases:
            if c.device_stages:
                lines.append(f"{c.label}: GPU (CUDA events) backbone {c.device_stages['backbone']['median_ms']:.2f} ms, "
                             f"decode {c.device_stages['decode']['median_ms']:.2f} ms; device memory in use "
                             f"{c.device_memory_mb:.0f} MiB")
        for c in self.cases:
            if c.memory_total is not None:
                lines.append(f"{c.label}: track mode (remember=True, memory {self.memory}) median "
                             f"{c.memory_total['median_ms']:.1f} ms a frame; mean {c.memory_ratio:.3f} x the frame "
                             "without it (same run, alternating)")
        for c in self.cases:
            if c.decoder_gflops is not None:
                lines.append(f"{c.label}: decoder {c.decoder_gflops:.0f} GFLOP/s "
                             f"({c.decoder_gflops / self.matmul_gflops:.2f} x the FP32 matmul ceiling)")
        lines.append(f"ceiling: FP32 matmul {self.matmul_gflops:.1f} GFLOP/s on this machine ({self.ceiling_note}); "
                     f"peak RSS {self.peak_rss_mb:.0f} MB; backend {self.backend} {self.precision}"
                     + (f", {self.threads} threads" if self.threads else "") + (f" on {self.gpu}" if self.gpu else ""))
        if self.baseline_note:
            lines.append(f"baseline: {self.baseline_note}")
        if self.soak:
            lines.append(f"soak: {self.soak['frames']} frames, RSS after the {self.soak['warmup_frames']}-frame warm-up "
                         f"{self.soak['rss_after_warmup_mb']:.0f} -> "
                         f"{self.soak['rss_end_mb']:.0f} MB ({100 * self.soak['growth']:+.2f}%), "
                         f"{self.soak['class_changes']} class changes, " + _soak_verdict(self.soak))
        return "\n".join(lines)


def load_baseline(bundle: Path, threads: int | None) -> tuple[Callable | None, str]:
    """The uncached reference runner, from the ``sccan.bench_baselines`` entry point, or (None, why)."""
    for ep in entry_points(group=BASELINE_GROUP):
        try:
            make = ep.load()
        except ImportError as exc:
            return None, f"not measured: {exc} (install torch and sccan[train])"
        return make(bundle, threads)
    return None, "not measured: no baseline is installed (sccan[train,export])"


DEVICE_STAGES = {"backbone": ("backbone",), "decode": ("query_decoder",)}


def _time_frames(seg: Segmenter, frame: np.ndarray, names: list[str], frames: int, warmup: int, bar: tqdm,
                 between: Callable[[], None] | None = None, runs_between: int = 0,
                 remembered: list[float] | None = None
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Host seconds per stage and frame; with a TensorRT backend also GPU seconds per stage
    (CUDA events around each engine's execution). ``between`` (the baseline) is called
    ``runs_between`` times spread evenly among the timed frames, so that the machine's speed
    drifting during the run moves both alike."""
    device = getattr(seg.backend, "device_timing", None) is not None
    if device:
        seg.backend.device_timing = True
    for _ in range(warmup):
        seg.segment(frame, classes=names)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    gpu: dict[str, list[float]] = {s: [] for s in DEVICE_STAGES} if device else {}
    if device:
        seg.backend.take_device_ms()
    # how many runs of ``between`` follow each timed frame: spread evenly, the last after the last frame
    schedule = Counter(max(0, (r + 1) * frames // runs_between - 1) for r in range(runs_between)) if between else {}
    for i in range(frames):
        timings = seg.segment(frame, classes=names).timings
        for s in STAGES:
            times[s].append(timings[s])
        if device:
            ms = seg.backend.take_device_ms()
            for stage, graphs in DEVICE_STAGES.items():
                gpu[stage].append(sum(ms.get(g, 0.0) for g in graphs) / 1000.0)
        bar.update()
        for _ in range(schedule.get(i, 0)):
            between()
        if remembered is not None:  # track mode: a remembering frame after each plain one
            remembered.append(seg.segment(frame, classes=names, remember=True).timings["total"])
    if device:
        seg.backend.device_timing = False
    return times, gpu


def run_benchmark(bundle: str | os.PathLike, backend: str = "auto", precision: str | None = None,
                  shots: Sequence[int] = (1,), classes: Sequence[int] = (1,),
                  frames_sizes: Sequence[tuple[int, int]] = ((480, 640),), frames: int = 20, warmup: int = 3,
                  threads: int | None = None, baseline: bool = True, soak: int = 0,
                  progress: bool = True, memory: int = 0) -> BenchResult:
    """Measure the SDK on ``bundle``; see the module docstring. ``memory``: also time track mode
    (frames that remember, alternating with plain ones; every frame confident enough to enter,
    the worst case) and run the soak with it."""
    if frames < 1 or warmup < 0 or soak < 0:
        raise BadArgumentError("frames must be at least 1, warmup and soak at least 0")
    seg = Segmenter(bundle, backend=backend, precision=precision, threads=threads, memory=memory,
                    memory_confidence=0.0)
    if memory and max(shots) + memory > seg.max_shots:
        raise BadArgumentError(f"--shots {max(shots)} and --memory {memory} exceed the bundle's {seg.max_shots} shot slots")
    if max(shots) > seg.max_shots:
        raise BadArgumentError(f"--shots {max(shots)} exceeds the bundle's maximum of {seg.max_shots}")
    cost = seg.bundle.manifest.get("cost_gflops", {})
    ceiling, ceiling_note = matmul_gflops(threads=threads)
    run_baseline, note = load_baseline(seg.bundle.path, threads) if baseline else (None, "not measured (--no-baseline)")
    cases = [Case(k, c, f) for k in shots for c in classes for f in frames_sizes]
    total = len(cases) * frames + soak + (len(shots) * len(frames_sizes) * max(3, frames // 4) if run_baseline else 0)
    bar = tqdm(total=total, desc="bench", unit="frame", disable=not progress)
    baseline_cache: dict[tuple[int, tuple[int, int]], dict[str, float]] = {}
    for case in cases:
        bar.set_description(f"bench {case.label}")
        h, w = case.frame
        frame, _ = synthetic_scene(0, h, w)
        for name in seg.classes:
            seg.remove_class(name)
        names = [f"class{i}" for i in range(case.classes)]
        start = time.perf_counter()
        for i, name in enumerate(names):
            shots_ = [synthetic_scene(100 * i + j + 1, h, w) for j in range(case.shots)]
            seg.add_class(name, [s[0] for s in shots_], [s[1] for s in shots_])
        case.register_ms_per_class = 1000 * (time.perf_counter() - start) / case.classes
        key = (case.shots, case.frame)
        seconds: list[float] = []
        between = None
        if run_baseline is not None and key not in baseline_cache:
            base_shots = [synthetic_scene(j + 1, h, w) for j in range(case.shots)]
            base_images, base_masks = [s[0] for s in base_shots], [s[1] for s in base_shots]
            run_baseline(frame, base_images, base_masks)  # warm-up

            def between() -> None:
                t = time.perf_counter()
                run_baseline(frame, base_images, base_masks)
                seconds.append(time.perf_counter() - t)
                bar.update()

        remembered: list[float] | None = [] if memory else None
        times, gpu = _time_frames(seg, frame, names, frames, warmup, bar, between, max(3, frames // 4), remembered)
        if remembered:
            case.memory_total = summary(remembered)
            # Means, not medians: only every memory_every-th remembering frame pays the re-encoding.
            case.memory_ratio = float(np.mean(remembered) / np.mean(times["total"]))
        if seconds:
            baseline_cache[key] = summary(seconds)
        case.stages = {s: summary(times[s]) for s in STAGES}
        if gpu:
            case.device_stages = {s: summary(v) for s, v in gpu.items()}
            case.device_memory_mb = seg.backend.device_memory_mb()[0]
        case.fps = 1000.0 / case.stages["total"]["median_ms"]
        if "per_frame_1_class" in cost:
            case.gflops_per_frame = cost["backbone_per_image"] + case.classes * decoder_gflops(cost, case.shots)
            case.achieved_gflops = case.gflops_per_frame / (
                (case.stages["backbone"]["median_ms"] + case.stages["decode"]["median_ms"]) / 1000.0)
            case.decoder_gflops = case.classes * decoder_gflops(cost, case.shots) / (
                case.stages["decode"]["median_ms"] / 1000.0)
        if key in baseline_cache:
            # The baseline segments one class per forward: C classes cost C forwards.
            case.baseline = {k: v * case.classes for k, v in baseline_cache[key].items()}
            case.ratio_to_baseline = case.stages["total"]["median_ms"] / case.baseline["median_ms"]
    soak_result = _soak(seg, soak, frames_sizes[0], bar) if soak else None
    bar.close()
    gpu = None
    if seg.backend.name == "tensorrt":
        from .info import cuda_devices

        gpu = next((d["name"] for d in cuda_devices()[0] if d["index"] == seg.backend.device), None)
    return BenchResult(str(bundle), seg.backend.name, seg.backend.precision, threads, frames, ceiling, cases,
                       ceiling_note, peak_rss_mb(), note, soak_result, gpu, memory)


#: The soak replaces one of ``SOAK_SLOTS`` classes every ``SOAK_EVERY`` frames.
SOAK_EVERY, SOAK_SLOTS = 50, 4


def _soak_verdict(soak: dict[str, Any]) -> str:
    if soak["ok"] is None:
        return (f"not judged: too short for the warm-up (every class replaced once), which takes "
                f"{2 * SOAK_SLOTS * SOAK_EVERY} frames; soak longer than that for a verdict")
    return "ok" if soak["ok"] else "GREW"


def _soak(seg: Segmenter, frames: int, size: tuple[int, int], bar: tqdm) -> dict[str, Any]:
    """``frames`` frames with classes added and removed along the way; resident memory after the
    warm-up against the end (limit +2%), and its trace at each class change.

    The warm-up lasts until every class has been replaced once (``2 x SOAK_SLOTS x SOAK_EVERY``
    frames: the slots filled, then each replaced), or a tenth of the frames if that is longer: the
    first replacement frees the first large support arrays, and glibc then serves blocks of that size
    from its heap instead of fresh mappings, a one-time step of its resident size, not growth.
    A soak that does not outlast that warm-up is a smoke check: its growth is reported against the
    first tenth of its frames and not judged (``ok`` is None; a 400-frame soak of Lite-0 INT8 grew
    +60% that way and then stayed within 0.5% over 1500 frames).
    """
    h, w = size
    scenes = [synthetic_scene(500 + i, h, w) for i in range(SOAK_SLOTS)]
    for name in seg.classes:
        seg.remove_class(name)
    warm = max(frames // 10, 2 * SOAK_SLOTS * SOAK_EVERY)
    judged = warm < frames
    if not judged:  # too short to pass the first replacements: a tenth, as a smoke check, not judged
        warm = max(1, frames // 10)
    rss_warm, changes, trace = None, 0, []
    track = bool(getattr(seg, "memory", 0))  # track mode: every frame may be remembered
    for i in range(frames):
        if i % SOAK_EVERY == 0:  # replace one class every SOAK_EVERY frames, cycling through the slots
            trace.append([i, current_rss_mb()])
            slot = (i // SOAK_EVERY) % SOAK_SLOTS
            name = f"soak{slot}"
            if name in seg.classes:
                seg.remove_class(name)
            frame, mask = scenes[slot]
            seg.add_class(name, [frame], [mask])
            changes += 1
        if track:
            seg.segment(scenes[i % SOAK_SLOTS][0], remember=True)
        else:
            seg.segment(scenes[i % SOAK_SLOTS][0])
        bar.update()
        if i + 1 == warm:
            rss_warm = current_rss_mb()
    rss_end = current_rss_mb()
    trace.append([frames, rss_end])
    growth = (rss_end - rss_warm) / rss_warm
    return {"frames": frames, "warmup_frames": warm, "rss_after_warmup_mb": rss_warm, "rss_end_mb": rss_end,
            "growth": growth, "class_changes": changes, "ok": growth < 0.02 if judged else None,
            "rss_trace_mb": trace}


def _chart_canvas(title: str, unit: str, width: int, height: int, left: int, right: int, bottom: int, top: int,
                  y_max: float, grid: Sequence[float]) -> np.ndarray:
    """A white BGR canvas with the title, the two axes, labelled grid lines at fractions ``grid`` of
    ``y_max`` and the y unit: what the charts below share."""
    img = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.line(img, (left, height - bottom), (width - right, height - bottom), (0, 0, 0), 1)
    cv2.line(img, (left, top), (left, height - bottom), (0, 0, 0), 1)
    for frac in grid:
        y = int(height - bottom - frac * (height - bottom - top))
        cv2.putText(img, f"{frac * y_max:.0f}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
        cv2.line(img, (left - 3, y), (width - right, y), (220, 220, 220), 1)
    cv2.putText(img, unit, (5, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    return img


def line_chart(title: str, points: Sequence[Sequence[float]], x_label: str, unit: str,
               mark_x: float | None = None) -> np.ndarray:
    """A line chart of (x, y) points as a BGR image (OpenCV only), the y axis from 0; ``mark_x``
    draws a dashed vertical line (the end of a warm-up)."""
    width, height, left, bottom, top, right = 640, 360, 70, 50, 50, 20
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    x_max, y_max = max(max(xs), 1.0), max(max(ys), 1e-9) * 1.1
    img = _chart_canvas(title, unit, width, height, left, right, bottom, top, y_max, (0.25, 0.5, 0.75, 1.0))
    plot_w, plot_h = width - left - right, height - bottom - top

    def at(x: float, y: float) -> tuple[int, int]:
        return int(left + plot_w * x / x_max), int(height - bottom - plot_h * y / y_max)

    for frac in (0.0, 0.5, 1.0):
        x, _ = at(frac * x_max, 0)
        cv2.putText(img, f"{frac * x_max:.0f}", (x - 10, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(img, x_label, (width // 2 - 20, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    if mark_x is not None:
        x, _ = at(mark_x, 0)
        for y in range(top, height - bottom, 8):
            cv2.line(img, (x, y), (x, min(y + 4, height - bottom)), (60, 60, 220), 1)
    pixels = np.array([at(x, y) for x, y in zip(xs, ys)], np.int32)
    cv2.polylines(img, [pixels], False, (200, 120, 40), 2, cv2.LINE_AA)
    for p in pixels:
        cv2.circle(img, (int(p[0]), int(p[1])), 3, (200, 120, 40), -1, cv2.LINE_AA)
    return img


def bar_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[float]], unit: str = "ms") -> np.ndarray:
    """A grouped bar chart as a BGR image (OpenCV only: no plotting library needed)."""
    colors = [(200, 120, 40), (60, 60, 220), (60, 170, 60), (0, 160, 230)]
    width, height, left, bottom, top = max(480, 120 * len(labels) + 120), 360, 70, 60, 50
    peak = max((v for vs in series.values() for v in vs if v is not None), default=1.0) or 1.0
    img = _chart_canvas(title, unit, width, height, left, 10, bottom, top, peak, (0.5, 1.0))
    plot_h = height - bottom - top
    group = (width - left - 20) / max(1, len(labels))
    bar_w = max(4, int(group * 0.8 / max(1, len(series))))
    for i, label in enumerate(labels):
        x0 = int(left + 10 + i * group)
        for j, (name, values) in enumerate(series.items()):
            v = values[i]
            if v is None:
                continue
            bh = int(plot_h * v / peak)
            x = x0 + j * bar_w
            cv2.rectangle(img, (x, height - bottom - bh), (x + bar_w - 2, height - bottom), colors[j % len(colors)], -1)
        cv2.putText(img, label, (x0, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for j, name in enumerate(series):
        x = left + 10 + j * 150
        cv2.rectangle(img, (x, height - 22), (x + 12, height - 10), colors[j % len(colors)], -1)
        cv2.putText(img, name, (x + 16, height - 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def write_report(result: BenchResult, output: str | os.PathLike) -> list[Path]:
    """``bench.json`` and the charts in ``output``; returns the files written."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", result.to_dict())
    written = [out / "bench.json"]

    def chart(name: str, title: str, key: Callable[[Case], Any], cases: list[Case]) -> None:
        if len(cases) < 2:
            return
        labels = [str(key(c)) for c in cases]
        series = {"SDK (support cached)": [c.stages["total"]["median_ms"] for c in cases]}
        if any(c.baseline for c in cases):
            series["PyTorch eager, support recomputed"] = [c.baseline["median_ms"] if c.baseline else None for c in cases]
        path = out / f"{name}.png"
        cv2.imwrite(str(path), bar_chart(title, labels, series))
        written.append(path)

    first = result.cases[0]
    chart("latency_vs_shots", f"frame latency vs shots ({first.classes} class, {first.frame[1]}x{first.frame[0]})",
          lambda c: f"{c.shots} shot", [c for c in result.cases if c.classes == first.classes and c.frame == first.frame])
    chart("latency_vs_classes", f"frame latency vs classes ({first.shots} shot, {first.frame[1]}x{first.frame[0]})",
          lambda c: f"{c.classes} cls", [c for c in result.cases if c.shots == first.shots and c.frame == first.frame])
    chart("latency_vs_frame", f"frame latency vs frame size ({first.shots} shot, {first.classes} class)",
          lambda c: f"{c.frame[1]}x{c.frame[0]}",
          [c for c in result.cases if c.shots == first.shots and c.classes == first.classes])
    if result.soak and result.soak.get("rss_trace_mb"):
        soak = result.soak
        path = out / "soak_rss.png"
        cv2.imwrite(str(path), line_chart(
            f"soak: resident memory at each class change ({soak['growth']:+.2%} after the warm-up, dashed)",
            soak["rss_trace_mb"], "frame", "MB", mark_x=soak["warmup_frames"]))
        written.append(path)
    (out / "bench.txt").write_text(result.table() + "\n")
    written.append(out / "bench.txt")
    return written


def run(args) -> int:
    result = run_benchmark(args.bundle, backend=args.backend, precision=args.precision,
                           shots=parse_list(args.shots, "--shots"), classes=parse_list(args.classes, "--classes"),
                           frames_sizes=parse_frames(args.frame), frames=args.frames, warmup=args.warmup,
                           threads=args.threads, baseline=not args.no_baseline, soak=args.soak,
                           progress=not args.quiet, memory=args.memory)
    print(result.table())
    if args.output:
        files = write_report(result, args.output)
        print("wrote " + ", ".join(str(f) for f in files))
    else:
        print(json.dumps({"peak_rss_mb": result.peak_rss_mb, "matmul_gflops": result.matmul_gflops}))
    return 1 if result.soak and result.soak["ok"] is False else 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="latency per stage, FPS, memory and the uncached baseline, in one run")
    p.add_argument("--bundle", required=True, help="bundle directory from `sccan export`")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: TensorRT engines when usable here, else ONNX Runtime")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="default: the backend's; int8: the gated graphs of `sccan quantize`")
    p.add_argument("--shots", default="1", help="shot counts to measure, e.g. 1,5")
    p.add_argument("--classes", default="1", help="class counts per frame, e.g. 1,2,4,8")
    p.add_argument("--frame", default="640x480", help="frame sizes WIDTHxHEIGHT, e.g. 640x480,1920x1080")
    p.add_argument("--frames", type=int, default=20, help="timed frames per case (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames per case first")
    p.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime and the PyTorch baseline")
    p.add_argument("--no-baseline", action="store_true", help="skip the PyTorch eager baseline")
    p.add_argument("--soak", type=int, default=0,
                   help="also run N frames with classes added and removed; exit 1 if memory grows by 2%% or more "
                        "after the warm-up (N over 400; shorter soaks are reported, not judged)")
    p.add_argument("--memory", type=int, default=0, metavar="M",
                   help="also time track mode with M remembered frames (alternating with plain frames, every frame "
                        "remembered as the Segmenter's memory_every allows), and run the soak with it")
    p.add_argument("--output", help="directory for bench.json, bench.txt and the PNG charts")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
