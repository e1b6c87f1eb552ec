"""The Triton Python-backend model that serves a bundle through :class:`~sccan.sdk.Segmenter`.

Each model instance holds one Segmenter. Registered classes live as one support file per class in
the support directory (written atomically and stamped by ``save_support``); every instance, and
every replica that shares the directory, brings its classes in line with the directory before each
execution, and a restarted server loads them again. Frames of several requests with the same
classes and threshold run their backbone together (``Segmenter.segment_batch``). A bad request gets
a Triton error with our message (``SCCAN <ErrorClass>: ...``); the model keeps serving. Classes
are listed, and segmented when none are named, in name order (every instance alike).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from sccan.sdk import Segmenter
from sccan.sdk.errors import (BadArgumentError, BadImageError, BadMaskError, CorruptCacheError, SCCANError,
                              UnauthorizedError)

from .protocol import COMMANDS, OUTPUT_KINDS, PROTECTED, TOKEN_ENV, error_message

SUFFIX = ".npz"


class SupportStore:
    """Classes as per-class support files in one directory, kept in step with a Segmenter."""

    def __init__(self, directory: Path, segmenter: Segmenter):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segmenter = segmenter
        self.seen: dict[str, tuple[int, int]] = {}  # file name -> (mtime_ns, size)
        self.names: dict[str, list[str]] = {}  # file name -> classes it holds
        self.lock = threading.Lock()

    def path_for(self, name: str) -> Path:
        return self.directory / (quote(name, safe="") + SUFFIX)

    def sync(self) -> None:
        """Load new or changed files, drop classes whose file is gone. A file that does not load
        is reported on stderr and skipped, never fatal."""
        with self.lock:
            present = {}
            for entry in os.scandir(self.directory):
                if entry.name.startswith(".") or not entry.name.endswith(SUFFIX) or not entry.is_file():
                    continue
                stat = entry.stat()
                present[entry.name] = (stat.st_mtime_ns, stat.st_size)
            for gone in set(self.seen) - set(present):
                for name in self.names.pop(gone, []):
                    if name in self.segmenter.classes:
                        self.segmenter.remove_class(name)
                del self.seen[gone]
            for file, stamp in present.items():
                if self.seen.get(file) == stamp:
                    continue
                try:
                    names = self.segmenter.load_support(self.directory / file)
                except (SCCANError, OSError) as exc:
                    print(f"sccan triton model: skipping support file {file}: {exc}", file=sys.stderr)
                    names = []
                for old in set(self.names.get(file, [])) - set(names):
                    if old in self.segmenter.classes:
                        self.segmenter.remove_class(old)
                self.seen[file], self.names[file] = stamp, names

    def _record(self, path: Path, names: list[str]) -> None:
        stat = path.stat()
        self.seen[path.name], self.names[path.name] = (stat.st_mtime_ns, stat.st_size), names

    def save(self, name: str) -> None:
        with self.lock:
            path = self.segmenter.save_support(self.path_for(name), [name])
            self._record(path, [name])

    def remove(self, name: str) -> None:
        with self.lock:
            self.segmenter.remove_class(name)
            path = self.path_for(name)
            path.unlink(missing_ok=True)
            self.seen.pop(path.name, None)
            self.names.pop(path.name, None)


def _decode_png(data: bytes, what: str, flags: int) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise (BadMaskError if "mask" in what else BadImageError)(f"{what} is not an image the server can decode "
                                                                  "(send PNG)")
    return image


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"])
        bundle = model_dir / str(args["model_version"]) / params.get("bundle", "bundle")
        support = Path(params.get("support_dir") or "supports")
        if not support.is_absolute():
            support = model_dir / support
        device = int(args.get("model_instance_device_id") or 0)
        backend: Any = params.get("backend") or "onnxruntime"
        precision = params.get("precision") or None
        if backend == "triton-bls":  # the graphs are the repository's sccan_<graph> models
            from sccan.sdk.bundle import load_bundle

            from .bls import TritonBLSBackend

            backend = TritonBLSBackend(load_bundle(bundle, verify=False), precision or "fp32")
        self.segmenter = Segmenter(bundle, backend=backend, device=device, precision=precision,
                                   threads=int(params["threads"]) if params.get("threads") else None)
        self.store = SupportStore(support, self.segmenter)
        self.store.sync()
        # sccan serve --token-file: the token's sha256, handed over in the environment (never the token).
        self.token_sha256 = os.environ.get(TOKEN_ENV) or None
        if self.segmenter.backend.name != "triton-bls":  # warm-up: the first run allocates and plans
            size = self.segmenter.size
            self.segmenter.backend.run("backbone", {"images": np.zeros((1, 3, size, size), np.float32)})

    # -- helpers -------------------------------------------------------------------------------------

    def _input(self, request: Any, name: str) -> np.ndarray | None:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()[0]  # drop the batch dimension

    def _text(self, request: Any, name: str, default: str | None = None) -> str | None:
        value = self._input(request, name)
        return default if value is None else _str(value.reshape(-1)[0])

    def _names(self, request: Any) -> list[str] | None:
        value = self._input(request, "CLASS_NAMES")
        return None if value is None else [_str(v) for v in value.reshape(-1)]

    def _response(self, outputs: dict[str, np.ndarray]) -> Any:
        return self.pb.InferenceResponse([self.pb.Tensor(k, v[None]) for k, v in outputs.items()])

    def _error(self, exc: BaseException) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(error_message(exc)))

    def _classes(self, names: list[str]) -> np.ndarray:
        return np.array([n.encode() for n in names], dtype=np.object_)

    def _registered(self) -> list[str]:
        """The classes, sorted by name: instances load them from the directory in any order, and
        every instance must answer alike."""
        return sorted(self.segmenter.classes)

    # -- commands ------------------------------------------------------------------------------------

    def _authorize(self, command: str, request: Any) -> None:
        """With a token set, the commands that change the classes need it (compared in constant time)."""
        if self.token_sha256 is None or command not in PROTECTED:
            return
        import hashlib
        import hmac

        token = self._input(request, "TOKEN")
        given = hashlib.sha256(_bytes(token.reshape(-1)[0])).hexdigest() if token is not None else ""
        if not hmac.compare_digest(given, self.token_sha256):
            raise UnauthorizedError(f"{command} needs this server's token (RemoteSegmenter(..., token=...)); "
                                    + ("the request had none" if token is None else "the request's token is wrong"))

    def _command(self, command: str, request: Any) -> dict[str, np.ndarray]:
        seg, store = self.segmenter, self.store
        self._authorize(command, request)
        if command == "classes":
            return {"CLASSES": self._classes(self._registered())}
        if command == "add_class":
            names = self._names(request) or []
            if len(names) != 1:
                raise BadArgumentError(f"add_class takes one class name, got {names}")
            images = [_decode_png(_bytes(b), f"support image {k}", 1)
                      for k, b in enumerate(self._input(request, "SUPPORT_IMAGES").reshape(-1))]
            encoded, boxes = self._input(request, "SUPPORT_MASKS"), self._input(request, "SUPPORT_BOXES")
            if (encoded is None) == (boxes is None):
                raise BadArgumentError("add_class needs SUPPORT_MASKS or SUPPORT_BOXES (one per image), not both")
            if boxes is not None:  # the masks made here, as Segmenter.add_class(boxes=...) makes them
                seg.add_class(names[0], images, boxes=[tuple(float(v) for v in box) for box in boxes.reshape(-1, 4)])
            else:
                seg.add_class(names[0], images, [_decode_png(_bytes(b), f"support mask {k}", 0)
                                                 for k, b in enumerate(encoded.reshape(-1))])
            store.save(names[0])
            return {"CLASSES": self._classes(self._registered())}
        if command == "remove_class":
            names = self._names(request) or []
            if len(names) != 1:
                raise BadArgumentError(f"remove_class takes one class name, got {names}")
            store.remove(names[0])
            return {"CLASSES": self._classes(self._registered())}
        if command == "load_support":
            data = self._input(request, "SUPPORT_FILE")
            if data is None:
                raise BadArgumentError("load_support needs SUPPORT_FILE")
            fd, tmp = tempfile.mkstemp(dir=store.directory, prefix=".upload-", suffix=SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_bytes(data.reshape(-1)[0]))
                names = seg.load_support(tmp)
            except CorruptCacheError as exc:
                raise CorruptCacheError(str(exc).replace(tmp, "the uploaded support file")) from None
            finally:
                Path(tmp).unlink(missing_ok=True)
            for name in names:
                store.save(name)
            return {"CLASSES": self._classes(names)}
        if command == "save_support":
            fd, tmp = tempfile.mkstemp(prefix=".sccan-support-", suffix=SUFFIX)
            os.close(fd)
            try:
                seg.save_support(tmp, self._names(request))
                data = Path(tmp).read_bytes()
            finally:
                Path(tmp).unlink(missing_ok=True)
            return {"SUPPORT_FILE_OUT": np.array([data], dtype=np.object_)}
        raise BadArgumentError(f"unknown command {command!r}; commands: {COMMANDS}")

    def _segment(self, items: list[tuple[int, np.ndarray]], classes: list[str] | None, threshold: float,
                 kind: str, presence_threshold: float | None = None) -> dict[int, Any]:
        """Frames with the same classes and thresholds: one backbone run for all of them. Per
        request index: its outputs, or the error of its frame."""
        try:
            results = self.segmenter.segment_batch([image for _, image in items], classes, threshold,
                                                   presence_threshold=presence_threshold)
        except SCCANError:
            if len(items) == 1:
                raise
            # one bad frame must not fail the others: each on its own, to find it
            out: dict[int, Any] = {}
            for i, image in items:
                try:
                    out.update(self._segment([(i, image)], classes, threshold, kind, presence_threshold))
                except SCCANError as exc:
                    out[i] = exc
            return out
        out = {}
        for (i, _), r in zip(items, results):
            stacked = np.stack([(r.probabilities if kind == "probabilities" else r.masks)[n] for n in r.classes])
            info = {"timings": r.timings, "batch": len(items), "presence": r.presence,
                    "presence_threshold": r.presence_threshold}
            out[i] = {"PROBABILITIES" if kind == "probabilities" else "MASKS": stacked, "LABEL_MAP": r.label_map,
                      "CLASSES": self._classes(r.classes),
                      "INFO": np.array([json.dumps(info).encode()], dtype=np.object_)}
        return out

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        try:
            self.store.sync()
        except Exception as exc:  # noqa: BLE001 - the model must keep serving
            return [self._error(exc) for _ in requests]
        groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            try:
                command = self._text(request, "COMMAND")
                if command != "segment":
                    responses[i] = self._response(self._command(command, request))
                    continue
                image = self._input(request, "IMAGE")
                if image is None:
                    raise BadImageError("segment needs IMAGE (H x W x 3 uint8, BGR)")
                threshold = self._input(request, "THRESHOLD")
                kind = self._text(request, "OUTPUT_KIND", "probabilities")
                if kind not in OUTPUT_KINDS:
                    raise BadArgumentError(f"OUTPUT_KIND must be one of {OUTPUT_KINDS}, got {kind!r}")
                names = self._names(request) or self._registered()
                presence = self._input(request, "PRESENCE_THRESHOLD")
                key = (tuple(names), float(threshold.reshape(-1)[0]) if threshold is not None
                       else 0.5, kind, float(presence.reshape(-1)[0]) if presence is not None else None)
                groups.setdefault(key, []).append((i, image))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error
                responses[i] = self._error(exc)
        for (names, threshold, kind, presence), items in groups.items():
            try:
                for i, outputs in self._segment(items, list(names), threshold, kind, presence).items():
                    responses[i] = self._error(outputs) if isinstance(outputs, Exception) else self._response(outputs)
            except Exception as exc:  # noqa: BLE001
                for i, _ in items:
                    responses[i] = self._error(exc)
        return responses

    def finalize(self) -> None:
        self.segmenter = None


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else bytes(value)


def _str(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
