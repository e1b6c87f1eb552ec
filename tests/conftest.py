"""Shared fixtures. Small model configurations keep the default suite fast on 2 CPU cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

torch = pytest.importorskip("torch")

#: A small but complete SCCAN: every module of the paper, narrow widths and a 16 x 16 grid.
#: The training seed and length of the synthetic model the slow tests train (see the learning test).
LEARNING_SEED = 7
LEARNING_EPOCHS = 5
SMALL = dict(backbone_width=8, grid=16, embed_dim=32, num_blocks=4, num_heads=4, window=4,
             aspp_dilations=(2, 3, 4))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow: the learning test (it trains the synthetic model), the "
                          "demo, full-size networks (about 14 minutes on 2 cores). CI runs them: "
                          "`python -m pytest --slow -m slow`")


def pytest_collection_modifyitems(config, items):
    """The default suite leaves the slow tests out (skipped, with the reason); ``--slow`` runs them."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow (trains or runs full-size models): run with --slow; CI runs them with "
                                   "`python -m pytest --slow -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_grad_deterministic():
    torch.manual_seed(0)
    with torch.no_grad():
        yield


def randomize_bn(model):
    """Give the frozen BatchNorms non-trivial statistics and affine maps (in place); returns model."""
    for name, buf in model.named_buffers():
        if name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            buf.normal_(0, 0.1)
        elif name.endswith(".weight"):
            buf.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def small_model():
    """A random-weight small ResNet-50 SCCAN (eval mode), with non-trivial BN statistics."""
    from sccan.train.model import build_model

    torch.manual_seed(0)
    return randomize_bn(build_model("resnet50", **SMALL))


#: How much ``decisive`` scales the classifier: the small random ResNet-50's probabilities spread
#: from 0.49-0.51 (std 0.004) to about 0.2-0.85 (std > 0.1), so a mistake anywhere before them shows.
DECISIVE_SCALE = 40.0


def decisive(model):
    """Scale the final classifier of a random model so that its outputs spread over pixels (in place;
    returns model). A random SCCAN's probabilities hardly move from 0.5: a constant passes any
    tolerance, and reversed mean/std or swapped colours move them 20-30 x less than a tolerance of
    1e-3. With the logits x 30 and no bias, half of a frame is background at 0.5 and the pipeline's
    mistakes move the output 10-1000 x more than float32 rounding does. (Its FP16 graphs fail the
    export's FP16 gate, 0.04 against 0.02: the scaled logits amplify FP16 storage rounding 40 x, so
    the bundles made from it are FP32 only.)"""
    with torch.no_grad():
        model.cls_meta[3].weight.mul_(DECISIVE_SCALE)
        model.cls_meta[3].bias.zero_()
    return model


@pytest.fixture(scope="session")
def small_export(tmp_path_factory):
    """(model, bundle path): the small random ResNet-50 SCCAN, made decisive, exported at 65 px, 3
    shots, 2 classes per decoder run. Shared by the SDK and CLI tests (one export per run)."""
    from sccan.export.exporter import export_bundle
    from sccan.train.model import build_model

    torch.manual_seed(0)
    model = decisive(randomize_bn(build_model("resnet50", **SMALL)))
    shared = os.environ.get("SCCAN_TEST_SMALL_BUNDLE")  # tests/test_mutants.py: the parent's export, reused
    if shared:
        return model, Path(shared)
    bundle = export_bundle(model, tmp_path_factory.mktemp("sdk") / "bundle", size=65, max_shots=3,
                           max_classes=2, check_episodes=1, fp16=False, progress=False).bundle
    return model, bundle


@pytest.fixture(scope="session")
def synthetic_export(tmp_path_factory):
    """The shipped synthetic model (Lite-0) exported at its 129 px, 2 shots, 2 classes per decode, with
    FP16 graphs and the plugin variant of the decoder (``--patch-align both``): one export per run for
    the fidelity, quantisation, TensorRT-host, plugin-fallback and GPU dry-run tests (read it; copy
    it to change it). A trained model: its probabilities spread over 0-1, so a constant or shifted
    output fails their comparisons; at 129 px its FP16 graphs pass the gate (at 65 and 97 px, noise
    frames move them by 0.023 and 0.149, over the 0.02 limit)."""
    from sccan.export.exporter import export_bundle

    shared = os.environ.get("SCCAN_TEST_SYNTHETIC_BUNDLE")  # tests/test_mutants.py: the parent's export
    if shared:
        return Path(shared)
    weights = Path(__file__).resolve().parents[1] / "train" / "weights" / "synthetic_lite0.pt"
    return export_bundle(weights, tmp_path_factory.mktemp("synthetic") / "bundle", size=129, max_shots=2,
                         max_classes=2, check_episodes=1, patch_align="both", progress=False).bundle


@pytest.fixture(scope="session")
def one_shot_export(tmp_path_factory):
    """(raw checkpoint, calibrated checkpoint, bundle): the small random ResNet-50 SCCAN saved, then
    slimmed with a presence threshold of 0.25, and that exported at 65 px for 1 shot and 1 class per
    decode, FP32 only (as `sccan demo` makes them): the lower edges of an export, and the threshold's
    way from checkpoint to bundle. Shared (read it; copy it to change it)."""
    from sccan.export.exporter import export_bundle
    from sccan.train.checkpoint import save_checkpoint, slim_checkpoint
    from sccan.train.model import build_model

    root = tmp_path_factory.mktemp("one_shot")
    torch.manual_seed(0)
    raw = save_checkpoint(randomize_bn(build_model("resnet50", **SMALL)), root / "raw.pt")
    calibrated = slim_checkpoint(raw, root / "calibrated.pt", presence_threshold=0.25)
    bundle = export_bundle(calibrated, root / "bundle", size=65, max_shots=1, max_classes=1, check_episodes=1,
                           fp16=False, progress=False).bundle
    return raw, calibrated, bundle


@pytest.fixture(scope="session")
def real_export(tmp_path_factory):
    """The shipped real-photo model (Lite-0 at its 321 px) for one class of one shot, FP32: the ROS 2
    node's and the web app's tests share it (read it; copy it to change it)."""
    from sccan.export.exporter import export_bundle
    from sccan.export.real_demo import REAL_CHECKPOINT, REAL_SIZE

    return export_bundle(REAL_CHECKPOINT, tmp_path_factory.mktemp("real") / "bundle", size=REAL_SIZE, max_shots=1,
                         max_classes=1, check_episodes=1, fp16=False, progress=False).bundle


def scene(seed: int, h: int = 50, w: int = 70):
    """A random BGR uint8 image and a 0/255 mask with one rectangle (what an SDK user passes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y:y + h // 3, x:x + w // 3] = 255
    return image, mask


def episode(k: int = 1, size: int = 65, batch: int = 1, seed: int = 0):
    """Random normalised images and 0/1/255 labels with a foreground rectangle per shot."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 3, size, size, generator=g)
    support = torch.randn(batch, k, 3, size, size, generator=g)
    masks = torch.zeros(batch, k, size, size)
    for b in range(batch):
        for s in range(k):
            y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            masks[b, s, y0:y0 + size // 3, x0:x0 + size // 3] = 1
    masks[..., -3:] = 255
    return query, support, masks


@pytest.fixture(scope="session")
def trained_synthetic(tmp_path_factory):
    """The synthetic model, trained once per test run with the shipped config, and its numbers.

    Returns (checkpoint path, train result, config). Shared by the learning test, the export test on
    the synthetic model, the demo and the CLI tests.
    """
    from sccan.train.config import load_config
    from sccan.train.trainer import train

    # Seed 7 and 5 epochs, not the shipped config's 123 and 4: see the learning test for why. One
    # validation, after the last epoch, instead of one per epoch (34 s less): on AVX-512, AVX2 and
    # unvectorised kernels the validation mIoU rose every epoch, so the last epoch was the best
    # checkpoint anyway, and without the other validations it is the same one (0.5738 both ways on
    # AVX-512: validation does not touch the training's state). The rest is the shipped config.
    config = load_config("synthetic_lite0", {"output": str(tmp_path_factory.mktemp("synthetic") / "run"),
                                             "train": {"seed": LEARNING_SEED, "epochs": LEARNING_EPOCHS},
                                             "eval": {"every": LEARNING_EPOCHS}})
    with torch.enable_grad():
        result = train(config, progress=False)
    return result.output / "best.pt", result, config
