"""The published ResNet-50 SCCAN's numbers, stage by stage (shared/reference/parity_r50_129.npz)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from reference_weights import REFERENCE, official_keys, recipe_state_dict
from sccan.train.model import build_model

FIXTURE = REFERENCE / "parity_r50_129.npz"


@pytest.fixture(autouse=True)
def _fixture_present():
    """Skip where ../shared is absent (a clone elsewhere), but fail in CI, where it must be present:
    a silent skip there would hide the only check against the published network."""
    if not FIXTURE.exists():
        message = f"{FIXTURE} not found (shared/ beside the checkout)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def relative_error(got: torch.Tensor, expected: np.ndarray) -> float:
    got = got.detach().double().numpy().reshape(expected.shape)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def run_with_probes(model, data, shots):
    """Run the model on the fixture's inputs, recording prior, alignment indices and block outputs."""
    probes = {}
    hooks = [model.prior.register_forward_hook(lambda m, i, o: probes.__setitem__("prior", o))]
    for b in range(2):
        hooks.append(model.transformer.blocks[b].align.register_forward_hook(
            lambda m, i, o, b=b: probes.__setitem__(f"index{b}", o[-1])))
    for b in (0, 7):
        hooks.append(model.transformer.blocks[b].register_forward_hook(
            lambda m, i, o, b=b: probes.__setitem__(f"q{b}", o[0])))
    dtype = next(model.parameters()).dtype
    logits = model(torch.from_numpy(data["query"]).to(dtype),
                   torch.from_numpy(data["support_images"][:, :shots]).to(dtype),
                   torch.from_numpy(data["support_masks"][:, :shots]).to(dtype))
    for h in hooks:
        h.remove()
    return logits, probes


@pytest.fixture(scope="module")
def reference_model():
    model = build_model("resnet50")
    model.load_state_dict(recipe_state_dict(), strict=True)
    return model


@pytest.fixture(scope="module")
def data():
    return dict(np.load(FIXTURE, allow_pickle=False))


def test_official_key_list_loads_strictly(reference_model):
    names = [n for n, _ in official_keys("resnet50")]
    assert list(reference_model.state_dict()) == names


@pytest.mark.parametrize("shots", [1, 2])
def test_matches_published_network_float32(reference_model, data, shots):
    tag = f"{shots}shot"
    logits, probes = run_with_probes(reference_model, data, shots)
    assert relative_error(logits, data[f"logits_{tag}"]) < 1e-5
    # On this input the prior before its min-max stretch spans only 0.330..0.349, so the stretch
    # multiplies float32 rounding ~50x; the float64 test below holds the prior to 1e-5.
    assert relative_error(probes["prior"], data[f"prior_{tag}"]) < 1e-4
    for b in range(2):
        np.testing.assert_array_equal(probes[f"index{b}"].numpy(), data[f"align_index_block{b}_{tag}"])
    if shots == 1:
        for b in (0, 7):
            assert relative_error(probes[f"q{b}"], data[f"q_after_block{b}"]) < 1e-5


def test_matches_published_network_float64(reference_model, data):
    model = build_model("resnet50").double()
    model.load_state_dict({k: v.double() for k, v in recipe_state_dict().items()})
    for shots in (1, 2):
        tag = f"{shots}shot"
        logits, probes = run_with_probes(model, data, shots)
        assert relative_error(logits, data[f"logits_{tag}"]) < 1e-5
        assert relative_error(probes["prior"], data[f"prior_{tag}"]) < 1.5e-5
