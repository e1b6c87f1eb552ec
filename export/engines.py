"""``sccan build``: TensorRT engines from a bundle's graphs, checked after the build.

TensorRT Python API >= 10.3, named tensors only. For each precision asked for:

* networks are **strongly typed** (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.x; 11.x
  networks always are) and the FP16 builder flag is never set: an FP16 engine's precision is the
  FP16 graph's own types and Casts (its FP32 islands stay FP32), an FP32 engine is built from the
  FP32 graph with TF32 cleared, so that it can be held to FP32 tolerances; an INT8 engine is built
  from the explicitly quantized graph of ``sccan quantize`` (symmetric INT8 Q/DQ, no INT8 flag);
* every dynamic dimension gets an optimisation-profile range, the same on every input that shares
  the dimension's name (backbone images and support shots 1/1/max_shots, decoder classes
  1/opt/max_classes, shot slots 1/1/max_shots), repeated ``contexts`` times: each execution context
  in use at once (a Segmenter and each of its clones) selects a profile of its own;
* a timing cache, keyed by TensorRT version, GPU and flags, is loaded, used and saved atomically;
* plans are plain files named for what they were built for (``backbone.fp16.<gpu>-sm87-trt10.3.0.plan``);
* a **gate** then runs the engines (through the SDK's TensorRT backend, so on what the Segmenter
  will run) against the FP32 graphs in ONNX Runtime on the bundle's check episodes: FP32 logits
  within 1e-3 x max|logit|, alignment indices equal to PyTorch's where they are decisive (the
  bundle's ``check.npz``), FP16 foreground probabilities within 0.02 and masks agreeing on at
  least 99.5% of pixels; INT8 engines against the INT8 graphs, masks agreeing on at least 99%;
  every profile is exercised. A failure names the first diverging output
  and leaves the bundle as it was (its previous engines in place); success writes the plans and
  the manifest's ``engines`` section (atomically), with TensorRT, GPU, CUDA, driver and L4T
  versions, the plugin library's sha256, flags, profiles and build seconds.

Nothing here imports torch: engines are built on the machine that runs them (a Jetson, say).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from sccan.sdk.bundle import GRAPHS, Bundle, load_bundle, sha256_file, write_manifest
from sccan.sdk.errors import SCCANError
from sccan.sdk.info import system_facts
from sccan.sdk.preprocess import foreground_probability

from .episodes import CHECK_FILE, BackendStages, GraphSessions, check_episodes, load_reference, reference_key, \
    run_episode

PRECISIONS = ("fp16", "fp32", "int8")
MIN_TENSORRT = (10, 3)
from .limits import DEFAULT_CONTEXTS  # noqa: E402
PLUGIN_LIBRARY = "libsccan_trt_plugin.so"
FP32_TOLERANCE = 1e-3
FP16_PROB_TOLERANCE = 0.02
FP16_MASK_AGREEMENT = 0.995
#: INT8 engines against the INT8 graphs they were built from (in ONNX Runtime): the same quantized
#: values; what differs is how each runtime's kernels round the requantization.
INT8_MASK_AGREEMENT = 0.99
#: relative difference above which an intermediate output counts as diverging (when naming the first)
STAGE_TOLERANCE = {"fp32": FP32_TOLERANCE, "fp16": 0.05, "int8": 0.25}


class BuildError(SCCANError):
    """An engine could not be built, or failed its gate (the message says which and why)."""


@dataclass
class BuildOptions:
    """What ``sccan build`` builds. ``timing_cache`` is a directory (default ``~/.cache/sccan/tensorrt``)."""

    precisions: tuple[str, ...] = ("fp16",)
    max_classes: int | None = None
    opt_classes: int = 1
    contexts: int = DEFAULT_CONTEXTS
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    force: bool = False
    hardware_compatible: bool = False
    plugin_library: Path | None = None
    device: int = 0
    patch_align: str = "auto"


@dataclass
class GateReport:
    precision: str
    episodes: int = 0
    max_relative_logit_diff: float = 0.0
    max_probability_diff: float = 0.0
    min_mask_agreement: float = 1.0
    indices_checked: int = 0
    index_mismatches: int = 0
    profiles_checked: int = 0
    first_divergence: str | None = None
    stage_diffs: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"ok": self.ok}


@dataclass
class BuildResult:
    bundle: Path
    built: dict[str, dict[str, Any]]  # precision -> graph -> engine record
    gates: dict[str, GateReport]
    skipped: list[str]

    def summary(self) -> str:
        lines = []
        for precision, graphs in self.built.items():
            for graph, info in graphs.items():
                size = (self.bundle / info["file"]).stat().st_size / 2**20
                lines.append(f"{precision:<6}{graph:<17}{info['build_seconds']:>8.1f} s{size:>9.1f} MiB  {info['file']}")
            g = self.gates[precision]
            if precision == "fp32":
                figures = (f"logits {g.max_relative_logit_diff:.1e} x max|logit| (limit {FP32_TOLERANCE:.0e}), "
                           f"indices {g.index_mismatches} mismatches of {g.indices_checked} decisive")
            elif precision == "int8":
                figures = (f"probabilities differ by up to {g.max_probability_diff:.4f}, masks agree "
                           f"{100 * g.min_mask_agreement:.2f}% (limit {100 * INT8_MASK_AGREEMENT:.0f}%)")
            else:
                figures = (f"probabilities {g.max_probability_diff:.4f} (limit {FP16_PROB_TOLERANCE}), masks agree "
                           f"{100 * g.min_mask_agreement:.2f}% (limit {100 * FP16_MASK_AGREEMENT:.1f}%)")
            decoder = graphs["query_decoder"]
            if decoder.get("patch_align") == "plugin":
                lines.append(f"{precision} decoder uses the patch-alignment plugin"
                             + (f" ({decoder['patch_align_reason']})" if decoder.get("patch_align_reason") else ""))
            against = "the INT8 graphs" if precision == "int8" else "the FP32 graphs"
            lines.append(f"{precision} gate against {against} in ONNX Runtime ({g.episodes} episodes, "
                         f"{g.profiles_checked} profiles): {figures}: PASSED")
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines) + "\n"


# -- what this system is -----------------------------------------------------------------------------


def install_hint() -> str:
    if platform.machine() == "aarch64":
        return ("on a Jetson, TensorRT comes with JetPack (6.1/6.2: TensorRT 10.3): run from a venv made with "
                "`python3 -m venv --system-site-packages` so that `import tensorrt` finds it")
    return ("pip install 'sccan[tensorrt]' (tensorrt-cu12 and cuda-python 12, for CUDA 12 drivers) or "
            "'sccan[tensorrt-cu13]' (CUDA 13 drivers)")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (>= 10.3), or :class:`BuildError` saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BuildError(f"building engines needs TensorRT and an NVIDIA GPU; tensorrt is not importable ({exc}): "
                         f"{install_hint()}") from None
    version = tuple(int(v) for v in trt.__version__.split(".")[:2])
    if version < MIN_TENSORRT:
        raise BuildError(f"TensorRT {trt.__version__} is older than the supported 10.3: {install_hint()}")
    return trt


def build_environment(device: int = 0) -> tuple[Any, dict[str, Any]]:
    """(tensorrt module, system facts) or :class:`BuildError` naming what is missing."""
    trt = import_tensorrt()
    facts = system_facts(device)
    if facts["gpu"] is None:
        from sccan.sdk.info import cuda_devices

        _, why = cuda_devices()
        raise BuildError(f"TensorRT {trt.__version__} is installed but there is no CUDA device {device} ({why}); "
                         "engines are built on the GPU that will run them")
    facts["tensorrt"] = trt.__version__
    return trt, facts


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def target_name(facts: dict[str, Any], hardware_compatible: bool) -> str:
    """What plans are named for: ``<gpu>-sm<cc>-trt<version>`` (``ampere-plus-trt<version>``)."""
    if hardware_compatible:
        return f"ampere-plus-trt{facts['tensorrt']}"
    return f"{_slug(facts['gpu'])}-sm{facts['compute_capability'].replace('.', '')}-trt{facts['tensorrt']}"


def default_timing_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sccan" / "tensorrt"


# -- networks and profiles -----------------------------------------------------------------------------


def graph_inputs(graph_path: Path) -> dict[str, list[int | str]]:
    """Per graph input (initializers excluded), its shape: sizes, or the dimension name (ONNX
    ``dim_param``) of a dynamic axis. One parse of the graph's structure, without external data."""
    model = onnx.load(str(graph_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in model.graph.input if v.name not in init}


def dimension_ranges(manifest: dict[str, Any], max_classes: int, opt_classes: int) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) per dimension name of the exported graphs."""
    shots = int(manifest["max_shots"])
    return {"images": (1, 1, shots), "shots": (1, 1, shots), "slots": (1, 1, shots),
            "classes": (1, opt_classes, max_classes)}


def profile_shapes(graph_path: Path, ranges: dict[str, tuple[int, int, int]]) -> dict[str, tuple[list[int], ...]]:
    """min/opt/max shapes of every dynamic input; one value per dimension name across inputs."""
    shapes = {}
    for name, full in graph_inputs(graph_path).items():
        axes = {axis: d for axis, d in enumerate(full) if isinstance(d, str)}
        if not axes:
            continue
        unknown = [d for d in axes.values() if d not in ranges]
        if unknown:
            raise BuildError(f"{graph_path.name}: input {name} has dynamic dimension(s) {unknown} that sccan build "
                             f"has no range for (known: {sorted(ranges)}); export the bundle again")
        per = []
        for k in range(3):
            shape = list(full)
            for axis, dim in axes.items():
                shape[axis] = ranges[dim][k]
            per.append(shape)
        shapes[name] = tuple(per)
    return shapes


def _logger_class(trt: Any) -> type:
    class Logger(trt.ILogger):
        """TensorRT's messages: warnings and errors kept (the OOM and parser messages), errors printed."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR,
                            trt.ILogger.Severity.WARNING):
                self.messages.append((severity, msg))

        def errors(self) -> list[str]:
            bad = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)
            return [m for s, m in self.messages if s in bad]

    return Logger


_OOM = re.compile(r"out of memory|outofmemory|insufficient memory|requested amount of gpu memory|"
                  r"cudaErrorMemoryAllocation|allocation failed", re.IGNORECASE)


def build_plan(trt: Any, graph_path: Path, precision: str, shapes: dict[str, tuple[list[int], ...]],
               options: BuildOptions, cache: Any, logger: Any) -> tuple[bytes, dict[str, Any]]:
    """One serialised engine from one ONNX graph; (plan, the flags it was built with)."""
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0
    if major < 11:  # TensorRT 11 networks are always strongly typed (the flag is deprecated there)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph_path)):
        problems = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            node = getattr(error, "node_name", lambda: "")() or f"node #{error.node()}"
            op = getattr(error, "node_operator", lambda: "")()
            problems.append(f"{node}{f' ({op})' if op else ''}: {error.desc()}")
        raise ParserRejection(f"TensorRT's ONNX parser rejected {graph_path.name}: "
                              + "; ".join(problems or ["no detail"]))
    config = builder.create_builder_config()
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if cache is not None and not config.set_timing_cache(cache, False):
        raise BuildError("TensorRT refused the timing cache (made by another TensorRT or GPU?); "
                         "delete it or give another --timing-cache directory")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    for _ in range(options.contexts):
        profile = builder.create_optimization_profile()
        for name in inputs:
            if name in shapes:
                profile.set_shape(name, *shapes[name])
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errors = logger.errors()
        if any(_OOM.search(m) for m in errors):
            raise BuildError(f"TensorRT ran out of GPU memory building {graph_path.name}: give a smaller "
                             f"--workspace (MiB; now {options.workspace_mib or 'unlimited'}), fewer --contexts or "
                             f"a smaller --max-classes, close other GPU programs (on a Jetson: add swap). "
                             f"TensorRT said: {errors[-1]}")
        raise BuildError(f"TensorRT could not build {graph_path.name}: " + ("; ".join(errors[-3:]) or "no message"))
    used = {"strongly_typed": True, "fp16_flag": False, "int8_flag": False, "tf32": precision != "fp32",
            "quantization": "explicit (Q/DQ nodes in the graph)" if precision == "int8" else None,
            "hardware_compatibility": "ampere+" if options.hardware_compatible else "none",
            "workspace_mib": options.workspace_mib}
    return bytes(memoryview(plan)), used


# -- the timing cache ----------------------------------------------------------------------------------


class TimingCache:
    """A timing cache file for one TensorRT version, GPU and flag set, loaded and saved atomically."""

    def __init__(self, directory: Path, facts: dict[str, Any], precision: str, hardware_compatible: bool):
        key = f"{target_name(facts, hardware_compatible)}-{precision}"
        self.path = Path(directory) / f"timing-{key}.cache"
        self.reused = self.path.is_file()

    def create(self, trt: Any, logger: Any) -> Any:
        config = trt.Builder(logger).create_builder_config()
        data = self.path.read_bytes() if self.reused else b""
        return config.create_timing_cache(data)

    def save(self, cache: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(bytes(memoryview(cache.serialize())))
        os.replace(tmp, self.path)


# -- the gate ------------------------------------------------------------------------------------------


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    scale = float(np.abs(want).max()) or 1.0
    return float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max()) / scale


def run_gate(bundle: Bundle, precision: str, device: int = 0) -> GateReport:
    """The engines listed in ``bundle.manifest['engines'][precision]`` against the FP32 graphs in
    ONNX Runtime (INT8 engines: against the INT8 graphs they were built from), on the bundle's check
    episodes, on every optimisation profile."""
    from sccan.sdk.tensorrt_backend import TensorRTBackend

    manifest = bundle.manifest
    check = manifest.get("check", {"episodes": 2, "seed": 0})
    episodes = check_episodes(int(check["episodes"]), bundle.input_size, bundle.max_shots, int(check["seed"]))
    reference = load_reference(bundle.path / CHECK_FILE)
    report = GateReport(precision, episodes=len(episodes))
    reference_precision = "int8" if precision == "int8" else "fp32"
    onnx_runtime = GraphSessions({g: bundle.graph_path(g, reference_precision, onnxruntime=True) for g in GRAPHS})
    primary = TensorRTBackend(bundle, device=device, precision=precision)
    backends = [primary]
    try:
        while True:
            backends.append(primary.fork())
    except SCCANError:
        pass  # every profile is held now
    report.profiles_checked = len(backends)
    tolerance = STAGE_TOLERANCE[precision]
    divergences: list[tuple[str, float]] = []
    for e, episode in enumerate(episodes):
        backend = backends[e % len(backends)]
        engine_stages, ort_stages = BackendStages(backend), onnx_runtime
        _stage_diffs(engine_stages, ort_stages, episode, report, divergences, tolerance)
        ort_logits, _ = run_episode(ort_stages, episode)
        for b in backends:  # every profile decodes the episode
            logits, indices = run_episode(BackendStages(b), episode)
            if precision == "fp32":
                for c in range(len(episode.supports)):
                    report.max_relative_logit_diff = max(report.max_relative_logit_diff,
                                                         _relative(logits[c], ort_logits[c]))
                if reference is not None:
                    for c in range(len(episode.supports)):
                        for k, got in enumerate(indices):
                            want = reference[reference_key(e, c, k, "index")]
                            decisive = reference[reference_key(e, c, k, "decisive")]
                            report.indices_checked += int(decisive.sum())
                            report.index_mismatches += int((got[c].reshape(-1)[decisive.reshape(-1)]
                                                            != want.reshape(-1)[decisive.reshape(-1)]).sum())
            else:
                p_engine, p_ort = foreground_probability(logits), foreground_probability(ort_logits)
                report.max_probability_diff = max(report.max_probability_diff, float(np.abs(p_engine - p_ort).max()))
                report.min_mask_agreement = min(report.min_mask_agreement,
                                                float(((p_engine > 0.5) == (p_ort > 0.5)).mean()))
    if precision == "fp32":
        if report.max_relative_logit_diff > FP32_TOLERANCE:
            report.failures.append(f"FP32 logits differ from the FP32 graphs by {report.max_relative_logit_diff:.2e} "
                                   f"x max|logit| (limit {FP32_TOLERANCE:.0e})")
        if report.index_mismatches:
            report.failures.append(f"{report.index_mismatches} of {report.indices_checked} decisive patch-alignment "
                                   "indices differ from PyTorch's")
    elif precision == "int8":
        if report.min_mask_agreement < INT8_MASK_AGREEMENT:
            report.failures.append(f"INT8 engine masks agree with the INT8 graphs' on {100 * report.min_mask_agreement:.2f}% "
                                   f"of pixels (limit {100 * INT8_MASK_AGREEMENT:.0f}%)")
    else:
        if report.max_probability_diff > FP16_PROB_TOLERANCE:
            report.failures.append(f"FP16 foreground probabilities differ by {report.max_probability_diff:.3f} "
                                   f"(limit {FP16_PROB_TOLERANCE})")
        if report.min_mask_agreement < FP16_MASK_AGREEMENT:
            report.failures.append(f"FP16 masks agree on {100 * report.min_mask_agreement:.2f}% of pixels "
                                   f"(limit {100 * FP16_MASK_AGREEMENT:.1f}%)")
    if divergences:
        name, diff = divergences[0]
        report.first_divergence = f"{name} (relative difference {diff:.2e}, limit {tolerance:.0e})"
    del backends, primary
    return report


def _stage_diffs(engine: BackendStages, ort: GraphSessions, episode: Any, report: GateReport,
                 divergences: list, tolerance: float) -> None:
    """Each stage's outputs on the same inputs (ONNX Runtime's), in the order they are computed,
    so that a failure can name where the engines first part from the graphs."""
    images, masks = episode.supports[-1]
    features = ort.extract(images)
    support = ort.encode(features, masks)
    query = ort.extract(episode.query)
    outputs = {f"backbone.{k}": (v, features[k]) for k, v in engine.extract(images).items()}
    outputs.update({f"support_encoder.{k}": (v, support[k]) for k, v in engine.encode(features, masks).items()})
    outputs["query_decoder.logits"] = (engine.decode(query, support)[0], ort.decode(query, support)[0])
    for name, (got, want) in outputs.items():
        diff = _relative(got, want)
        report.stage_diffs[name] = max(report.stage_diffs.get(name, 0.0), diff)
        if diff > tolerance:
            divergences.append((name, diff))


# -- the command ---------------------------------------------------------------------------------------


def check_build(bundle_path: str | os.PathLike, options: BuildOptions | None = None) -> str:
    """``sccan build --check``: what would be built here, and whether existing engines fit this system."""
    from sccan.sdk.tensorrt_backend import preflight

    options = options or BuildOptions()
    bundle = load_bundle(bundle_path)
    trt, facts = build_environment(options.device)
    lines = [f"TensorRT {facts['tensorrt']} on {facts['gpu']} (sm {facts['compute_capability']}), CUDA runtime "
             f"{facts['cuda_runtime']}, driver {facts['cuda_driver']}, binding {facts['binding']}"
             + (f", {facts['l4t']}" if facts["l4t"] else "")]
    for precision in options.precisions:
        if precision not in bundle.manifest["graphs"]["backbone"]:
            lines.append(f"{precision}: the bundle has no {precision} graphs (export without --no-fp16)")
            continue
        if bundle.manifest.get("engines", {}).get(precision):
            problems = preflight(bundle, precision, options.device)
            lines.append(f"{precision}: engines present, " + ("usable here" if not problems else
                                                               "not usable here: " + "; ".join(problems)))
        else:
            lines.append(f"{precision}: no engines yet; `sccan build` would build "
                         f"{', '.join(f'{g}.{precision}.{target_name(facts, options.hardware_compatible)}.plan' for g in GRAPHS)}")
    return "\n".join(lines) + "\n"


from .limits import PATCH_ALIGN_CHOICES  # noqa: E402


class ParserRejection(BuildError):
    """TensorRT's ONNX parser rejected a graph (the message names the nodes)."""


def _find_plugin_library(bundle: Bundle, options: BuildOptions, why: str) -> Path:
    candidates = [options.plugin_library] if options.plugin_library else \
        [bundle.path / PLUGIN_LIBRARY, Path("build") / PLUGIN_LIBRARY]
    for path in candidates:
        if path and Path(path).is_file():
            return Path(path)
    raise BuildError(f"{why}; that needs the patch-alignment plugin library: build it (`cmake -S . -B build "
                     f"-DTensorRT_ROOT=... && cmake --build build`) and pass --plugin-library "
                     f"build/{PLUGIN_LIBRARY}")


@dataclass
class _Plan:
    """What one precision's build is doing: the patch-alignment mode and why, the plans made."""

    mode: str
    reason: str | None = None
    hint: str = ""
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    temporary: list[Path] = field(default_factory=list)


def missing_graphs_message(manifest: dict[str, Any], precision: str) -> str:
    """Why a bundle lacks ``precision`` graphs, and how to get a bundle that has them."""
    if precision == "int8":
        return "the bundle has no int8 graphs: make them with `sccan quantize BUNDLE --calibration DATA`"
    have = ", ".join(sorted(manifest["graphs"]["backbone"]))
    source = (manifest.get("source_checkpoint") or {}).get("path")
    again = f"sccan export {source or 'CHECKPOINT'} -o BUNDLE" + (
        f" --size {manifest['input_size']}" if manifest.get("input_size") else "")
    return (f"the bundle has no {precision} graphs (it has: {have}); bundles made for the CPU, such as those of "
            f"`sccan demo` and `sccan demo --real`, hold FP32 graphs only. Export the checkpoint again with FP16 "
            f"graphs (the default): `{again}`, or build FP32 engines with --precision fp32")


def build_engines(bundle_path: str | os.PathLike, options: BuildOptions | None = None, progress: bool = True,
                  log: Callable[[str], None] = print) -> BuildResult:
    """Build, gate and record the bundle's engines; see the module docstring.

    Patch alignment (``options.patch_align``): ``"standard-ops"`` builds the bundle's graphs;
    ``"plugin"`` builds the decoder with the plugin node (a bundle exported with ``--patch-align
    plugin``, or the plugin variant of one exported with ``both``); ``"auto"`` (default) builds the
    standard decoder and falls back to the plugin variant when TensorRT's parser rejects it or it
    fails the gate. The manifest records the mode, the reason and the plugin library's sha256.
    """
    from sccan.sdk.tensorrt_backend import load_plugin_library, preflight

    options = options or BuildOptions()
    if options.contexts < 1:
        raise BuildError(f"--contexts must be at least 1, got {options.contexts}")
    if options.patch_align not in PATCH_ALIGN_CHOICES:
        raise BuildError(f"--patch-align must be one of {PATCH_ALIGN_CHOICES}, got {options.patch_align!r}")
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    graph_max = int(manifest["max_classes"])
    max_classes = options.max_classes or graph_max
    if not 1 <= max_classes <= graph_max:
        raise BuildError(f"--max-classes must be between 1 and the bundle's {graph_max}, got {max_classes}")
    if not 1 <= options.opt_classes <= max_classes:
        raise BuildError(f"--opt-classes must be between 1 and --max-classes ({max_classes}), got {options.opt_classes}")
    for precision in options.precisions:
        if precision not in PRECISIONS:
            raise BuildError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    # TensorRT's absence is the first thing a machine without it must hear.
    trt, facts = build_environment(options.device)
    for precision in options.precisions:
        if precision not in manifest["graphs"]["backbone"]:
            raise BuildError(missing_graphs_message(manifest, precision))
    exported = manifest.get("patch_align", "standard-ops")
    variant = manifest.get("plugin_variant") or {}
    if exported == "plugin" and options.patch_align == "standard-ops":
        raise BuildError("this bundle was exported with --patch-align plugin: it has no standard-op decoder")
    if exported != "plugin" and options.patch_align == "plugin" and not variant:
        raise BuildError("this bundle has no plugin decoder: export it with --patch-align plugin or both")
    target = target_name(facts, options.hardware_compatible)
    logger = _logger_class(trt)()
    trt.init_libnvinfer_plugins(logger, "")
    plugin_record: dict[str, str] | None = None

    def plugin(why: str) -> dict[str, str]:
        """Put the plugin library in the bundle (once), load it, and return its record."""
        nonlocal plugin_record
        if plugin_record is None:
            library = _find_plugin_library(bundle, options, why)
            if library.resolve() != (bundle.path / PLUGIN_LIBRARY).resolve():
                tmp = bundle.path / f".{PLUGIN_LIBRARY}.tmp-{os.getpid()}"
                shutil.copyfile(library, tmp)
                os.replace(tmp, bundle.path / PLUGIN_LIBRARY)
            load_plugin_library(trt, bundle.path / PLUGIN_LIBRARY)
            plugin_record = {"file": PLUGIN_LIBRARY, "sha256": sha256_file(bundle.path / PLUGIN_LIBRARY)}
        return plugin_record

    ranges = dimension_ranges(manifest, max_classes, options.opt_classes)
    cache_dir = options.timing_cache or default_timing_cache_dir()
    built: dict[str, dict[str, Any]] = {}
    gates: dict[str, GateReport] = {}
    skipped = []
    for precision in options.precisions:
        if manifest.get("engines", {}).get(precision) and not options.force \
                and not preflight(bundle, precision, options.device):
            skipped.append(f"{precision} engines are already built for this system (--force rebuilds them)")
            continue
        timing = TimingCache(cache_dir, facts, precision, options.hardware_compatible)
        cache = timing.create(trt, logger)
        plan = _Plan("plugin" if exported == "plugin" or options.patch_align == "plugin" else "standard-ops")

        def source(graph: str) -> tuple[Path, str]:
            """The graph file for ``graph`` in the current mode, and the plan's stem."""
            if graph == "query_decoder" and plan.mode == "plugin" and exported != "plugin":
                return bundle.path / variant["query_decoder"][precision]["file"], "query_decoder.plugin"
            return bundle.graph_path(graph, precision), graph

        def build_one(graph: str) -> None:
            path, stem = source(graph)
            uses_plugin = plan.mode == "plugin" and graph == "query_decoder"
            library = plugin(f"the {precision} decoder uses the plugin node") if uses_plugin else None
            shapes = profile_shapes(path, ranges)
            start = time.perf_counter()
            data, flags = build_plan(trt, path, precision, shapes, options, cache, logger)
            seconds = time.perf_counter() - start
            name = f"{stem}.{precision}.{target}.plan"
            tmp = bundle.path / f".{name}.tmp-{os.getpid()}"
            tmp.write_bytes(data)
            plan.temporary.append(tmp)
            plan.records[graph] = {
                "file": tmp.name, "final_file": name, "sha256": sha256_file(tmp), "source": path.name,
                "tensorrt": facts["tensorrt"], "gpu": facts["gpu"],
                "compute_capability": facts["compute_capability"], "cuda_runtime": facts["cuda_runtime"],
                "cuda_driver": facts["cuda_driver"], "l4t": facts["l4t"],
                "hardware_compatible": options.hardware_compatible, "plugin_library": library,
                "patch_align": plan.mode if graph == "query_decoder" else None,
                "flags": flags, "contexts": options.contexts,
                "profiles": {k: [list(v) for v in vs] for k, vs in shapes.items()},
                "max_classes": max_classes if graph == "query_decoder" else None,
                "timing_cache": timing.path.name, "timing_cache_reused": timing.reused,
                "build_seconds": round(seconds, 2),
            }

        def fall_back(why: str) -> bool:
            """Switch the decoder to the plugin variant (auto mode); False when it cannot, with the
            reason kept for the error (``plan.hint``)."""
            if options.patch_align != "auto" or plan.mode == "plugin":
                return False
            if precision not in variant.get("query_decoder", {}):
                plan.hint = (" (the plugin fallback needs a plugin decoder in the bundle: export it with "
                             "--patch-align both)")
                return False
            plan.mode, plan.reason = "plugin", why
            log(f"sccan build: {why}; falling back to the patch-alignment plugin for the {precision} decoder")
            return True

        def gate_now() -> GateReport:
            candidate = dict(manifest)
            candidate["engines"] = {**manifest.get("engines", {}), precision: plan.records}
            return run_gate(Bundle(bundle.path, candidate), precision, options.device)

        try:
            bar = tqdm(GRAPHS, desc=f"build {precision}", unit="engine", disable=not progress)
            for graph in bar:
                bar.set_postfix_str(graph)
                try:
                    build_one(graph)
                except ParserRejection as exc:
                    if graph != "query_decoder" or not fall_back(str(exc)):
                        raise ParserRejection(f"{exc}{plan.hint}") from None
                    build_one(graph)
            bar.close()
            gate = gate_now()
            if not gate.ok and fall_back(f"the standard-op {precision} decoder failed the gate: "
                                         + "; ".join(gate.failures)):
                build_one("query_decoder")
                gate = gate_now()
            timing.save(cache)
            gates[precision] = gate
            if not gate.ok:
                where = f"; first diverging output: {gate.first_divergence}" if gate.first_divergence else ""
                raise BuildError(f"{precision} engines failed the gate: " + "; ".join(gate.failures) + where
                                 + f". The bundle's previous engines are unchanged.{plan.hint}")
            records = plan.records
            for record in records.values():  # the gate passed: the plans take their names
                final = record.pop("final_file")
                os.replace(bundle.path / record["file"], bundle.path / final)
                record["file"] = final
            records["query_decoder"]["patch_align_reason"] = plan.reason
            plan.temporary.clear()
            old = {e["file"] for e in manifest.get("engines", {}).get(precision, {}).values()}
            manifest.setdefault("engines", {})[precision] = records
            manifest.setdefault("engine_gates", {})[precision] = gate.to_dict()
            manifest["files"] = {k: v for k, v in manifest["files"].items() if k not in old}
            manifest["files"].update({r["file"]: r["sha256"] for r in records.values()})
            if plugin_record and any(r["plugin_library"] for r in records.values()):
                manifest["files"][PLUGIN_LIBRARY] = plugin_record["sha256"]
            write_manifest(bundle.path, manifest)
            for name in old - {r["file"] for r in records.values()}:
                (bundle.path / name).unlink(missing_ok=True)
            built[precision] = records
        finally:
            for tmp in plan.temporary:
                tmp.unlink(missing_ok=True)
    return BuildResult(bundle.path, built, gates, skipped)


__all__ = ["BuildOptions", "BuildResult", "BuildError", "ParserRejection", "PATCH_ALIGN_CHOICES", "GateReport", "build_engines", "check_build", "run_gate",
           "build_plan", "profile_shapes", "dimension_ranges", "install_hint", "target_name"]
