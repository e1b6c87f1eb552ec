"""Export: split graphs, TensorRT op check, FP16 plan, parity gate, manifest hashes, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from conftest import SMALL, randomize_bn
from sccan.export.exporter import ExportError, check_bundle, export_bundle, valid_size
from sccan.export.fp16 import convert_to_fp16, fp32_island_nodes, storage_sweep, to_fp16_feeds
from sccan.export.parity import GraphSessions, check_episodes, run_parity_gate
from sccan.export.tensorrt_ops import check_model
from sccan.sdk.bundle import GRAPHS, MANIFEST, graph_file, load_bundle
from sccan.sdk.errors import BundleError, CheckpointError
from sccan.sdk.schema import CLASS_DIM, first_slots
from sccan.train.checkpoint import save_checkpoint
from sccan.train.model import build_model

SIZE, SHOTS = 65, 3
LITE_SMALL = dict(grid=8, embed_dim=32, num_blocks=2, num_heads=4, window=4, aspp_dilations=(1, 2, 3))


@pytest.fixture(scope="module")
def resnet_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn(build_model("resnet50", **SMALL))
    root = tmp_path_factory.mktemp("export")
    ckpt = save_checkpoint(model, root / "small.pt")
    result = export_bundle(ckpt, root / "bundle", size=SIZE, max_shots=SHOTS, max_classes=4,
                           check_episodes=1, progress=False)
    return model, result


def test_bundle_layout_manifest_and_report(resnet_bundle):
    _, result = resnet_bundle
    bundle = load_bundle(result.bundle)  # verifies every hash
    m = bundle.manifest
    for graph in GRAPHS:
        for precision in ("fp32", "fp16"):
            assert (result.bundle / graph_file(graph, precision)).is_file()
    assert not list(result.bundle.glob("*.data")), "graphs must be self-contained"
    assert m["input_size"] == SIZE and m["max_shots"] == SHOTS and m["opset"] == 18
    assert m["source_checkpoint"]["sha256"] and m["patch_align"] == "standard-ops"
    assert m["normalization"]["mean"] == pytest.approx([123.675, 116.28, 103.53])
    decoder = m["graphs"]["query_decoder"]["fp32"]
    prototype = next(i for i in decoder["inputs"] if i["name"] == "prototype")
    assert prototype["shape"][0] == CLASS_DIM, "class batch must be dynamic"
    encoder = m["graphs"]["support_encoder"]["fp32"]
    assert encoder["inputs"][0]["shape"][0] == "shots"
    assert [o["name"] for o in encoder["outputs"]] == bundle.layout.names()
    assert m["cost_gflops"]["per_frame_1_class"] > 0 and decoder["parameters"] > 0
    assert m["parity"]["ok"] and m["parity"]["max_relative_logit_diff"] < 1e-4
    assert m["parity"]["indices_checked"] > 0 and m["parity"]["index_mismatches"] == 0
    report = (result.bundle / "report.txt").read_text()
    assert "Parity gate: PASSED" in report and "FP32 islands" in report
    assert json.loads((result.bundle / "report.json").read_text())["parity"]["ok"]


def test_graphs_match_the_model_with_classes_of_different_shots(resnet_bundle):
    model, result = resnet_bundle
    paths = {g: result.bundle / graph_file(g, "fp32") for g in GRAPHS}
    report = run_parity_gate(model, paths, SIZE, SHOTS, episodes=1, seed=7)
    assert report.ok, report.failures
    assert report.max_relative_logit_diff < 1e-4


def test_parity_gate_fails_on_a_different_model(resnet_bundle):
    _, result = resnet_bundle
    torch.manual_seed(1)
    other = randomize_bn(build_model("resnet50", **SMALL))
    paths = {g: result.bundle / graph_file(g, "fp32") for g in GRAPHS}
    report = run_parity_gate(other, paths, SIZE, SHOTS, episodes=1)
    assert not report.ok and "FP32 logits differ" in report.failures[0]


def test_parity_gate_fails_on_planted_index_differences(resnet_bundle, monkeypatch):
    """The reference's alignment index moved to another window (its aligned keys and values unchanged, so the
    logits still agree): only the index check can see it, and it must."""
    from sccan.train.model.transformer import PatchAlignment

    model, result = resnet_bundle
    original = PatchAlignment.forward

    def shifted(self, *args):
        keys, values, index = original(self, *args)
        return keys, values, (index + 1) % args[1].shape[1]

    monkeypatch.setattr(PatchAlignment, "forward", shifted)
    paths = {g: result.bundle / graph_file(g, "fp32") for g in GRAPHS}
    report = run_parity_gate(model, paths, SIZE, SHOTS, episodes=1)
    assert report.max_relative_logit_diff < 1e-4  # only the indices were planted
    assert report.failures == [f"{report.index_mismatches} of {report.indices_checked} decisive patch-alignment "
                               "indices differ from PyTorch"]
    assert report.index_mismatches == report.indices_checked > 0


def _fp16_paths_with(result, tmp_path, edit, which=(2,)):
    """The bundle's FP16 graphs, the decoder's last convolution's bias (input 2) and/or weight
    (input 1), as ``which`` says, edited by ``edit``."""
    from onnx import numpy_helper

    paths = {}
    for g in GRAPHS:
        m = onnx.load(str(result.bundle / graph_file(g, "fp16")))
        if g == "query_decoder":
            last_conv = [n for n in m.graph.node if n.op_type == "Conv"][-1]
            for w in which:
                init = next(i for i in m.graph.initializer if i.name == last_conv.input[w])
                init.CopyFrom(numpy_helper.from_array(edit(numpy_helper.to_array(init).copy()), init.name))
        paths[g] = tmp_path / graph_file(g, "fp16")
        onnx.save_model(m, str(paths[g]))
    return paths


def test_parity_gate_fails_on_planted_fp16_differences(resnet_bundle, tmp_path):
    model, result = resnet_bundle
    paths32 = {g: result.bundle / graph_file(g, "fp32") for g in GRAPHS}

    def push_background(bias):
        bias[1] -= 8.0  # every foreground logit down by 8: probabilities near 0, every mask pixel flips
        return bias

    report = run_parity_gate(model, paths32, SIZE, SHOTS, 1, _fp16_paths_with(result, tmp_path, push_background))
    assert any(f.startswith("FP16 foreground probabilities differ by") and "(limit 0.02)" in f for f in report.failures)
    assert any(f.startswith("FP16 masks agree on") and "(limit 99.5%)" in f for f in report.failures)

    def overflow(values):
        values[:] = 65504.0  # the largest FP16 value in every weight and bias: their sum overflows to inf
        return values

    report = run_parity_gate(model, paths32, SIZE, SHOTS, 1,
                             _fp16_paths_with(result, tmp_path, overflow, which=(1, 2)))
    assert any(f.startswith("FP16 query_decoder stores inf/NaN in") for f in report.failures), report.failures


def test_fp16_plan_keeps_islands_and_stores_no_overflow(resnet_bundle):
    _, result = resnet_bundle
    m = load_bundle(result.bundle).manifest
    islands = m["graphs"]["query_decoder"]["fp16"]["fp32_islands"]
    assert set(islands) == {"L2Normalize", "CosineSimilarity", "PriorStretch", "LayerNorm"}
    p = m["parity"]
    assert p["fp16_max_probability_diff"] <= 0.02 and p["fp16_min_mask_agreement"] >= 0.995
    assert all(not s["nonfinite"] and s["tensors"] > 0 for s in p["fp16_storage"].values())
    fp16 = onnx.load(str(result.bundle / graph_file("query_decoder", "fp16")))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert sum(n.op_type == "Cast" for n in fp16.graph.node) > 0


def test_storage_sweep_catches_an_overflow():
    # |x| for x = (300, 1, 2, 3): the squares' sum 90014 > 65504 is inf in FP16 unless the
    # square, the sum and the root form an FP32 island (the norm itself, ~300, fits).
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])
    axes = helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [0])
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
             helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], name="sum", keepdims=0),
             helper.make_node("Sqrt", ["ss"], ["y"], name="sqrt")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [axes]), opset_imports=[helper.make_opsetid("", 18)])
    feeds = to_fp16_feeds({"x": np.array([300, 1, 2, 3], np.float32)})
    sweep = storage_sweep(convert_to_fp16(model, []), feeds)
    assert not sweep.ok and "sq" in sweep.nonfinite
    kept = storage_sweep(convert_to_fp16(model, ["square", "sum", "sqrt"]), feeds)
    assert kept.ok and kept.max_abs == pytest.approx(300.0, rel=1e-3)


def test_island_nodes_come_from_exporter_metadata(resnet_bundle, tmp_path):
    from sccan.export.graphs import export_graph, graph_specs

    model, _ = resnet_bundle
    spec = graph_specs(model, SIZE, SHOTS)[1]
    raw = export_graph(spec, tmp_path / "enc.onnx", {"images": 3, "shots": 3, "slots": 3, "classes": 4})
    names = set(fp32_island_nodes(raw))
    ops = {n.op_type for n in raw.graph.node if n.name in names}
    assert "LayerNormalization" in ops and "ReduceSum" in ops
    assert not any(n.op_type == "Conv" for n in raw.graph.node if n.name in names)


def test_tensorrt_check_names_a_planted_col2im_node(resnet_bundle):
    _, result = resnet_bundle
    model = onnx.load(str(result.bundle / graph_file("query_decoder", "fp32")))
    assert check_model(model, "10.3") == [] and check_model(model, "11.x") == []
    model.graph.node.append(helper.make_node("Col2Im", ["logits", "a", "b"], ["folded"], name="planted_fold"))
    model.graph.node.append(helper.make_node("NonZero", ["logits"], ["nz"], name="planted_nonzero"))
    problems = [str(p) for p in check_model(model)]
    assert any("planted_fold" in p and "not supported" in p for p in problems)
    assert any("planted_nonzero" in p and "banned" in p for p in problems)


def test_tensorrt_check_restrictions():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    scales = helper.make_tensor("scales", onnx.TensorProto.FLOAT, [4], [1, 1, 2, 2])
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="cubic_resize", mode="cubic",
                              coordinate_transformation_mode="tf_crop_and_resize")
    model = helper.make_model(helper.make_graph([resize], "g", [x], [y], [scales]),
                              opset_imports=[helper.make_opsetid("", 21)])
    problems = [str(p) for p in check_model(model, "10.3")]
    assert any("opset 21" in p for p in problems)
    assert any("cubic_resize" in p and "tf_crop_and_resize" in p for p in problems)
    assert any("cubic_resize" in p and "'cubic'" in p for p in problems)


def test_corrupted_or_missing_graph_is_detected_by_hash(resnet_bundle, tmp_path):
    import shutil

    _, result = resnet_bundle
    copy = tmp_path / "copy"
    shutil.copytree(result.bundle, copy)
    assert "verified" in check_bundle(copy)
    target = copy / graph_file("backbone", "fp32")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="altered or is corrupt"):
        load_bundle(copy)
    target.unlink()
    with pytest.raises(BundleError, match="missing backbone.onnx"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_bad_input(resnet_bundle, tmp_path):
    model, result = resnet_bundle
    with pytest.raises(ExportError, match="473"):
        valid_size(472)
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(model, result.bundle, size=SIZE, progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        export_bundle(bad, tmp_path / "out", size=SIZE, progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import sccan.export.exporter as exporter

    torch.manual_seed(0)
    model = build_model("resnet50", **SMALL)
    monkeypatch.setattr(exporter, "check_model", lambda m, target="10.3": ["planted problem"])
    with pytest.raises(ExportError, match="planted problem"):
        export_bundle(model, tmp_path / "out", size=SIZE, max_shots=2, fp16=False, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_edge_backbone_exports_with_parity(synthetic_export):
    """The edge backbone (EfficientNet-Lite0, the shipped synthetic model: conftest's shared export)
    passes the gate, FP16 included, with Lite-0's own normalisation."""
    manifest = json.loads((synthetic_export / MANIFEST).read_text())
    p = manifest["parity"]
    assert manifest["model"]["backbone"] == "efficientnet_lite0"
    assert p["ok"] and p["max_relative_logit_diff"] < 1e-4 and p["fp16_max_probability_diff"] < 0.02
    assert manifest["normalization"]["mean"] == [127.0, 127.0, 127.0]


def test_export_cli(resnet_bundle, tmp_path):
    import subprocess

    _, result = resnet_bundle
    out = subprocess.run(["sccan", "export", "--check", str(result.bundle)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Parity gate: PASSED" in out.stdout and "verified" in out.stdout
    out = subprocess.run(["sccan", "export", str(tmp_path / "none.pt"), "-o", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_sessions_run_each_class_count(resnet_bundle):
    _, result = resnet_bundle
    sessions = GraphSessions({g: result.bundle / graph_file(g, "fp32") for g in GRAPHS})
    episode = check_episodes(1, SIZE, SHOTS)[0]
    per_class = [sessions.encode(sessions.extract(i), m) for i, m in episode.supports]
    query = sessions.extract(episode.query)
    for c in (1, 2, 4):
        support = {k: np.concatenate([per_class[j % 2][k] for j in range(c)]) for k in per_class[0]}
        logits, indices = sessions.decode(query, support)
        assert logits.shape == (c, 2, SIZE, SIZE) and len(indices) == SMALL["num_blocks"]
    # A 1-shot class decodes the same with its padding slots cut off (they only cost time).
    one_shot = per_class[0]
    full, _ = sessions.decode(query, one_shot)
    cut = {k: first_slots(k, v, 1) for k, v in one_shot.items()}
    sliced, _ = sessions.decode(query, cut)
    np.testing.assert_allclose(sliced, full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fp16_plan_on_the_published_network_at_473(tmp_path):
    """Realistic weights (the reference recipe) at the paper's size: FP32 parity and FP16 storage."""
    from reference_weights import recipe_state_dict

    model = build_model("resnet50")
    model.load_state_dict(recipe_state_dict())
    result = export_bundle(model, tmp_path / "r50", size=473, max_shots=2, max_classes=2, check_episodes=1,
                           progress=False)
    p = result.manifest["parity"]
    assert p["ok"], p["failures"]
    assert p["max_relative_logit_diff"] < 1e-4 and p["index_mismatches"] == 0 and p["indices_checked"] > 500
    assert p["fp16_max_probability_diff"] <= 0.02 and p["fp16_min_mask_agreement"] >= 0.995
    assert all(s["tensors"] > 100 and not s["nonfinite"] for s in p["fp16_storage"].values())


def plugin_variant_agrees(model, bundle, size, shots):
    """The plugin variant of a ``--patch-align both`` bundle's decoder against its standard decoder,
    both run here through ONNX Runtime (the custom op from onnxruntime-extensions) on check episodes
    of this function's own seed: (max relative logit difference, index differences, indices)."""
    import json

    variant = json.loads((bundle / MANIFEST).read_text())["plugin_variant"]["query_decoder"]["fp32"]["file"]
    decoder = onnx.load(str(bundle / variant))
    nodes = [n for n in decoder.graph.node if n.domain == "sccan"]
    # Per block two nodes: one gathers the aligned windows' keys, the other their values.
    assert len(nodes) == 2 * model.config.num_blocks and {n.op_type for n in nodes} == {"SccanPatchAlign"}
    assert {a.name for a in nodes[0].attribute} == {"cosine_eps", "plugin_namespace", "plugin_version"}
    assert not check_model(decoder, "10.3") and not check_model(decoder, "11.x")
    standard = {g: bundle / graph_file(g, "fp32") for g in GRAPHS}
    sessions = [GraphSessions(standard), GraphSessions({**standard, "query_decoder": bundle / variant})]
    worst, differ, total = 0.0, 0, 0
    for episode in check_episodes(2, size, shots, seed=3):
        outs = []
        for s in sessions:
            per_class = [s.encode(s.extract(images), masks) for images, masks in episode.supports]
            batched = {k: np.concatenate([c[k] for c in per_class]) for k in per_class[0]}
            outs.append(s.decode(s.extract(episode.query), batched))
        (a, ia), (b, ib) = outs
        worst = max(worst, float(np.abs(a - b).max() / np.abs(a).max()))
        differ += sum(int((x != y).sum()) for x, y in zip(ia, ib))
        total += sum(x.size for x in ia)
    return worst, differ, total
