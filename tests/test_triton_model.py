"""The Triton model's ``execute`` in process, with a stand-in for Triton's ``triton_python_backend_utils``:
what a real server's dynamic batcher hands it (several requests at once) runs as one batch with the
in-process results, and one bad frame in a batch fails alone. (``tests/test_triton.py`` runs the
real tritonserver; its batcher only groups frames of one shape, so a frame that fails on its own
cannot be planted through it.)"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from conftest import scene
from sccan.sdk import Segmenter
from sccan.serve.triton_model import TritonPythonModel


class _Tensor:
    def __init__(self, name: str, value: np.ndarray):
        self.name, self.value = name, value

    def as_numpy(self) -> np.ndarray:
        return self.value


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name: t.value[0] for t in output_tensors}  # drop the batch dimension
        self.error = error


PB = types.SimpleNamespace(
    Tensor=_Tensor, InferenceResponse=_Response, TritonError=lambda message: message,
    get_input_tensor_by_name=lambda request, name: (_Tensor(name, request[name][None]) if name in request else None))


def segment_request(image: np.ndarray) -> dict[str, np.ndarray]:
    return {"COMMAND": np.array([b"segment"], dtype=np.object_), "IMAGE": image}


@pytest.fixture
def model(small_export):
    seg = Segmenter(small_export[1])
    for i, name in enumerate(["cup", "rocket"]):
        seg.add_class(name, [scene(60 + i)[0]], [scene(60 + i)[1]])
    served = TritonPythonModel()
    served.pb, served.segmenter = PB, seg
    served.store = types.SimpleNamespace(sync=lambda: None)
    return served


def test_requests_handed_over_together_run_as_one_batch(model):
    frames = [scene(70 + i)[0] for i in range(3)]
    responses = model.execute([segment_request(f) for f in frames])
    for frame, response in zip(frames, responses):
        assert response.error is None
        info = json.loads(response.outputs["INFO"][0])
        assert info["batch"] == 3 and info["timings"]["frames"] == 3  # one backbone run for the three
        want = model.segmenter.segment(frame)
        np.testing.assert_allclose(response.outputs["PROBABILITIES"],
                                   np.stack([want.probabilities[n] for n in want.classes]), atol=1e-6)
        np.testing.assert_array_equal(response.outputs["LABEL_MAP"], want.label_map)


def test_one_bad_frame_in_a_batch_fails_alone(model):
    good = [scene(80)[0], scene(81)[0]]
    bad = np.zeros((0, 70, 3), np.uint8)  # empty: refused by the Segmenter
    responses = model.execute([segment_request(good[0]), segment_request(bad), segment_request(good[1])])
    assert responses[1].error.startswith("SCCAN BadImageError")
    for frame, response in zip(good, (responses[0], responses[2])):
        assert response.error is None
        want = model.segmenter.segment(frame)
        np.testing.assert_allclose(response.outputs["PROBABILITIES"],
                                   np.stack([want.probabilities[n] for n in want.classes]), atol=1e-6)
    # and a request without an image, beside a good one
    responses = model.execute([{"COMMAND": np.array([b"segment"], dtype=np.object_)}, segment_request(good[0])])
    assert responses[0].error.startswith("SCCAN BadImageError") and responses[1].error is None
