"""``Segmenter``: register a few examples of an object once, then segment it in every frame.

    from sccan.sdk import Segmenter
    seg = Segmenter("bundle/")                      # ONNX Runtime on this CPU, or TensorRT engines
    seg.add_class("mug", [image_bgr], [mask])      # 1..K shots; runs the support branch once
    result = seg.segment(frame_bgr)                 # one backbone run + one batched decode
    result.masks["mug"], result.label_map, result.overlay(frame_bgr)

Thread safety: a Segmenter may be shared between threads. Registration and removal take a lock;
``segment`` reads the support cache under the lock and then runs without it. ONNX Runtime runs
frames of several threads concurrently; the TensorRT backend has one execution context per engine
and runs one frame at a time. ``clone()`` gives a Segmenter that shares the loaded graphs (and,
for TensorRT, has its own execution contexts and CUDA stream, so clones run in parallel) with its
own copy of the support cache. Results do not depend on interleaving.

The support cache is kept twice: as host arrays (what ``save_support`` writes) and, for the
class batches ``segment`` decodes, resident where the backend computes (device memory for
TensorRT and ONNX Runtime's CUDA provider), built on first use and reused while the registered
classes stay the same. Where the backend keeps classes apart (the split INT8 decoder on the CPU),
what it keeps of a class (its product session) is made by ``add_class`` / ``load_support``, not by
the first frame after them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from typing import Any
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .backends import Backend, OnnxRuntimeBackend
from .bundle import PRECISIONS, Bundle, load_bundle
from .errors import (BadArgumentError, BadImageError, BadMaskError, BundleMismatchError, CorruptCacheError,
                     EmptyMaskError, MissingFileError, SCCANError, UnknownClassError)
from .images import as_mask, as_rgb, check_color
from .memory import release_freed_memory, reuse_freed_memory
from .preprocess import frame_probability, normalize, resize_image, resize_label
from .presence import presence_scores
from .prompts import mask_from_prompt, masks_from_prompts, shot_prompts
from .schema import BLOCK_FIELDS, GLOBAL_FIELDS, real_shots, stack_classes

BACKENDS = ("auto", "onnxruntime", "tensorrt")


class UngatedWarning(UserWarning):
    """A bundle's INT8 graphs were written without passing the accuracy gate (``--skip-gate``)."""


SUPPORT_FORMAT = "sccan-support"
SUPPORT_VERSION = 1

#: Colours (BGR) of classes 1, 2, ... in overlays.
PALETTE = ((60, 60, 255), (60, 200, 60), (255, 120, 40), (0, 200, 255), (255, 60, 200), (200, 200, 0),
           (120, 60, 255), (0, 140, 255))


#: The smallest object a support mask may show, in pixels at the network's input size.
MIN_OBJECT_PIXELS = 4


def check_class_name(name: object) -> str:
    """``name`` if it can name a class: a non-empty string (not only spaces)."""
    if not isinstance(name, str) or not name.strip():
        raise BadArgumentError(f"a class name must be a non-empty string, got {name!r}")
    return name


def shot_lists(name: str, images: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``add_class``'s examples as two lists of equal length (a single image or mask may be given
    bare), after checking the class name; BadImageError / BadMaskError otherwise."""
    check_class_name(name)
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images]
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    images, masks = list(images), list(masks)
    if not images:
        raise BadImageError(f"class {name!r}: give at least one example image")
    if len(images) != len(masks):
        raise BadMaskError(f"class {name!r}: {len(images)} images but {len(masks)} masks")
    return images, masks


def check_threshold(threshold: object, what: str = "threshold") -> float:
    """``threshold`` as a float within [0, 1], else :class:`BadArgumentError` (NaN included)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or \
            not 0.0 <= float(threshold) <= 1.0:
        raise BadArgumentError(f"{what} must be a probability within [0, 1], got {threshold!r}")
    return float(threshold)


@dataclass
class Result:
    """What :meth:`Segmenter.segment` returns, at the frame's own size.

    Attributes:
        probabilities: class name -> H x W float32 foreground probability.
        masks: class name -> H x W bool (probability above the threshold).
        label_map: H x W int32: 0 = background, i = the i-th requested class (the most probable
            present class where several are above the threshold).
        classes: the requested class names, in label-map order.
        timings: seconds per stage (preprocess, backbone, decode, postprocess, total).
        presence: class name -> the probability that the object is in the frame at all
            (:mod:`sccan.sdk.presence`). A class whose presence is below the presence threshold
            has an empty mask and no label-map pixels (its probabilities are kept).
    """

    probabilities: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    label_map: np.ndarray
    classes: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    presence: dict[str, float] = field(default_factory=dict)
    presence_threshold: float = 0.0

    def present(self, name: str) -> bool:
        """Whether class ``name`` was judged present (presence at or above the presence threshold;
        its mask may still be empty at a high pixel threshold)."""
        if name not in self.presence:
            raise UnknownClassError(f"no class {name!r} in this result; it holds {self.classes}")
        return self.presence[name] >= self.presence_threshold

    def overlay(self, image: np.ndarray, color: str = "bgr", alpha: float = 0.5) -> np.ndarray:
        """``image`` (uint8, same colour order) with each class's mask tinted, outlined in its colour
        between a black and a white line (visible on any background, a red object included), and its
        name written on a dark box kept inside the frame."""
        rgb = as_rgb(image, color)
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
        out = (rgb if color == "rgb" else rgb[..., ::-1]).copy()
        h, w = out.shape[:2]
        for i, name in enumerate(self.classes):
            mask = self.label_map == i + 1
            if not mask.any():
                continue
            bgr = np.array(PALETTE[i % len(PALETTE)], np.float32)
            tint = tuple(float(v) for v in (bgr[::-1] if color == "rgb" else bgr))
            out[mask] = ((1 - alpha) * out[mask] + alpha * np.array(tint, np.float32)).astype(np.uint8)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, (0, 0, 0), 5)
            cv2.drawContours(out, contours, -1, (255, 255, 255), 3)
            cv2.drawContours(out, contours, -1, tint, 1)
            ys, xs = np.nonzero(mask)
            scale, thick = label_scale(h, w)
            (tw, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            if tw > w - 6:  # a narrow frame: shrink the name to fit (down to a third)
                scale = max(scale / 3, scale * (w - 6) / tw)
                (tw, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            pad = 2 * thick
            x = int(min(max(0, xs.min()), max(0, w - tw - 2 * pad)))
            y = int(min(max(th + 2 * pad, ys.min() - 2 * pad), max(th + 2 * pad, h - base - pad)))
            cv2.rectangle(out, (x, y - th - pad - 1), (x + tw + pad + 1, y + base), (0, 0, 0), -1)
            cv2.putText(out, name, (x + pad // 2 + 1, y), cv2.FONT_HERSHEY_SIMPLEX, scale, tint, thick, cv2.LINE_AA)
        return out

    def label_colors(self) -> np.ndarray:
        """The label map as a viewable H x W x 3 BGR picture (black background, class colours)."""
        lut = np.zeros((max(len(self.classes), 1) + 1, 3), np.uint8)
        for i in range(len(self.classes)):
            lut[i + 1] = PALETTE[i % len(PALETTE)]
        return lut[self.label_map]


def label_scale(height: int, width: int) -> tuple[float, int]:
    """Font scale and stroke of overlay labels for a frame: 0.5 and 1 up to 480 lines, growing with
    the frame's shorter side (a 2160-line frame gets 2.25 and 4), so names stay readable."""
    scale = 0.5 * max(1.0, min(height, width) / 480)
    return scale, max(1, round(scale * 1.8))


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(str(arrays[key].dtype).encode())
        h.update(str(arrays[key].shape).encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def _read_support_meta(raw: np.ndarray | None, path: Path, not_ours: str) -> dict:
    """The metadata of a support file, checked field by field, or :class:`CorruptCacheError`."""
    try:
        meta = json.loads(raw.tobytes().decode()) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != SUPPORT_FORMAT:
        raise CorruptCacheError(f"{not_ours}: no valid metadata")
    if meta.get("version") != SUPPORT_VERSION:
        raise CorruptCacheError(f"{path} is support format version {meta.get('version')!r}; this SDK reads "
                                f"{SUPPORT_VERSION}")
    classes, shots = meta.get("classes"), meta.get("shots")
    if not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        raise CorruptCacheError(f"{path}: metadata 'classes' must be a list of distinct names, got {classes!r}")
    if not (isinstance(shots, dict) and all(isinstance(shots.get(c), int) and shots[c] >= 1 for c in classes)):
        raise CorruptCacheError(f"{path}: metadata 'shots' must give a shot count for every class, got {shots!r}")
    for key in ("encoder_sha256", "precision", "checksum"):
        if not isinstance(meta.get(key), str):
            raise CorruptCacheError(f"{path}: metadata '{key}' is missing")
    return meta


class Segmenter:
    """Few-shot segmentation with cached support features.

    Args:
        bundle: a bundle directory from ``sccan export`` (or a loaded :class:`Bundle`).
        backend: ``"auto"`` (TensorRT when TensorRT, a GPU and engines that pass the preflight exist,
            else ONNX Runtime), ``"onnxruntime"`` or ``"tensorrt"``; or a backend object of one's
            own (:class:`~sccan.sdk.backends.Backend`: the Triton model's BLS backend is one).
        device: GPU index (TensorRT, ONNX Runtime's CUDA provider).
        threads: CPU threads for ONNX Runtime (default: its own choice).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (the gated graphs of ``sccan quantize``);
            default FP16 for TensorRT and the CUDA provider, FP32 on a CPU.
        cuda_graph: TensorRT only: capture the per-frame backbone and decoder into CUDA graphs and
            replay them while the requested classes stay the same (fewer launches per frame).
        presence_threshold: a class whose presence score (:mod:`sccan.sdk.presence`) is below it
            gets an empty mask and no label-map pixels. Default: the bundle's calibrated threshold
            (``presence_threshold`` in its manifest, recorded by ``sccan export`` from a model trained
            with absent-object episodes), else 0 (never judged absent).
        memory: track mode's shot slots per class (0: off). With ``segment(..., remember=True)`` a
            frame where a class is confidently present joins that class's support as an extra shot,
            made from the frame's own backbone features (no second backbone run): the registered
            shots stay, the most recent confident frames fill at most ``memory`` more slots (never
            more than the bundle's ``max_shots`` in all), and a frame below ``memory_confidence``
            never enters. Applies to classes registered with :meth:`add_class` after it is set.
        memory_confidence: the presence score (and mean probability inside the mask) a frame needs
            to be remembered, within [0, 1].
        memory_every: remember at most every ``memory_every``-th frame that asks to (re-encoding a
            class's support costs about one support-encoder run), at least 1.

    Making the first Segmenter of a process sets glibc's heap thresholds so that a frame reuses the
    pages the previous one freed (:func:`sccan.sdk.memory.reuse_freed_memory`; the environment
    variable ``SCCAN_MALLOC_DEFAULTS=1`` leaves the allocator alone).
    """

    #: Class batches kept resident at once. A batch of several classes copies their arrays (ResNet-50
    #: at 473: 73 MB per class and 32 MB per shot slot), except where the backend takes them apart.
    RESIDENT_BATCHES = 4

    def __init__(self, bundle: str | os.PathLike | Bundle, backend: str | Backend = "auto", device: int = 0,
                 threads: int | None = None, precision: str | None = None, cuda_graph: bool = False,
                 presence_threshold: float | None = None, memory: int = 0, memory_confidence: float = 0.8,
                 memory_every: int = 5):
        reuse_freed_memory()  # once per process: frames reuse the heap pages the last one freed
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        max_shots = int(self.bundle.max_shots)
        if isinstance(memory, bool) or not isinstance(memory, (int, np.integer)) or not 0 <= memory < max_shots:
            raise BadArgumentError(f"memory must be a whole number of shot slots within 0..{max_shots - 1} "
                                   f"(this bundle takes {max_shots} shots, one of them the registered example), "
                                   f"got {memory!r}" + ("; export with a larger --max-shots for more"
                                                        if isinstance(memory, (int, np.integer)) and memory > 0 else ""))
        if isinstance(memory_every, bool) or not isinstance(memory_every, (int, np.integer)) or memory_every < 1:
            raise BadArgumentError(f"memory_every must be a whole number >= 1, got {memory_every!r}")
        self.memory = int(memory)
        self.memory_confidence = check_threshold(memory_confidence, "memory_confidence")
        self.memory_every = int(memory_every)
        self._shots: dict[str, dict[str, np.ndarray]] = {}  # track mode: registered shots' features
        self._memory: dict[str, list[dict[str, np.ndarray]]] = {}  # track mode: remembered frames, oldest first
        self._track_shape: tuple[int, int] | None = None
        self._remember_calls = 0
        self.presence_threshold = check_threshold(
            self.bundle.manifest.get("presence_threshold", 0.0) if presence_threshold is None else presence_threshold,
            "presence_threshold")
        self.backend = self._make_backend(backend, device, threads, precision, cuda_graph)
        m = self.bundle.manifest
        self.size = self.bundle.input_size
        self.max_shots = self.bundle.max_shots
        # TensorRT engines may be built for fewer classes per decode than the graphs take.
        self.max_classes = int(getattr(self.backend, "max_classes", None) or m["max_classes"])
        self.mean = tuple(m["normalization"]["mean"])
        self.std = tuple(m["normalization"]["std"])
        self.encoder_sha256 = m["files"][Path(self.bundle.graph_path("support_encoder", self.backend.precision)).name]
        self._cache: dict[str, dict[str, np.ndarray]] = {}
        self._parts: dict[str, Any] = {}  # per class, where the backend keeps classes apart (class_part)
        self._resident: dict[tuple[str, ...], dict] = {}
        self._lock = threading.RLock()

    def _make_backend(self, backend: str | Backend, device: int, threads: int | None, precision: str | None,
                      cuda_graph: bool) -> Backend:
        if not isinstance(backend, str) and hasattr(backend, "run"):
            return backend  # a Backend made by the caller (the Triton model's BLS backend)
        if backend not in BACKENDS:
            raise BadArgumentError(f"backend must be 'auto', 'onnxruntime' or 'tensorrt', got {backend!r}")
        if precision not in (None, *PRECISIONS):
            raise BadArgumentError(f"precision must be 'fp32', 'fp16' or 'int8' (or None for the backend's "
                                   f"default), got {precision!r}")
        if precision == "int8":
            plan = self.bundle.manifest.get("precision_plan", {}).get("int8")
            if "int8" not in self.bundle.manifest["graphs"]["backbone"] or not plan:
                raise BundleMismatchError(f"bundle {self.bundle.path} has no INT8 graphs: make them with "
                                          "`sccan quantize BUNDLE --calibration DATA`")
            if not plan.get("gated"):
                warnings.warn(f"bundle {self.bundle.path}: the INT8 graphs were written with --skip-gate and never "
                              "passed the accuracy gate; use them for timing only", UngatedWarning, stacklevel=3)
        if backend in ("auto", "tensorrt"):
            from .tensorrt_backend import TensorRTBackend, tensorrt_unavailable

            why = tensorrt_unavailable(self.bundle, device, precision or "fp16")
            if why is None:
                return TensorRTBackend(self.bundle, device=device, precision=precision or "fp16", cuda_graph=cuda_graph)
            if backend == "tensorrt":
                raise BundleMismatchError(f"TensorRT backend unavailable: {why}")
        if cuda_graph:
            raise BadArgumentError("cuda_graph=True needs the TensorRT backend")
        ort_backend = OnnxRuntimeBackend(self.bundle, precision or "fp32", device=device, threads=threads)
        if precision is None and ort_backend.providers[0] == "CUDAExecutionProvider" and \
                "fp16" in self.bundle.manifest["graphs"]["backbone"]:
            return OnnxRuntimeBackend(self.bundle, "fp16", device=device, threads=threads)
        return ort_backend

    def clone(self) -> "Segmenter":
        """A Segmenter sharing this one's loaded graphs, with its own (copied) support cache and,
        where the backend needs them per thread, its own execution contexts."""
        twin = object.__new__(Segmenter)
        twin.__dict__.update(self.__dict__)
        twin.backend = self.backend.fork()
        with self._lock:
            twin._cache = dict(self._cache)
            twin._parts = dict(self._parts)
            twin._shots = dict(self._shots)
            twin._memory = {k: list(v) for k, v in self._memory.items()}
        twin._resident = {}
        twin._lock = threading.RLock()
        return twin

    # -- support ---------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    def _prepare(self, image: np.ndarray, color: str, what: str) -> tuple[np.ndarray, object]:
        rgb = as_rgb(image, color, what)
        canvas, place = resize_image(rgb, self.size)
        return normalize(canvas, self.mean, self.std), place

    def mask_from_prompt(self, image: np.ndarray, box: Sequence[float] | None = None,
                         points: Sequence[Sequence[float]] | None = None,
                         negative_points: Sequence[Sequence[float]] | None = None, color: str = "bgr") -> np.ndarray:
        """The H x W uint8 mask (1 = object) that ``add_class`` would make from this prompt, to show
        before registering: a box ``(x0, y0, x1, y1)`` in pixels and/or clicks ``[(x, y), ...]`` on
        the object (``points``) and off it (``negative_points``). See :mod:`sccan.sdk.prompts`."""
        return mask_from_prompt(self._prompt_rgb(image, color, "image"), box=box, points=points,
                                negative_points=negative_points)

    @staticmethod
    def _prompt_rgb(image: np.ndarray, color: str, what: str) -> np.ndarray:
        rgb = as_rgb(image, color, what)
        return rgb if rgb.dtype == np.uint8 else np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    def add_class(self, name: str, images: Sequence[np.ndarray] | np.ndarray,
                  masks: Sequence[np.ndarray] | np.ndarray | None = None, color: str = "bgr", *,
                  boxes: Sequence[Sequence[float] | None] | None = None,
                  points: Sequence[Sequence[Sequence[float]] | None] | None = None,
                  negative_points: Sequence[Sequence[Sequence[float]] | None] | None = None) -> None:
        """Register (or replace) class ``name`` from 1..max_shots examples.

        Args:
            images: H x W x 3 uint8 images (BGR unless ``color="rgb"``); shots may differ in size.
            masks: one H x W mask per image; any non-zero pixel is the object. Or, instead of masks,
                prompts, one per image: ``boxes`` (x0, y0, x1, y1), ``points`` (clicks on the object)
                and ``negative_points`` (clicks off it); the mask is made by :meth:`mask_from_prompt`.
        """
        images, prompts = shot_prompts(name, images, masks, boxes, points, negative_points)
        if prompts is not None:
            check_class_name(name)
            masks = masks_from_prompts(name, [self._prompt_rgb(image, color, f"class {name!r} shot {k} image")
                                              for k, image in enumerate(images)], prompts)
        images, masks = shot_lists(name, images, masks)
        if len(images) > self.max_shots:
            raise BadArgumentError(f"class {name!r}: {len(images)} shots exceed this bundle's maximum of "
                                   f"{self.max_shots} (export with a larger --max-shots)")
        tensors, labels = [], []
        for k, (image, mask) in enumerate(zip(images, masks)):
            what = f"class {name!r} shot {k}"
            rgb = as_rgb(image, color, f"{what} image")
            binary = as_mask(mask, rgb.shape[:2], f"{what} mask")
            canvas, place = resize_image(rgb, self.size)
            label = resize_label(binary, self.size)
            area = float(binary.sum()) * (place.height * place.width) / (place.original_height * place.original_width)
            if area < MIN_OBJECT_PIXELS:
                raise EmptyMaskError(f"{what} mask: the object covers {int(binary.sum())} of {binary.size} pixels, "
                                     f"{area:.2g} pixels at the network's {self.size} x {self.size} input (at least "
                                     f"{MIN_OBJECT_PIXELS} needed): crop the image around the object")
            if not (label == 1).any():
                raise EmptyMaskError(f"{what} mask: no foreground is left after resizing to the network's "
                                     f"{self.size} x {self.size} input (the object is too thin or small)")
            tensors.append(normalize(canvas, self.mean, self.std))
            labels.append((label == 1).astype(np.float32))
        features = self.backend.run("backbone", {"images": np.stack(tensors)})
        shots = {"mid": features["mid"], "high": features["high"], "masks": np.stack(labels)}
        support = self.backend.run("support_encoder", {"mid": shots["mid"], "high": shots["high"],
                                                       "masks": shots["masks"][None]})
        part = self._class_part(support)
        with self._lock:
            self._store(name, support, part)
            self._memory.pop(name, None)
            if self.memory:
                self._shots[name] = shots
            else:
                self._shots.pop(name, None)
        release_freed_memory()

    def support_features(self, name: str) -> dict[str, np.ndarray]:
        """The cached support encoder outputs of class ``name`` (1 x max_shots x ... per slot field;
        slots beyond the class's shots are padding)."""
        with self._lock:
            if name not in self._cache:
                raise UnknownClassError(f"no class {name!r}; registered: {list(self._cache)}")
            return dict(self._cache[name])

    def remove_class(self, name: str) -> None:
        with self._lock:
            if name not in self._cache:
                raise UnknownClassError(f"no class {name!r}; registered: {list(self._cache)}")
            del self._cache[name]
            self._parts.pop(name, None)
            self._shots.pop(name, None)
            self._memory.pop(name, None)
            self._forget_batches({name})
        release_freed_memory()

    def memory_size(self, name: str) -> int:
        """How many remembered frames class ``name`` holds now (track mode), 0..``memory``."""
        with self._lock:
            if name not in self._cache:
                raise UnknownClassError(f"no class {name!r}; registered: {list(self._cache)}")
            return len(self._memory.get(name, ()))

    def reset_memory(self, classes: Sequence[str] | None = None) -> None:
        """Forget the remembered frames (of all classes, or of ``classes``): each class is back to
        its registered shots, and the next remembered frame may have any size."""
        with self._lock:
            names = list(self._memory) if classes is None else [classes] if isinstance(classes, str) else list(classes)
            unknown = [n for n in names if n not in self._cache]
            if unknown:
                raise UnknownClassError(f"no class {unknown[0]!r}; registered: {list(self._cache)}")
            dropped = [n for n in names if self._memory.pop(n, None)]
            if classes is None:
                self._track_shape = None
        for name in dropped:
            self._reencode(name)

    def save_support(self, path: str | os.PathLike, classes: Sequence[str] | None = None) -> Path:
        """Write the registered classes' support features (all, or ``classes``) to an ``.npz`` (no
        pickle), atomically.

        The file records the support encoder's sha256, the precision and a checksum of the arrays.
        """
        path = Path(path)
        if path.is_dir():
            raise BadArgumentError(f"{path} is a directory: give a file path for the support features "
                                   "(such as classes.npz)")
        with self._lock:
            names = list(self._cache) if classes is None else [classes] if isinstance(classes, str) else list(classes)
            unknown = [n for n in names if n not in self._cache]
            if unknown:
                raise UnknownClassError(f"unknown class(es) {unknown}; registered: {list(self._cache)}")
            arrays = {f"{name}/{k}": v for name in names for k, v in self._cache[name].items()}
            meta = {"format": SUPPORT_FORMAT, "version": SUPPORT_VERSION, "encoder_sha256": self.encoder_sha256,
                    "precision": self.backend.precision, "classes": names,
                    "shots": {n: real_shots(self._cache[n]) for n in names}, "checksum": _checksum(arrays)}
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def load_support(self, path: str | os.PathLike) -> list[str]:
        """Add the classes of a file from :meth:`save_support`; returns their names.

        The whole file is checked before anything changes: on any error the Segmenter keeps exactly
        the classes it had.

        Raises:
            MissingFileError: there is no such file (also a ``FileNotFoundError``).
            BundleMismatchError: the file was made by another model or precision.
            CorruptCacheError: the file is damaged, altered or not a support file.
        """
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"support file {path} does not exist" if not path.exists() else
                                   f"support file {path} is a directory, not a file from save_support()")
        not_ours = f"{path} is not an SCCAN support file (an .npz written by Segmenter.save_support)"
        try:
            with np.load(path, allow_pickle=False) as data:
                if not hasattr(data, "files"):  # a bare .npy array
                    raise CorruptCacheError(not_ours)
                arrays = {k: data[k] for k in data.files}
        except CorruptCacheError:
            raise
        except Exception as exc:  # numpy raises several types for text, images, damaged zips
            raise CorruptCacheError(f"{not_ours}: {type(exc).__name__}") from None
        meta = _read_support_meta(arrays.pop("__meta__", None), path, not_ours)
        if meta["encoder_sha256"] != self.encoder_sha256 or meta["precision"] != self.backend.precision:
            raise BundleMismatchError(
                f"{path} was made by support encoder {meta['encoder_sha256'][:12]}... in {meta['precision']}; this "
                f"Segmenter runs {self.encoder_sha256[:12]}... in {self.backend.precision}: register the classes again")
        if _checksum(arrays) != meta["checksum"]:
            raise CorruptCacheError(f"{path} fails its checksum: the arrays were altered or damaged")
        expected = set(GLOBAL_FIELDS) | {f"block{i}_{f}" for i in range(self.bundle.layout.num_blocks)
                                         for f in BLOCK_FIELDS}
        loaded: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            name, _, field_name = key.rpartition("/")
            loaded.setdefault(name, {})[field_name] = value
        for name in meta["classes"]:
            fields = loaded.get(name, {})
            if set(fields) != expected:
                missing = sorted(expected - set(fields))
                raise CorruptCacheError(f"{path}: class {name!r} is listed but its arrays are incomplete "
                                        f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''})")
            if any(v.ndim == 0 or v.shape[0] != 1 for v in fields.values()):
                raise CorruptCacheError(f"{path}: class {name!r} has arrays of the wrong shape")
        parts = {name: self._class_part(loaded[name]) for name in meta["classes"]}
        with self._lock:
            for name in meta["classes"]:
                self._store(name, loaded[name], parts[name])
                self._shots.pop(name, None)  # no shot features in a support file: no track mode
                self._memory.pop(name, None)
        release_freed_memory()
        return list(meta["classes"])

    # -- segmentation ------------------------------------------------------------------------------

    def _class_part(self, support: dict[str, np.ndarray]) -> Any:
        """What the backend keeps of one class, made at registration so that no frame pays for it
        (the split INT8 decoder's product session); None where the backend keeps no such thing."""
        make = getattr(self.backend, "class_part", None)  # optional (Backend's docstring)
        return make("query_decoder", support) if make is not None else None

    def _store(self, name: str, support: dict[str, np.ndarray], part: Any) -> None:
        """Register ``name`` (call under the lock)."""
        self._cache[name] = support
        if part is not None:
            self._parts[name] = part
        self._forget_batches({name})

    def _forget_batches(self, names: set[str]) -> None:
        """Drop the resident batches that hold any of ``names`` (call under the lock).

        Where the backend takes a batch's classes apart (``resident_classes``), the other batches
        stay: they are still right and hold no copies of the arrays (a batch is its classes'
        parts, made at registration: the split decoder's product sessions). Elsewhere a batch is a copy
        of its classes' arrays that the next frame is unlikely to ask for again, and all go."""
        if getattr(self.backend, "resident_classes", None) is None:
            self._resident.clear()
            return
        for key in [key for key in self._resident if names.intersection(key)]:
            del self._resident[key]

    def _support_batch(self, names: tuple[str, ...]) -> dict:
        """The decoder's support inputs for classes ``names``, resident, built once (call under the lock)."""
        batch = self._resident.pop(names, None)
        if batch is None:
            per_class = getattr(self.backend, "resident_classes", None)  # optional (Backend's docstring)
            batch = per_class("query_decoder", [self._parts[n] for n in names]) if per_class is not None else \
                self.backend.resident("query_decoder", stack_classes([self._cache[n] for n in names]))
            while len(self._resident) >= self.RESIDENT_BATCHES:
                del self._resident[next(iter(self._resident))]
        self._resident[names] = batch  # most recently used last
        return batch

    def _requested(self, classes: Sequence[str] | str | None) -> tuple[list[str], list[dict]]:
        """The class names a frame is decoded for, and their support batches."""
        if isinstance(classes, str):
            classes = [classes]
        with self._lock:
            names = list(self._cache) if classes is None else list(classes)
            if not self._cache:
                raise UnknownClassError("no class registered: call add_class() (or load_support()) first")
            unknown = [n for n in names if n not in self._cache]
            if unknown:
                raise UnknownClassError(f"unknown class(es) {unknown}; registered: {list(self._cache)}")
            batches = [self._support_batch(tuple(names[i:i + self.max_classes]))
                       for i in range(0, len(names), self.max_classes)]
        if not names:
            raise UnknownClassError("no class requested")
        return names, batches

    def _decode(self, mid: Any, high: Any, batches: list[dict]) -> np.ndarray:
        return np.concatenate([
            self.backend.run("query_decoder", {"mid": mid, "high": high, **batch},
                             outputs=("logits",))["logits"].astype(np.float32) for batch in batches])

    @staticmethod
    def _result(logits: np.ndarray, place: object, names: list[str], threshold: float,
                presence_threshold: float = 0.0) -> Result:
        presence = presence_scores(logits, place.height, place.width)
        absent = presence < presence_threshold
        probs = frame_probability(logits, place)  # C x H x W
        masks = probs > threshold
        masks[absent] = False
        if len(names) == 1:
            label_map = masks[0].astype(np.int32)
        else:
            # Contested pixels go to the most probable present class.
            ranked = probs if not absent.any() else np.where(absent[:, None, None], -1.0, probs)
            label_map = ranked.argmax(axis=0).astype(np.int32)
            label_map += 1
            label_map *= masks.any(axis=0)
        return Result({n: probs[i] for i, n in enumerate(names)}, {n: masks[i] for i, n in enumerate(names)},
                      label_map, names, presence={n: float(presence[i]) for i, n in enumerate(names)},
                      presence_threshold=presence_threshold)

    def _presence_threshold(self, value: float | None) -> float:
        return self.presence_threshold if value is None else check_threshold(value, "presence_threshold")

    def segment(self, image: np.ndarray, classes: Sequence[str] | None = None, threshold: float = 0.5,
                color: str = "bgr", presence_threshold: float | None = None, remember: bool = False) -> Result:
        """Segment the registered (or the named) classes in one frame.

        One backbone run; the query decoder runs once over all requested classes (in chunks of the
        bundle's ``max_classes``, or of the TensorRT engines' when fewer). ``threshold`` is the
        pixel probability of a mask; ``presence_threshold`` (default: the Segmenter's) empties the
        mask of a class judged absent from the frame (``Result.presence``). ``remember`` (track
        mode, a Segmenter made with ``memory``): a class confidently present in this frame takes it
        as an extra shot, from this frame's backbone features; the frames of one track must share
        a size (:meth:`reset_memory` starts a new track).
        """
        t0 = time.perf_counter()
        threshold = check_threshold(threshold)
        presence_threshold = self._presence_threshold(presence_threshold)
        check_color(color)
        if remember is not False and remember is not True:
            raise BadArgumentError(f"remember must be True or False, got {remember!r}")
        if remember:
            if not self.memory:
                raise BadArgumentError("remember=True needs track mode: make the Segmenter with memory=N "
                                       f"(1..{self.max_shots - 1} shot slots)")
            shape = getattr(image, "shape", (0, 0))[:2]
            with self._lock:
                if self._track_shape is not None and tuple(shape) != self._track_shape:
                    raise BadImageError(f"a {shape[1]} x {shape[0]} frame in a track of "
                                        f"{self._track_shape[1]} x {self._track_shape[0]} frames: call "
                                        "reset_memory() to start a new track")
        names, batches = self._requested(classes)
        tensor, place = self._prepare(image, color, "image")
        t1 = time.perf_counter()
        # Track mode needs the frame's features on the host, as the support encoder's input.
        keep = () if remember else ("mid", "high")
        with self.backend.exclusive():  # the kept backbone outputs are read by the decoder runs
            features = self.backend.run("backbone", {"images": tensor[None]}, keep=keep)
            t2 = time.perf_counter()
            logits = self._decode(features["mid"], features["high"], batches)
        t3 = time.perf_counter()
        result = self._result(logits, place, names, threshold, presence_threshold)
        t4 = time.perf_counter()
        result.timings = {"preprocess": t1 - t0, "backbone": t2 - t1, "decode": t3 - t2, "postprocess": t4 - t3}
        if remember:
            result.timings["remember"] = self._remember(features, logits, place, names, result, tuple(shape))
        result.timings["total"] = time.perf_counter() - t0
        return result

    def _remember(self, features: dict, logits: np.ndarray, place: object, names: list[str], result: Result,
                  shape: tuple[int, int]) -> float:
        """Track mode: add this frame to the memory of each class confidently present; returns the seconds spent."""
        start = time.perf_counter()
        with self._lock:
            if self._track_shape is None:
                self._track_shape = shape
            self._remember_calls += 1
            if (self._remember_calls - 1) % self.memory_every:
                return time.perf_counter() - start
        changed = []
        for i, name in enumerate(names):
            mask = result.masks[name]
            if result.presence[name] < self.memory_confidence or not mask.any() or \
                    float(result.probabilities[name][mask].mean()) < self.memory_confidence:
                continue
            canvas = np.zeros((self.size, self.size), np.float32)
            fg = logits[i, 1, :place.height, :place.width] > logits[i, 0, :place.height, :place.width]
            canvas[:place.height, :place.width] = fg
            if canvas.sum() < MIN_OBJECT_PIXELS:
                continue
            entry = {"mid": np.array(features["mid"][:1]), "high": np.array(features["high"][:1]),
                     "masks": canvas[None]}
            with self._lock:
                shots = self._shots.get(name)
                if shots is None:  # loaded from a support file, or registered before track mode
                    continue
                slots = min(self.memory, self.max_shots - len(shots["masks"]))
                if slots <= 0:
                    continue
                kept = self._memory.setdefault(name, [])
                kept.append(entry)
                del kept[:-slots]  # the most recent confident frames; never more than the slots
            changed.append(name)
        for name in changed:
            self._reencode(name)
        return time.perf_counter() - start

    def _reencode(self, name: str) -> None:
        """Encode class ``name``'s support again from its registered shots and remembered frames."""
        with self._lock:
            shots = self._shots.get(name)
            memory = list(self._memory.get(name, ()))
        if shots is None:
            return
        parts = [shots, *memory]
        support = self.backend.run("support_encoder", {
            "mid": np.concatenate([p["mid"] for p in parts]), "high": np.concatenate([p["high"] for p in parts]),
            "masks": np.concatenate([p["masks"] for p in parts])[None]})
        part = self._class_part(support)
        with self._lock:
            if self._shots.get(name) is shots:  # not re-registered or removed meanwhile
                self._store(name, support, part)

    def segment_batch(self, images: Sequence[np.ndarray], classes: Sequence[str] | None = None,
                      threshold: float = 0.5, color: str = "bgr", presence_threshold: float | None = None
                      ) -> list[Result]:
        """Segment several frames (of any sizes) for the same classes: one backbone run per
        ``max_shots`` frames (the backbone graph's image batch), then one decode per frame. Results
        equal :meth:`segment`'s frame by frame; a server batching its clients' frames uses this.
        ``timings`` of each result are the batch's, shared."""
        threshold = check_threshold(threshold)
        presence_threshold = self._presence_threshold(presence_threshold)
        check_color(color)
        images = list(images)
        if not images:
            return []
        names, batches = self._requested(classes)
        prepared = [self._prepare(image, color, f"image {i}") for i, image in enumerate(images)]
        results = []
        for start in range(0, len(prepared), self.max_shots):
            chunk = prepared[start:start + self.max_shots]
            t0 = time.perf_counter()
            with self.backend.exclusive():
                features = self.backend.run("backbone", {"images": np.stack([t for t, _ in chunk])})
                t1 = time.perf_counter()
                logits = [self._decode(features["mid"][i:i + 1], features["high"][i:i + 1], batches)
                          for i in range(len(chunk))]
            t2 = time.perf_counter()
            part = [self._result(lg, place, names, threshold, presence_threshold) for lg, (_, place) in zip(logits, chunk)]
            t3 = time.perf_counter()
            for r in part:
                r.timings = {"backbone": t1 - t0, "decode": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0,
                             "frames": float(len(chunk))}
            results += part
        return results


__all__ = ["Segmenter", "Result", "SCCANError"]
