"""Training: loss, metrics, the synthetic set, exact resume, 2-process gloo, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from sccan.train.config import ConfigError, load_config
from sccan.train.data.synthetic import SyntheticFewShot, class_table
from sccan.train.evaluate import IoUMeter
from sccan.train.losses import dice_loss
from sccan.train.trainer import train, weights_digest
from sccan.train.checkpoint import load_model

#: A tiny, fast configuration: every module, random ResNet-50 body at width 8.
TINY = {
    "model": {"backbone": "resnet50", "backbone_width": 8, "grid": 8, "embed_dim": 16, "num_blocks": 2,
              "num_heads": 2, "window": 4, "aspp_dilations": [1, 2, 3]},
    "data": {"dataset": "synthetic", "size": 41, "shots": 1, "train_episodes": 16},
    "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "transformer_lr": 1e-3, "log_every": 1, "seed": 5},
    "eval": {"episodes": 4, "seed": 9},
}


def test_dice_loss_by_hand():
    logits = torch.zeros(1, 2, 1, 2)  # sigmoid 0.5 everywhere
    label = torch.tensor([[[1, 255]]])
    # channel 0: t = (0, 0): 1 - 0 / (0.5) = 1; channel 1: t = (1, 0): 1 - 2*0.5 / (0.5 + 1) = 1/3
    assert float(dice_loss(logits, label)) == pytest.approx(1 + 1 / 3)
    assert float(dice_loss(torch.zeros(2, 2, 1, 2), label.expand(2, 1, 2))) == pytest.approx(1 + 1 / 3)


def test_iou_meter_accumulates_per_class_and_ignores_255():
    meter = IoUMeter()
    meter.add(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 255]]), class_id=3)
    meter.add(np.array([[1, 0, 0, 0]]), np.array([[1, 1, 0, 0]]), class_id=3)
    meter.add(np.array([[0, 0]]), np.array([[1, 0]]), class_id=4)
    # class 3: intersection 1 + 1, union 2 + 2 -> 0.5 (accumulated, not averaged per episode)
    assert meter.per_class() == {3: 0.5, 4: 0.0}
    assert meter.miou == pytest.approx(0.25)
    # background: episode 1: pred bg {2}, truth bg {1, 2} -> I 1, U 2; episode 2: I 2, U 3; ep 3: I 1, U 2
    # foreground: I 2 (ep1 1, ep2 1), U 4 + 1 (ep 3 union {0})
    assert meter.fbiou == pytest.approx((4 / 7 + 2 / 5) / 2)


def test_synthetic_set_is_deterministic_and_splits_classes():
    a, b = SyntheticFewShot("test", size=65, episodes=3, seed=4), SyntheticFewShot("test", size=65, episodes=3, seed=4)
    for i in range(3):
        ea, eb = a[i], b[i]
        assert np.array_equal(ea.query, eb.query) and np.array_equal(ea.support_labels[0], eb.support_labels[0])
        assert ea.class_id in a.novel and ea.query_label.any() and ea.support_labels[0].any()
    train_set = SyntheticFewShot("train", size=65, episodes=2, seed=4)
    assert not set(train_set.base) & set(train_set.novel)
    train_set.set_epoch(1)
    assert not np.array_equal(train_set[0].query, SyntheticFewShot("train", size=65, episodes=2, seed=4)[0].query)
    table = class_table()
    assert len({(c.shape, c.texture, c.hue) for c in table}) == len(table)
    for attribute in ("shape", "texture", "hue"):  # no attribute alone identifies a class
        values = [getattr(c, attribute) for c in table]
        assert all(values.count(v) >= 2 for v in values)


def test_background_workers_give_the_same_batches():
    from sccan.train.trainer import episode_batches

    data = SyntheticFewShot("train", size=65, episodes=12, seed=2)
    lists = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    plain = list(episode_batches(data, lists, (0.0,) * 3, (1.0,) * 3, workers=0))
    threaded = list(episode_batches(data, lists, (0.0,) * 3, (1.0,) * 3, workers=2))
    assert len(plain) == len(threaded) == 4
    for a, b in zip(plain, threaded):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    partial = episode_batches(data, lists, (0.0,) * 3, (1.0,) * 3, workers=2)
    next(partial)
    partial.close()  # stopping early (an interrupt) shuts the threads down


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(bad)


def test_resume_continues_the_same_trajectory(tmp_path):
    full = train(load_config(None, {**TINY, "output": str(tmp_path / "full")}), progress=False)
    assert full.steps == 16
    config = load_config(None, {**TINY, "output": str(tmp_path / "split")})
    first = train(config, progress=False, stop_after=5)  # mid-epoch, as an interrupt would
    assert first.interrupted and first.steps == 5
    second = train(config, resume=first.output / "last.pt", progress=False)
    assert second.steps == 16
    assert weights_digest(load_model(second.output / "last.pt")) == weights_digest(load_model(full.output / "last.pt"))
    log = [json.loads(line) for line in (second.output / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 17))
    assert any("val_miou" in r for r in log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    config = tmp_path / "tiny.yaml"
    cfg = {**TINY, "train": {**TINY["train"], "epochs": 1}, "output": str(tmp_path / "ddp")}
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "sccan.sdk.cli", "train", "--config", str(config), "--quiet"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    digests = [(tmp_path / "ddp" / f"rank{r}.digest").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert digests[0].strip() == weights_digest(load_model(tmp_path / "ddp" / "last.pt"))


def test_train_and_eval_cli(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "output": str(tmp_path / "run")}))
    out = subprocess.run(["sccan", "train", "--config", str(config), "--max-steps", "3", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trained 3 steps" in out.stdout
    out = subprocess.run(["sccan", "eval", str(tmp_path / "run" / "last.pt"), "--config", str(config),
                          "--episodes", "3", "--output", str(tmp_path / "eval"), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mIoU" in out.stdout and (tmp_path / "eval" / "episodes.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["episodes"] == 3
    out = subprocess.run(["sccan", "train", "--config", str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_shipped_configs_load_and_build():

    from sccan.train.model import SCCANConfig

    from sccan.train.config import BUILTIN as root

    files = sorted(root.glob("*.yaml")) + sorted((root / "paper").glob("*.yaml"))
    assert len(files) >= 34
    for f in files:
        config = load_config(f)
        model = dict(config["model"])
        model.pop("pretrained_backbone", None)
        SCCANConfig(**model)  # a valid model configuration
        assert config["data"]["dataset"] in ("synthetic", "pascal", "coco", "folder", "mixed"), f
    paper = load_config("paper/coco_fold3_resnet50_5shot")
    assert paper["data"]["fold"] == 3 and paper["data"]["shots"] == 5 and paper["eval"]["episodes"] == 4000


def test_sigterm_checkpoints_and_the_run_resumes_to_the_same_weights(tmp_path):
    """A real SIGTERM to `sccan train`: it finishes the step, writes last.pt, exits with one line;
    resuming from that file reaches the weights of an uninterrupted run."""
    import signal
    import time

    cfg = {**TINY, "train": {**TINY["train"], "epochs": 6}}
    full = train(load_config(None, {**cfg, "output": str(tmp_path / "full")}), progress=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**cfg, "output": str(tmp_path / "run")}))
    proc = subprocess.Popen(["sccan", "train", "--config", str(config), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and sum('"loss"' in line for line in log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before the signal could be sent"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped by signal 15" in stderr and len(stderr.strip().splitlines()) == 1
    stopped = [json.loads(line)["step"] for line in log.read_text().splitlines() if "loss" in line][-1]
    assert stopped < full.steps
    resumed = train(load_config(config), resume=tmp_path / "run" / "last.pt", progress=False)
    assert resumed.steps == full.steps
    assert weights_digest(load_model(resumed.output / "last.pt")) == weights_digest(load_model(full.output / "last.pt"))
