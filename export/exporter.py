"""``sccan export``: a checkpoint -> a verified model bundle (see shared/docs/architecture.md).

Steps: load the model; fold the frozen BatchNorms into their convolutions; export the three
graphs (FP32, opset 18); fold constants and clean up
(Polygraphy, onnx-graphsurgeon); check them against TensorRT's ONNX parser tables; make the FP16
variants; run the parity gate; write ``manifest.json`` (hashes, I/O specs, precision plan,
GFLOPs), ``report.json`` and ``report.txt``. Everything is written into a temporary directory
beside the output and renamed into place at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from sccan.sdk.bundle import (FORMAT, FORMAT_VERSION, GRAPHS, graph_file, load_bundle, readable_by_others,
                              sha256_file, write_json_atomic, write_manifest)
from sccan.sdk.errors import SCCANError
from sccan.sdk.schema import first_slots
from sccan.sdk.patch_align_op import DOMAIN as PLUGIN_DOMAIN
from sccan.sdk.patch_align_op import OP_TYPE as PLUGIN_OP
from sccan.sdk.patch_align_op import PLUGIN_NAMESPACE, PLUGIN_VERSION
from sccan.train.checkpoint import CheckpointError, load_model, read_checkpoint
from sccan.train.model import SCCAN

from .fp16 import FP32_ISLAND_CLASSES, convert_to_fp16, fp32_island_nodes, island_summary
from .graphs import OPSET, PATCH_ALIGN_MODES, GraphSpec, export_graph, graph_specs
from .episodes import CHECK_FILE, GraphSessions, run_episode
from .episodes import check_episodes as check_episodes_
from .parity import run_parity_gate
from .tensorrt_ops import check_model, op_counts, parameter_count

RESIZE_RULE = ("PFENet test-time resize: scale so the longer side equals input_size keeping the aspect "
               "ratio, floor both sides to a multiple of 8, place top-left on an input_size square of "
               "zeros (raw pixels, before normalisation); labels padded with 255")
MIN_SIZE = 65


class ExportError(SCCANError):
    """The export cannot proceed or its checks failed (the message says which)."""


def valid_size(size: int) -> None:
    """Raise :class:`ExportError` unless ``size`` is one the network takes: (size - 1) % 8 == 0, >= 65."""
    if size >= MIN_SIZE and (size - 1) % 8 == 0:
        return
    below = max(MIN_SIZE, (size - 1) // 8 * 8 + 1)
    above = max(MIN_SIZE, below + 8 if below < size else below)
    raise ExportError(f"input size {size} is not one the network takes: sizes are 8k + 1 and at least "
                      f"{MIN_SIZE} (so stride-8 features align with the image corners), e.g. {below} or "
                      f"{above}; the paper uses 473")


def _sanitize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-node cleanup with Polygraphy and onnx-graphsurgeon."""
    import onnx_graphsurgeon as gs
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    folded = fold_constants(model, num_passes=2, error_ok=True)
    graph = gs.import_onnx(folded)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def _io(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def spec(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    return {"inputs": [spec(v) for v in model.graph.input], "outputs": [spec(v) for v in model.graph.output]}


TENSORRT_TARGETS = ("10.3", "11.x")


def graph_entry(model: onnx.ModelProto, file: str) -> dict[str, Any]:
    """A graph's manifest entry: file, I/O specs, node and op counts, parameters, and what TensorRT
    10.3 / 11.x would refuse (``tensorrt_problems``, per target)."""
    return {"file": file, **_io(model), "nodes": len(model.graph.node), "op_counts": op_counts(model),
            "parameters": parameter_count(model),
            "tensorrt_problems": {t: [str(p) for p in check_model(model, t)] for t in TENSORRT_TARGETS}}


def _gflops(spec: GraphSpec, args: tuple[torch.Tensor, ...]) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        spec.module(*args)
    return round(counter.get_total_flops() / 1e9, 3)


def _costs(specs: list[GraphSpec], max_shots: int) -> dict[str, Any]:
    """GFLOPs per graph call: backbone per image, encoder per class (1 and max shots), decoder per class."""
    bb, enc, dec = specs
    one = tuple(t[:1] for t in bb.example)
    mid, high, masks = enc.example
    per = {"backbone_per_image": _gflops(bb, one),
           "support_encoder_per_class_1_shot": _gflops(enc, (mid[:1], high[:1], masks[:, :1])),
           "query_decoder_per_class": _gflops(dec, (dec.example[0], dec.example[1], *(t[:1] for t in dec.example[2:])))}
    with torch.no_grad():
        m, h = bb.module(torch.zeros(max_shots, *one[0].shape[1:]))
    per[f"support_encoder_per_class_{max_shots}_shots"] = _gflops(
        enc, (m, h, torch.zeros(1, max_shots, *masks.shape[2:])))
    # The decoder's prior grows with the shot slots a batch uses: its cost at 1 slot too (the figure
    # above is at the example's max_shots slots), so a runtime can count what a frame really costs.
    per["query_decoder_per_class_1_shot"] = _gflops(
        dec, (dec.example[0], dec.example[1],
              *(first_slots(name, t[:1], 1) for name, t in zip(dec.input_names[2:], dec.example[2:]))))
    per["query_decoder_slots"] = max_shots
    per["support_time_per_class_1_shot"] = round(per["backbone_per_image"] + per["support_encoder_per_class_1_shot"], 3)
    per["per_frame_1_class"] = round(per["backbone_per_image"] + per["query_decoder_per_class"], 3)
    return per


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict[str, Any]
    report_text: str


def export_bundle(checkpoint: str | os.PathLike | SCCAN, output: str | os.PathLike, size: int = 473,
                  max_shots: int = 5, max_classes: int = 8, check_episodes: int = 2, fp16: bool = True,
                  force: bool = False, patch_align: str = "standard-ops", progress: bool = True) -> ExportResult:
    """Export ``checkpoint`` (a path, or a model in memory) to the bundle directory ``output``.

    Raises:
        ExportError: bad size/limits, output exists (without ``force``), TensorRT check or parity
            gate failed. CheckpointError: the checkpoint does not load.
    """
    valid_size(size)
    if not 1 <= max_shots <= 16:
        raise ExportError(f"--max-shots must be within 1..16, got {max_shots}")
    if not 1 <= max_classes <= 64:
        raise ExportError(f"--max-classes must be within 1..64, got {max_classes}")
    if patch_align not in PATCH_ALIGN_MODES:
        raise ExportError(f"patch alignment '{patch_align}' is not available; choose from {PATCH_ALIGN_MODES}")
    output = Path(output)
    if output.exists() and not force:
        raise ExportError(f"{output} already exists; pass --force to replace it")
    if isinstance(checkpoint, SCCAN):
        model, source = checkpoint.eval(), {"path": None, "sha256": None}
    else:
        model = load_model(checkpoint)
        source = {"path": Path(checkpoint).name, "sha256": sha256_file(checkpoint)}
        presence = checkpoint_presence_threshold(checkpoint)
        if presence is not None:
            source["presence_threshold"] = presence

    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    readable_by_others(work, directory=True)  # mkdtemp makes it 0700
    try:
        manifest = _build(model, work, size, max_shots, max_classes, check_episodes, fp16, patch_align,
                          source, progress)
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            output.rename(old)
            work.rename(output)
            shutil.rmtree(old)
        else:
            work.rename(output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(output, manifest, (output / "report.txt").read_text())


def checkpoint_presence_threshold(checkpoint: str | os.PathLike) -> float | None:
    """The presence threshold calibrated for a project checkpoint (``presence_threshold``, written by
    ``python -m sccan.train.checkpoint ... --presence-threshold``), or None (a released checkpoint,
    or a model never calibrated: the SDK then judges no class absent)."""
    try:
        value = read_checkpoint(checkpoint).get("presence_threshold")
    except CheckpointError:
        return None
    return None if value is None else float(value)


def _build(model: SCCAN, work: Path, size: int, max_shots: int, max_classes: int, check_episodes: int,
           fp16: bool, patch_align: str, source: dict[str, Any], progress: bool) -> dict[str, Any]:
    # The graphs are made from a copy whose frozen BatchNorms are folded into their convolutions
    # (FP16 must not store a convolution's output before its affine map); the parity gate still
    # compares them with the unmodified model.
    folded = copy.deepcopy(model)
    folded.backbone.fold_batchnorms()
    specs = graph_specs(folded, size, max_shots, max_classes)
    limits = {"images": max_shots, "shots": max_shots, "slots": max_shots, "classes": max_classes}
    graphs: dict[str, dict[str, Any]] = {}
    precisions = ("fp32", "fp16") if fp16 else ("fp32",)
    extra = len(precisions) if patch_align == "both" else 0
    steps = tqdm(total=len(specs) * len(precisions) + extra + 2, desc="export", unit="step", disable=not progress)
    def export_one(spec: GraphSpec, mode: str, name: str) -> dict[str, Any]:
        """Export, sanitise, FP16-convert and TensorRT-check one graph as ``name``(.fp16).onnx."""
        raw = export_graph(spec, work / f"{name}.onnx", limits, mode)
        islands = fp32_island_nodes(raw, tuple(f"backbone.{s}" for s in folded.backbone.fp32_scopes()))
        # Plugin nodes stay FP32 in the FP16 graphs (ONNX Runtime's op is float32; TensorRT's plugin
        # takes either, and its arithmetic is float32 anyway).
        islands += [n.name for n in raw.graph.node if n.domain == PLUGIN_DOMAIN]
        summary = island_summary(raw, islands)
        clean = _sanitize(raw)
        kept = {n.name for n in clean.graph.node}
        islands = [n for n in islands if n in kept]
        onnx.save_model(clean, str(work / f"{name}.onnx"))
        entry: dict[str, Any] = {}
        variants = {"fp32": clean}
        steps.update()
        if fp16:
            variants["fp16"] = convert_to_fp16(clean, islands)
            onnx.save_model(variants["fp16"], str(work / f"{name}.fp16.onnx"))
            steps.update()
        problems = []
        for precision, m in variants.items():
            entry[precision] = graph_entry(m, f"{name}.onnx" if precision == "fp32" else f"{name}.fp16.onnx")
            problems += [f"{name} ({precision}, TensorRT {t}): {p}"
                         for t, ps in entry[precision]["tensorrt_problems"].items() for p in ps]
        if problems:  # fail on the first graph with problems, before exporting the others
            raise ExportError("TensorRT compatibility check failed:\n  " + "\n  ".join(problems[:20]))
        if fp16:
            entry["fp16"]["fp32_island_nodes"] = len(islands)
            entry["fp16"]["fp32_islands"] = summary
        return entry

    graph_mode = "standard-ops" if patch_align == "both" else patch_align
    for spec in specs:
        graphs[spec.name] = export_one(spec, graph_mode, graph_file(spec.name, "fp32").removesuffix(".onnx"))
    plugin_variant = None
    if patch_align == "both":  # the decoder again, with the plugin node: sccan build's fallback
        decoder = next(s for s in specs if s.name == "query_decoder")
        plugin_variant = {"query_decoder": export_one(decoder, "plugin", PLUGIN_VARIANT_STEM)}

    steps.set_description("cost")
    cost = _costs(specs, max_shots)
    steps.update()
    steps.set_description("parity gate")
    paths32 = {g: work / graph_file(g, "fp32") for g in GRAPHS}
    paths16 = {g: work / graph_file(g, "fp16") for g in GRAPHS} if fp16 else None
    reference: dict[str, np.ndarray] = {}
    parity = run_parity_gate(model, paths32, size, max_shots, check_episodes, paths16, reference=reference)
    if plugin_variant is not None:
        plugin_variant["parity"] = plugin_variant_parity(paths32, work / plugin_variant["query_decoder"]["fp32"]["file"],
                                                         size, max_shots, check_episodes)
        if not plugin_variant["parity"]["ok"]:
            parity.failures.append(f"the plugin variant of the decoder differs from the standard one: "
                                   f"{plugin_variant['parity']}")
    np.savez_compressed(work / CHECK_FILE, **reference)
    steps.update()
    steps.close()

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "sccan_version": version("sccan"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model.config.to_dict(), "source_checkpoint": source,
        "input_size": size, "max_shots": max_shots, "max_classes": max_classes,
        "normalization": {"color": "rgb", "scale": "0..255", "mean": list(model.mean), "std": list(model.std)},
        **({"presence_threshold": source["presence_threshold"]} if "presence_threshold" in source else {}),
        "resize_rule": RESIZE_RULE, "opset": OPSET, "patch_align": patch_align,
        "plugin_variant": plugin_variant,
        "patch_align_plugin": ({"op": PLUGIN_OP, "domain": PLUGIN_DOMAIN, "plugin_namespace": PLUGIN_NAMESPACE,
                                "plugin_version": PLUGIN_VERSION, "onnxruntime": "onnxruntime-extensions Python op "
                                "(sccan.sdk.patch_align_op)", "tensorrt": "libsccan_trt_plugin.so (CMake)"}
                               if patch_align in ("plugin", "both") else None),
        "support_layout": model.support_layout(max_shots).to_dict(),
        "precision_plan": {
            "fp32": "all FP32",
            "fp16": ({"islands_kept_fp32": list(FP32_ISLAND_CLASSES),
                      "why": "sums of squares of high-level features exceed 65504; cosine denominators; the "
                             "min-max stretch of a nearly flat prior; LayerNorm statistics",
                      "verified_on_cpu": "storage (no inf/NaN in any stored FP16 tensor) and type consistency, "
                                         "not FP16 arithmetic (ONNX Runtime's CPU provider computes in FP32)"}
                     if fp16 else None),
        },
        "graphs": graphs, "cost_gflops": cost, "parity": parity.to_dict(), "engines": {},
        "check": {"episodes": check_episodes, "seed": 0, "file": CHECK_FILE,
                  "what": "PyTorch's patch-alignment indices on the check episodes and where they are decisive "
                          "(best minus second-best > 1e-5), for the engine gate of `sccan build`"},
    }
    report = format_report(manifest)
    (work / "report.txt").write_text(report)
    write_json_atomic(work / "report.json", {"graphs": graphs, "parity": parity.to_dict(), "cost_gflops": cost})
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(work.iterdir()) if p.suffix in (".onnx", ".txt", ".json", ".npz")}
    write_manifest(work, manifest)
    if not parity.ok:
        raise ExportError("parity gate failed:\n  " + "\n  ".join(parity.failures) + "\n\n" + report)
    return manifest


PLUGIN_VARIANT_STEM = "query_decoder.plugin"
PLUGIN_VARIANT_TOLERANCE = 1e-5


def plugin_variant_parity(paths32: dict[str, Path], plugin_decoder: Path, size: int, max_shots: int,
                          episodes: int) -> dict[str, Any]:
    """The plugin decoder against the standard one in ONNX Runtime on the check episodes: identical
    alignment indices and logits within 1e-5 x max|logit| (the semantics are the same)."""
    standard = GraphSessions(paths32)
    plugin = GraphSessions({**paths32, "query_decoder": plugin_decoder})
    worst, mismatches, checked = 0.0, 0, 0
    for episode in check_episodes_(episodes, size, max_shots):
        want_logits, want_index = run_episode(standard, episode)
        got_logits, got_index = run_episode(plugin, episode)
        worst = max(worst, float(np.abs(got_logits - want_logits).max()) / (float(np.abs(want_logits).max()) or 1.0))
        for got, want in zip(got_index, want_index):
            checked += want.size
            mismatches += int((got.astype(np.int64) != want.astype(np.int64)).sum())
    return {"max_relative_logit_diff": worst, "indices_checked": checked, "index_mismatches": mismatches,
            "ok": worst <= PLUGIN_VARIANT_TOLERANCE and mismatches == 0}


def format_report(manifest: dict[str, Any]) -> str:
    """The human-readable report: graphs, op counts, opset, FP32 islands, parity figures."""
    lines = [f"SCCAN bundle: {manifest['model']['backbone']}, input {manifest['input_size']} x "
             f"{manifest['input_size']}, up to {manifest['max_shots']} shots and {manifest['max_classes']} "
             f"classes, opset {manifest['opset']}, patch alignment: {manifest['patch_align']}", ""]
    header = f"{'graph':<17}{'precision':<11}{'nodes':>6}{'params':>12}{'FP32 islands':>14}  {'TensorRT 10.3 / 11.x'}"
    lines += [header, "-" * len(header)]
    for graph, variants in manifest["graphs"].items():
        for precision, g in variants.items():
            islands = g.get("fp32_island_nodes", "-")
            trt = "ok" if not any(g["tensorrt_problems"].values()) else "PROBLEMS"
            lines.append(f"{graph:<17}{precision:<11}{g['nodes']:>6}{g['parameters']:>12,}{islands!s:>14}  {trt}")
    lines.append("")
    for graph, variants in manifest["graphs"].items():
        top = ", ".join(f"{op} {n}" for op, n in list(variants["fp32"]["op_counts"].items())[:8])
        lines.append(f"{graph} ops: {top}")
        if "fp16" in variants and variants["fp16"].get("fp32_islands"):
            isl = ", ".join(f"{k} {v}" for k, v in variants["fp16"]["fp32_islands"].items())
            lines.append(f"{graph} FP32 islands (nodes): {isl}")
    cost = manifest["cost_gflops"]
    lines += ["", f"GFLOPs: support time per class (1 shot) {cost['support_time_per_class_1_shot']}, "
                  f"per frame (1 class) {cost['per_frame_1_class']}, of which backbone {cost['backbone_per_image']}"]
    p = manifest["parity"]
    lines += ["", f"Parity, FP32 graphs in ONNX Runtime vs PyTorch ({p['episodes']} episodes, 1 and max shots, "
                  f"2 classes per decode): max |logit diff| / max|logit| = {p['max_relative_logit_diff']:.2e} "
                  f"(limit 1e-4); alignment indices: {p['index_mismatches']} mismatches of "
                  f"{p['indices_checked']} decisive (margin > 1e-5)"]
    if p["fp16_max_probability_diff"] is not None:
        stored = sum(s["tensors"] for s in p["fp16_storage"].values())
        peak = max(p["fp16_storage"].values(), key=lambda s: s["max_abs"])
        bad = [g for g, s in p["fp16_storage"].items() if s["nonfinite"]]
        lines.append(f"FP16 graphs vs FP32 in ONNX Runtime CPU (proves storage and types, not FP16 arithmetic): "
                     f"max |prob diff| = {p['fp16_max_probability_diff']:.4f} (limit 0.02), mask agreement "
                     f"{100 * p['fp16_min_mask_agreement']:.2f}% (limit 99.5%); {stored} stored FP16 tensors, "
                     f"{'inf/NaN in ' + ', '.join(bad) if bad else 'none inf/NaN'}, largest |x| "
                     f"{peak['max_abs']:.1f}")
    variant = manifest.get("plugin_variant")
    if variant:
        v = variant["parity"]
        lines.append(f"Plugin variant of the decoder (query_decoder.plugin.onnx, sccan build's fallback) vs the "
                     f"standard one in ONNX Runtime: max |logit diff| / max|logit| = "
                     f"{v['max_relative_logit_diff']:.2e} (limit 1e-5), {v['index_mismatches']} of "
                     f"{v['indices_checked']} alignment indices differ")
    lines.append(f"Parity gate: {'PASSED' if p['ok'] else 'FAILED: ' + '; '.join(p['failures'])}")
    return "\n".join(lines) + "\n"


def check_bundle(path: str | os.PathLike) -> str:
    """``sccan export --check``: verify hashes, re-run the TensorRT check on every graph, return the report."""
    bundle = load_bundle(path)
    problems = []
    for graph, variants in bundle.manifest["graphs"].items():
        for precision in variants:
            model = onnx.load(str(bundle.graph_path(graph, precision)))
            for target in TENSORRT_TARGETS:
                problems += [f"{graph} ({precision}, TensorRT {target}): {p}" for p in check_model(model, target)]
    report = format_report(bundle.manifest)
    if problems:
        raise ExportError("TensorRT compatibility check failed:\n  " + "\n  ".join(problems[:20]))
    return report + f"Hashes of {len(bundle.manifest['files'])} files verified; TensorRT check re-run: ok\n"
