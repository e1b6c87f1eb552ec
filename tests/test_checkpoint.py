"""Loading released checkpoints, the project's own format and backbone initialisation files."""

from __future__ import annotations

import pytest
import torch

from conftest import SMALL, episode
from reference_weights import recipe_state_dict
from sccan.sdk.errors import CheckpointError, SCCANError
from sccan.train.checkpoint import (infer_config, load_backbone_weights, load_model, read_checkpoint,
                                    save_checkpoint)
from sccan.train.model import build_model


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A file shaped like the authors' release: multi-GPU prefix, optimiser states beside it."""
    path = tmp_path_factory.mktemp("ckpt") / "train_epoch_200_0.6703.pth"
    state = {f"module.{k}": v for k, v in recipe_state_dict().items()}
    torch.save({"epoch": 200, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.005}]},
                "optimizer_swin": {"state": {}, "param_groups": []}}, path)
    return path


def test_released_checkpoint_loads_strictly_and_computes_the_reference(released):
    model = load_model(released)
    assert model.config.backbone == "resnet50" and model.config.embed_dim == 256
    reference = build_model("resnet50")
    reference.load_state_dict(recipe_state_dict())
    q, s, m = episode(k=1, size=33)
    torch.testing.assert_close(model(q, s, m), reference(q, s, m), rtol=0, atol=0)


def test_infers_resnet101_and_small_widths():
    r101 = build_model("resnet101").state_dict()
    assert infer_config(r101).backbone == "resnet101"
    small = build_model("resnet50", **SMALL).state_dict()
    cfg = infer_config(small)
    assert (cfg.backbone_width, cfg.embed_dim, cfg.num_blocks) == (8, 32, 4)


def test_project_checkpoint_round_trip_is_self_describing(tmp_path, small_model):
    path = save_checkpoint(small_model, tmp_path / "a" / "model.pt", epoch=3)
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_model(path)
    assert loaded.config == small_model.config
    assert read_checkpoint(path)["epoch"] == 3
    q, s, m = episode(k=2)
    torch.testing.assert_close(loaded(q, s, m), small_model(q, s, m), rtol=0, atol=0)


def test_missing_file_and_garbage_and_truncation(tmp_path, released):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(garbage)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(released.read_bytes()[: released.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(truncated)


def test_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(path)


def test_not_a_checkpoint_and_key_and_shape_errors_name_the_keys(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(path)
    state = recipe_state_dict()
    del state["down_query.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["cls_meta.3.bias"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert "down_query.0.weight" in message and "extra.weight" in message
    assert "cls_meta.3.bias: checkpoint (3,) vs model (2,)" in message
    assert isinstance(err.value, SCCANError)


def test_backbone_initialisation_file(tmp_path):
    body = build_model("resnet50", **SMALL).backbone.body
    state = {k: torch.randn_like(v) for k, v in body.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    path = tmp_path / "resnet50_v2.pth"
    torch.save(state, path)
    model = build_model("resnet50", **SMALL)
    load_backbone_weights(model, path)
    torch.testing.assert_close(model.backbone.body.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
    del state["layer1.0.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="layer1.0.conv1.weight"):
        load_backbone_weights(model, path)
