"""The trained synthetic model end to end: learning, export, the CLI, the demo and the samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sccan.sdk import Segmenter
from sccan.train.checkpoint import load_model
from sccan.train.data.datasets import build_dataset
from sccan.train.data.episodes import Episode
from sccan.train.evaluate import evaluate, model_predictor, prior_predictor
from sccan.train.model import build_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
LEARNING_BAR = 0.44


@pytest.fixture(scope="module")
def bundle(trained_synthetic, tmp_path_factory):
    from sccan.export.exporter import export_bundle

    checkpoint, _, config = trained_synthetic
    return export_bundle(checkpoint, tmp_path_factory.mktemp("synthetic_bundle") / "bundle",
                         size=config["data"]["size"], max_shots=2, max_classes=4, check_episodes=2,
                         progress=False)


def test_training_learns_to_match_the_support(trained_synthetic):
    checkpoint, result, config = trained_synthetic
    size = config["data"]["size"]
    test = build_dataset(config["data"], "test", seed=config["eval"]["seed"], episodes=150)
    episodes = [test[i] for i in range(len(test))]
    trained = evaluate(model_predictor(load_model(checkpoint), size), episodes, progress=False).miou
    untrained_model = build_model(**config["model"])
    untrained = evaluate(model_predictor(untrained_model, size), episodes, progress=False).miou
    prior = evaluate(prior_predictor(untrained_model, size), episodes, progress=False).miou
    swapped = [Episode(e.query, e.query_label, *_other_support(episodes, i), e.class_id) for i, e in enumerate(episodes)]
    wrong_support = evaluate(model_predictor(load_model(checkpoint), size), swapped, progress=False).miou
    print(json.dumps({"trained": trained, "untrained": untrained, "prior_only": prior,
                      "trained_with_wrong_support": wrong_support, "steps": result.steps}))
    assert untrained < 0.3 and prior <= 0.35
    # The trajectory depends on float rounding, not only on the seed, and after the shipped config's
    # 800 steps it is still climbing steeply (validation mIoU 0.30, 0.39, 0.44 at steps 400-800):
    # seed 7 reached 0.535 with this host's AVX-512 kernels and 0.435 with AVX2 ones (torch's alone,
    # ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, or every library's, tools/avx2_kernels.py),
    # which failed this bar on AVX2 hosts; seeds 123 and 7 had spanned 0.37 to 0.56 before. So the
    # fixture trains 5 epochs (1000 steps): seed 7 then reaches 0.570 (AVX-512), 0.548 (AVX2) and
    # 0.491 (ATEN_CPU_CAPABILITY=default, unvectorised). The bar sits 0.05 below the lowest; what it
    # guards is learning, which the margins over the prior and over a wrong support show too.
    assert trained >= LEARNING_BAR, f"novel-class mIoU {trained:.3f} < {LEARNING_BAR}"
    assert trained > prior + 0.12, "training must add to what the prior alone gives"
    assert trained > wrong_support + 0.2, "the prediction must depend on the support set"


def _other_support(episodes, i):
    other = next(e for e in episodes[i + 1:] + episodes[:i] if e.class_id != episodes[i].class_id)
    return other.support, other.support_labels


def test_synthetic_model_exports_with_parity(bundle):
    p = bundle.manifest["parity"]
    assert p["ok"] and p["max_relative_logit_diff"] < 1e-4 and p["index_mismatches"] == 0
    assert p["fp16_max_probability_diff"] <= 0.02 and p["fp16_min_mask_agreement"] >= 0.995


def test_eval_scores_the_bundle_like_the_checkpoint(bundle, trained_synthetic, tmp_path):
    """``sccan eval --bundle``: the deployed graphs, through the SDK, by the same protocol."""
    checkpoint, _, config = trained_synthetic
    common = ["--config", "synthetic_lite0", "--episodes", "40", "--quiet"]
    scores = {}
    for name, source in (("checkpoint", [str(checkpoint)]), ("bundle", ["--bundle", str(bundle.bundle)])):
        out = subprocess.run(["sccan", "eval", *source, *common, "--output", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        scores[name] = json.loads((tmp_path / name / "eval.json").read_text())
    assert scores["bundle"]["backend"] == "onnxruntime" and scores["bundle"]["size"] == config["data"]["size"]
    assert abs(scores["bundle"]["miou"] - scores["checkpoint"]["miou"]) < 0.005, scores
    both = subprocess.run(["sccan", "eval", str(checkpoint), "--bundle", str(bundle.bundle), *common],
                          capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "one of them" in both.stderr


def test_sccan_segment_cli_on_images_folder_and_video(bundle, trained_synthetic, tmp_path):
    _, _, config = trained_synthetic
    episode = build_dataset(config["data"], "test", seed=5, episodes=1)[0]
    cv2.imwrite(str(tmp_path / "support.png"), episode.support[0][..., ::-1])
    cv2.imwrite(str(tmp_path / "mask.png"), episode.support_labels[0] * 255)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"f{i}.png"), episode.query[..., ::-1])
    base = ["sccan", "segment", "--bundle", str(bundle.bundle), "--class", "thing",
            "--support", f"{tmp_path / 'support.png'}:{tmp_path / 'mask.png'}"]
    out = subprocess.run(base + ["--input", str(frames), "--output", str(tmp_path / "out"),
                                 "--save-support", str(tmp_path / "thing.npz")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    overlays = sorted((tmp_path / "out").glob("*_overlay.png"))
    assert len(overlays) == 3 and cv2.imread(str(overlays[0])).shape == episode.query.shape
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, episode.query.shape[1::-1])
    for _ in range(5):
        writer.write(episode.query[..., ::-1])
    writer.release()
    out = subprocess.run(["sccan", "segment", "--bundle", str(bundle.bundle), "--load-support",
                          str(tmp_path / "thing.npz"), "--input", str(video), "--output", str(tmp_path / "vid")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "5 frame(s)" in out.stdout and (tmp_path / "vid" / "segmented.mp4").stat().st_size > 0
    out = subprocess.run(base + ["--input", "csi://0", "--output", str(tmp_path / "cam")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "GStreamer" in out.stderr
    out = subprocess.run(base + ["--input", str(frames), "--output", str(tmp_path / "g"), "--cuda-graph"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--cuda-graph needs --backend tensorrt" in out.stderr


def test_demo_runs_on_the_trained_model(trained_synthetic, tmp_path):
    checkpoint, _, _ = trained_synthetic
    out = subprocess.run(["sccan", "demo", "--workdir", str(tmp_path / "demo"), "--checkpoint", str(checkpoint),
                          "--episodes", "12", "--quiet"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "novel-class mIoU over 12 episodes" in out.stdout and "median latency" in out.stdout
    grid = cv2.imread(str(tmp_path / "demo" / "demo_overlays.png"))
    assert grid is not None and grid.shape[0] > 8 * 150
    assert "median latency per 640 x 480 frame" in out.stdout and "input 129 x 129" in out.stdout


def test_demo_with_the_shipped_model_prints_the_same_miou_twice(tmp_path):
    """The README's main job: the shipped checkpoint, no training; two runs in fresh folders agree."""
    from sccan.export.demo import DEMO_CHECKPOINT

    assert DEMO_CHECKPOINT.is_file() and DEMO_CHECKPOINT.stat().st_size <= 20 * 2**20
    runs = []
    for i in range(2):
        out = subprocess.run(["sccan", "demo", "--workdir", str(tmp_path / f"demo{i}"), "--episodes", "6", "--grid",
                              "0", "--quiet"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "using the shipped synthetic model" in out.stdout
        assert not (tmp_path / f"demo{i}" / "demo_overlays.png").exists()  # --grid 0: no picture
        runs.append(next(line for line in out.stdout.splitlines() if line.startswith("novel-class mIoU")))
    assert runs[0] == runs[1]


def test_samples(bundle, trained_synthetic, tmp_path):
    _, _, config = trained_synthetic
    episode = build_dataset(config["data"], "test", seed=6, episodes=1)[0]
    for name, array in (("ex.png", episode.support[0][..., ::-1]), ("ex_mask.png", episode.support_labels[0] * 255),
                        ("q.png", episode.query[..., ::-1])):
        cv2.imwrite(str(tmp_path / name), array)
    out = subprocess.run([sys.executable, str(ROOT / "samples" / "quickstart.py"), str(bundle.bundle),
                          str(tmp_path / "ex.png"), str(tmp_path / "ex_mask.png"), str(tmp_path / "q.png"),
                          str(tmp_path / "out.png")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "of the image" in out.stdout and (tmp_path / "out.png").is_file()

    sys.path.insert(0, str(ROOT / "samples"))
    try:
        import ros2_node
        import video_segment
    finally:
        sys.path.pop(0)
    seg = Segmenter(bundle.bundle)
    seg.add_class("thing", [episode.support[0][..., ::-1]], [episode.support_labels[0]])
    seg.save_support(tmp_path / "s.npz")
    video = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, episode.query.shape[1::-1])
    for _ in range(3):
        writer.write(episode.query[..., ::-1])
    writer.release()
    assert video_segment.main(str(bundle.bundle), str(tmp_path / "s.npz"), str(video), str(tmp_path / "o.mp4")) == 3

    rgb = np.ascontiguousarray(episode.query)
    array, color = ros2_node.image_to_array(rgb.shape[0], rgb.shape[1], "rgb8", rgb.shape[1] * 3, rgb.tobytes())
    mask, labels = ros2_node.process(seg, array, color)
    expected = seg.segment(rgb, color="rgb").label_map
    np.testing.assert_array_equal(labels, expected.astype(np.uint8))
    assert set(np.unique(mask)) <= {0, 255}
    with pytest.raises(ValueError, match="unsupported image encoding"):
        ros2_node.image_to_array(2, 2, "32FC1", 8, bytes(16))
    out = subprocess.run([sys.executable, str(ROOT / "samples" / "jetson_camera.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "CSI camera" in out.stdout
