""":class:`RemoteSegmenter`: the Segmenter's interface over Triton's HTTP or gRPC client, so an
application moves from one process to a fleet by changing one line::

    seg = Segmenter("bundle")                         # in process
    seg = RemoteSegmenter("triton-host:8000")         # served (HTTP; "host:8001", protocol="grpc")

Images are checked here as the Segmenter checks them (the same errors, before anything is sent);
what only the server can judge (unknown classes, damaged support files) comes back as the same
:mod:`sccan.sdk.errors` class the Segmenter raises. One RemoteSegmenter per thread.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sccan.sdk.errors import BadArgumentError, BadImageError, MissingFileError, SCCANError
from sccan.sdk.images import as_mask, as_rgb, check_color
from sccan.sdk.prompts import check_box, mask_from_prompt, masks_from_prompts, shot_prompts
from sccan.sdk.segmenter import Result, check_class_name, check_threshold, shot_lists

from .protocol import MODEL_NAME, OUTPUT_KINDS, PROTECTED, raise_remote

_TYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.object_): "BYTES"}


class RemoteSegmenter:
    """A Segmenter served by Triton (``sccan triton`` + ``sccan serve``).

    Args:
        url: ``host:port`` of the server's HTTP (default 8000) or gRPC (8001) endpoint.
        protocol: ``"http"`` or ``"grpc"``.
        model: the model's name in the repository.
        timeout: seconds a request may take.
        token: the server's token (``sccan serve --token-file``), sent with the requests that change
            its classes; or ``token_file``, a file holding it (its first line).
    """

    def __init__(self, url: str = "localhost:8000", protocol: str = "http", model: str = MODEL_NAME,
                 timeout: float = 60.0, token: str | None = None, token_file: str | os.PathLike | None = None):
        if token is not None and token_file is not None:
            raise BadArgumentError("give token or token_file, not both")
        if token_file is not None:
            token = read_token(token_file)
        self._token = token
        if protocol == "http":
            import tritonclient.http as client

            self._client = client.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        elif protocol == "grpc":
            import tritonclient.grpc as client

            self._client = client.InferenceServerClient(url)
        else:
            raise BadArgumentError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        from tritonclient.utils import InferenceServerException

        self._module, self._exception = client, InferenceServerException
        self.protocol, self.model, self.timeout = protocol, model, timeout
        self._lock = threading.Lock()

    def _call(self, command: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        c = self._module
        tensors = []
        if self._token is not None and command in PROTECTED:
            inputs = {**inputs, "TOKEN": np.array([self._token.encode()], dtype=np.object_)}
        for name, value in {"COMMAND": np.array([command.encode()], dtype=np.object_), **inputs}.items():
            value = value[None]  # the batch dimension
            tensor = c.InferInput(name, list(value.shape), _TYPES[value.dtype])
            if self.protocol == "http":
                tensor.set_data_from_numpy(value, binary_data=True)
            else:
                tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        wanted = [c.InferRequestedOutput(n, binary_data=True) if self.protocol == "http" else c.InferRequestedOutput(n)
                  for n in outputs]
        try:
            with self._lock:
                if self.protocol == "grpc":
                    result = self._client.infer(self.model, tensors, outputs=wanted, client_timeout=self.timeout)
                else:
                    result = self._client.infer(self.model, tensors, outputs=wanted)
        except self._exception as exc:
            raise_remote(exc.message() or str(exc))
        return {n: result.as_numpy(n)[0] for n in outputs}

    @staticmethod
    def _names(names: Sequence[str]) -> np.ndarray:
        return np.array([n.encode() for n in names], dtype=np.object_)

    @staticmethod
    def _decode(values: np.ndarray) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]

    # -- the Segmenter's interface ---------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        return self._decode(self._call("classes", {}, ["CLASSES"])["CLASSES"])

    def mask_from_prompt(self, image: np.ndarray, box: Sequence[float] | None = None,
                         points: Sequence[Sequence[float]] | None = None,
                         negative_points: Sequence[Sequence[float]] | None = None, color: str = "bgr") -> np.ndarray:
        """The mask ``add_class`` makes from a prompt (as :meth:`Segmenter.mask_from_prompt`, made here:
        no model weights are needed)."""
        _check_uint8(image, "image")
        return mask_from_prompt(as_rgb(image, color, "image"), box=box, points=points, negative_points=negative_points)

    def add_class(self, name: str, images: Sequence[np.ndarray] | np.ndarray,
                  masks: Sequence[np.ndarray] | np.ndarray | None = None, color: str = "bgr", *,
                  boxes: Sequence[Sequence[float]] | None = None,
                  points: Sequence[Sequence[Sequence[float]] | None] | None = None,
                  negative_points: Sequence[Sequence[Sequence[float]] | None] | None = None) -> None:
        """Register (or replace) class ``name`` on the server, for every instance and replica, from a mask
        per image or, as :meth:`Segmenter.add_class`, from prompts: ``boxes`` alone travel as boxes
        (the server makes the masks); with clicks, the masks are made here and sent."""
        check_color(color)
        images, prompts = shot_prompts(name, images, masks, boxes, points, negative_points)
        check_class_name(name)
        encoded_images, rgbs = [], []
        for k, image in enumerate(images):
            _check_uint8(image, f"class {name!r} shot {k} image")  # before as_rgb, which warns on floats
            rgbs.append(as_rgb(image, color, f"class {name!r} shot {k} image"))
            encoded_images.append(_png(cv2.cvtColor(rgbs[-1], cv2.COLOR_RGB2BGR)))
        inputs = {"CLASS_NAMES": self._names([name]), "SUPPORT_IMAGES": np.array(encoded_images, dtype=np.object_)}
        if prompts is not None and points is None and negative_points is None:
            for k, (rgb, box) in enumerate(zip(rgbs, boxes)):
                try:  # the SDK's checks of a box, here, before anything is sent
                    check_box(box, *rgb.shape[:2])
                except SCCANError as exc:
                    raise type(exc)(f"class {name!r} shot {k}: {exc}") from None
            inputs["SUPPORT_BOXES"] = np.array([[float(v) for v in box] for box in boxes], np.float32)
        else:
            if prompts is not None:
                masks = masks_from_prompts(name, rgbs, prompts)
            images, masks = shot_lists(name, images, masks)
            inputs["SUPPORT_MASKS"] = np.array(
                [_png((as_mask(mask, rgb.shape[:2], f"class {name!r} shot {k} mask") > 0).astype(np.uint8) * 255)
                 for k, (rgb, mask) in enumerate(zip(rgbs, masks))], dtype=np.object_)
        self._call("add_class", inputs, ["CLASSES"])

    def remove_class(self, name: str) -> None:
        self._call("remove_class", {"CLASS_NAMES": self._names([name])}, ["CLASSES"])

    def segment(self, image: np.ndarray, classes: Sequence[str] | None = None, threshold: float = 0.5,
                color: str = "bgr", output: str = "probabilities", presence_threshold: float | None = None) -> Result:
        """Segment one frame on the server. ``output="masks"`` transfers masks only (a quarter of
        the bytes); the Result's probabilities are then empty. ``presence_threshold`` as the
        Segmenter's (default: the served bundle's)."""
        threshold = check_threshold(threshold)
        if presence_threshold is not None:
            presence_threshold = check_threshold(presence_threshold, "presence_threshold")
        if output not in OUTPUT_KINDS:
            raise BadArgumentError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
        _check_uint8(image, "image")  # before as_rgb, which would first warn about a float image's scale
        rgb = as_rgb(image, color, "image")
        inputs = {"IMAGE": np.ascontiguousarray(rgb[..., ::-1]), "THRESHOLD": np.array([threshold], np.float32),
                  "OUTPUT_KIND": np.array([output.encode()], dtype=np.object_)}
        if presence_threshold is not None:
            inputs["PRESENCE_THRESHOLD"] = np.array([presence_threshold], np.float32)
        if classes is not None:
            inputs["CLASS_NAMES"] = self._names([classes] if isinstance(classes, str) else list(classes))
        planes = "PROBABILITIES" if output == "probabilities" else "MASKS"
        out = self._call("segment", inputs, [planes, "LABEL_MAP", "CLASSES", "INFO"])
        names = self._decode(out["CLASSES"])
        if output == "probabilities":
            probabilities = {n: out[planes][i] for i, n in enumerate(names)}
            masks = {n: p > threshold for n, p in probabilities.items()}
        else:
            probabilities, masks = {}, {n: out[planes][i].astype(bool) for i, n in enumerate(names)}
        info = json.loads(_first(out["INFO"]))
        result = Result(probabilities, masks, out["LABEL_MAP"], names, presence=info.get("presence", {}),
                        presence_threshold=info.get("presence_threshold", 0.0))
        result.timings = info["timings"]
        if output == "probabilities":  # a class judged absent has an empty mask, as in process
            for n in names:
                if n in result.presence and not result.present(n):
                    masks[n] = np.zeros_like(masks[n])
        return result

    def save_support(self, path: str | os.PathLike, classes: Sequence[str] | None = None) -> Path:
        """Write the server's registered classes (all, or ``classes``) to a local support file, atomically."""
        path = Path(path)
        if path.is_dir():
            raise BadArgumentError(f"{path} is a directory: give a file path for the support features")
        inputs = {} if classes is None else {"CLASS_NAMES": self._names([classes] if isinstance(classes, str)
                                                                         else list(classes))}
        data = _first(self._call("save_support", inputs, ["SUPPORT_FILE_OUT"])["SUPPORT_FILE_OUT"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def load_support(self, path: str | os.PathLike) -> list[str]:
        """Register the classes of a local support file on the server; returns their names."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"support file {path} does not exist" if not path.exists() else
                                   f"support file {path} is a directory, not a file from save_support()")
        out = self._call("load_support", {"SUPPORT_FILE": np.array([path.read_bytes()], dtype=np.object_)},
                         ["CLASSES"])
        return self._decode(out["CLASSES"])

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RemoteSegmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_uint8(image: object, what: str) -> None:
    dtype = getattr(image, "dtype", None)
    if dtype is not None and dtype != np.uint8:
        raise BadImageError(f"{what}: RemoteSegmenter sends 8-bit images, this one is {dtype}: convert it "
                            "(np.clip(image, 0, 255).astype(np.uint8)), or use the in-process Segmenter")


def read_token(path: str | os.PathLike) -> str:
    """The token in a token file: its first line, stripped; an error naming the file if there is none."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MissingFileError(f"token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadArgumentError(f"token file {path} cannot be read: {exc}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise BadArgumentError(f"token file {path} must hold a token of at least 16 characters on its first line "
                               "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE)")
    return token


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise BadImageError("could not encode the image as PNG")
    return data.tobytes()


def _first(values: np.ndarray) -> bytes:
    value = values.reshape(-1)[0]
    return value if isinstance(value, bytes) else bytes(value)


__all__ = ["RemoteSegmenter", "SCCANError"]
