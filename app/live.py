"""The app's state: a frame source played on a worker thread, the Segmenter it feeds, and the
latest frame with its overlay. Everything the web page does is a method here (the server is a
thin shell over it), so it is usable and testable without a browser.

Frames come from what ``sccan segment --input`` reads (a camera index, a video file, an image
folder; :func:`sccan.sdk.sources.open_source`) or from images uploaded through the page. Files
loop at their end; a paused source holds its frame, on which prompts are drawn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sccan.sdk.errors import BadArgumentError, BadImageError, SCCANError
from sccan.sdk.segmenter import PALETTE, Result, Segmenter, check_class_name, check_threshold
from sccan.sdk.sources import open_source

#: Largest side of an uploaded image, in pixels (a bigger one is refused, not resized).
MAX_UPLOAD_SIDE = 4096
#: Uploaded images kept (the oldest go first).
MAX_UPLOADS = 64
#: Frames per second at most when the source does not say (image folders, uploads).
STILL_FPS = 2.0


class SourceClosedError(SCCANError):
    """The request needs a frame, and the source has none (closed, ended or not yet read)."""


class NotPausedError(SCCANError):
    """A prompt was sent while the source is playing: pause it first, so that the prompt and the
    frame it was drawn on agree."""


@dataclass
class Frame:
    """One shown frame: its BGR pixels, its name in the source, and the result on it (None when
    no class is registered)."""

    index: int
    name: str
    image: np.ndarray
    result: Result | None = None
    jpeg: bytes = b""


@dataclass
class Stats:
    """Frames per second over the last second of segmented frames."""

    stamps: list[float] = field(default_factory=list)

    def tick(self) -> None:
        now = time.perf_counter()
        self.stamps = [t for t in self.stamps if now - t <= 1.0] + [now]

    @property
    def fps(self) -> float:
        if len(self.stamps) < 2:
            return 0.0
        return (len(self.stamps) - 1) / max(self.stamps[-1] - self.stamps[0], 1e-6)


def camera_uri(source: str) -> str:
    """A bare camera index (``0``) as the V4L2 URI ``open_source`` reads; anything else as given."""
    return f"v4l2:///dev/video{int(source)}" if source.isdigit() else source


class LiveSession:
    """A Segmenter on a live source. Thread-safe: the worker thread segments frames while the
    server's threads register classes and read the latest frame."""

    def __init__(self, segmenter: Segmenter, source: str | None = None, threshold: float = 0.5,
                 presence_threshold: float | None = None, jpeg_quality: int = 85) -> None:
        self.segmenter = segmenter
        self.threshold = check_threshold(threshold)
        self.presence_threshold = (None if presence_threshold is None
                                   else check_threshold(presence_threshold, "presence_threshold"))
        self.jpeg_quality = int(jpeg_quality)
        # what the page shows: a file's or folder's name (not where it lies), a camera's URI as given
        self._shown_source = (Path(source).name if source is not None and Path(source).exists() else source)
        self._uri = camera_uri(source) if source is not None else None
        self._frames: Iterator[tuple[str, np.ndarray]] | None = None
        self._fps = STILL_FPS
        self._uploads: list[tuple[str, np.ndarray]] = []
        self._upload_next = 0
        self._lock = threading.RLock()
        self._render_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._paused = False
        self._dirty = True
        self._frame: Frame | None = None
        self._count = 0
        self._error: str | None = None
        self._stats = Stats()
        self._thread: threading.Thread | None = None
        if self._uri is not None:
            self._open()  # a source that cannot be opened fails here, before the server starts

    # -- the source --------------------------------------------------------------------------------

    def _open(self) -> None:
        source = open_source(self._uri)
        self._frames = source.frames
        self._fps = source.fps if source.stream and source.fps > 0 else STILL_FPS

    def _next_frame(self) -> tuple[str, np.ndarray] | None:
        """The source's next frame (files loop at their end; uploads cycle), or None."""
        if self._uploads:
            name, image = self._uploads[self._upload_next % len(self._uploads)]
            self._upload_next += 1
            return name, image
        if self._frames is None:
            return None
        for attempt in range(2):
            try:
                return next(self._frames)
            except StopIteration:
                if attempt == 0 and self._uri is not None:
                    self._open()  # a file ended: play it again (a camera that ended is opened once more)
        self._frames = None
        return None

    def add_upload(self, name: str, data: bytes) -> Frame:
        """Decode an uploaded image (bytes of a PNG/JPEG/...), make the uploads the source, and pause
        on it. BadImageError for what OpenCV cannot decode or an image over MAX_UPLOAD_SIDE."""
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            raise BadImageError("the upload is not an image OpenCV can decode (PNG, JPEG, BMP, WebP, TIFF)")
        if max(image.shape[:2]) > MAX_UPLOAD_SIDE:
            raise BadImageError(f"the upload is {image.shape[1]} x {image.shape[0]}: at most {MAX_UPLOAD_SIDE} "
                                "pixels a side")
        with self._render_lock:
            with self._lock:
                self._uploads = (self._uploads + [(name, image)])[-MAX_UPLOADS:]
                self._upload_next = len(self._uploads)
                self._paused = True
                self._count += 1
                index = self._count
            frame = self._render(index, name, image)
            with self._lock:
                self._frame, self._dirty = frame, False
        return frame

    # -- the worker --------------------------------------------------------------------------------

    def _render(self, index: int, name: str, image: np.ndarray) -> Frame:
        result = None
        with self._lock:
            threshold, presence_threshold = self.threshold, self.presence_threshold
        if self.segmenter.classes:
            result = self.segmenter.segment(image, threshold=threshold, presence_threshold=presence_threshold)
            shown = result.overlay(image)
        else:
            shown = image
        ok, jpeg = cv2.imencode(".jpg", shown, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        return Frame(index, name, image, result, jpeg.tobytes() if ok else b"")

    def _advance(self) -> bool:
        """Read the next frame (or, paused, take the held one again) and segment it; False when
        there is nothing to show. The render lock is held throughout, so that pausing waits for
        the frame in progress and the paused frame is the one the page shows."""
        with self._render_lock:
            with self._lock:
                fresh = not self._paused
                if fresh:
                    item = self._next_frame()
                    if item is None:
                        return False
                    self._count += 1
                    index, (name, image) = self._count, item
                elif self._frame is None:
                    return False
                else:
                    index, name, image = self._frame.index, self._frame.name, self._frame.image
                self._dirty = False
            frame = self._render(index, name, image)
            with self._lock:
                self._frame = frame
                if fresh:
                    self._stats.tick()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            with self._lock:
                busy = not self._paused or self._dirty
            shown = False
            if busy:
                try:
                    shown = self._advance()
                    self._error = None
                except SCCANError as exc:  # a frame the model cannot take: report it, keep serving
                    self._error, shown = str(exc), True
                except Exception as exc:  # noqa: BLE001 - a source or backend fault: report, keep serving
                    self._error, shown = f"{type(exc).__name__}: {exc}", False
            with self._lock:
                idle = not shown or (self._paused and not self._dirty)
            if idle:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            delay = 1.0 / self._fps - (time.perf_counter() - started)
            if delay > 0:
                self._stop.wait(delay)

    def start(self) -> None:
        """Start playing on the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sccan-app-source", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the worker and let go of the source (waits for the frame in progress)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            self._frames = None

    # -- what the page does ------------------------------------------------------------------------

    def set_paused(self, paused: bool) -> Frame | None:
        """Pause (the frame being segmented is finished first and held) or play; the shown frame."""
        with self._render_lock:  # after the frame in progress, which becomes the held one
            with self._lock:
                self._paused = bool(paused)
                shown = self._frame
        self._wake.set()
        return shown

    def frame(self) -> Frame:
        """The latest shown frame; SourceClosedError when there is none."""
        with self._lock:
            if self._frame is None:
                raise SourceClosedError("no frame yet: the source is closed, ended or still opening"
                                        + (f" ({self._error})" if self._error else ""))
            return self._frame

    def held_frame(self) -> np.ndarray:
        """The paused frame's pixels (BGR), on which prompts are drawn."""
        with self._lock:
            if not self._paused:
                raise NotPausedError("pause the source first: prompts are drawn on the paused frame")
            return self.frame().image

    def propose(self, box: Sequence[float] | None = None, points: Sequence[Sequence[float]] | None = None,
                negative_points: Sequence[Sequence[float]] | None = None) -> tuple[np.ndarray, bytes]:
        """The mask a prompt makes on the paused frame, and a JPEG of the frame with it tinted."""
        image = self.held_frame()
        mask = self.segmenter.mask_from_prompt(image, box=box, points=points, negative_points=negative_points)
        shown = image.copy()
        tint = np.array((255, 144, 30), np.float32)  # the page's proposal colour, BGR
        shown[mask > 0] = (0.45 * shown[mask > 0] + 0.55 * tint).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(shown, contours, -1, (255, 255, 255), 2)
        ok, jpeg = cv2.imencode(".jpg", shown, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        return mask, jpeg.tobytes()

    def add_class(self, name: str, box: Sequence[float] | None = None, points: Sequence[Sequence[float]] | None = None,
                  negative_points: Sequence[Sequence[float]] | None = None) -> list[str]:
        """Register ``name`` from a prompt on the paused frame (replacing a class of that name)."""
        check_class_name(name)
        if box is None and not points:
            raise BadArgumentError("draw a box or click on the object first")
        image = self.held_frame()
        self.segmenter.add_class(name, [image], boxes=[box], points=[points] if points else None,
                                 negative_points=[negative_points] if negative_points else None)
        self._changed()
        return self.segmenter.classes

    def remove_class(self, name: str) -> list[str]:
        self.segmenter.remove_class(check_class_name(name))
        self._changed()
        return self.segmenter.classes

    def load_support(self, path: Path) -> list[str]:
        names = self.segmenter.load_support(path)
        self._changed()
        return names

    def set_thresholds(self, threshold: float | None = None, presence_threshold: float | None = None) -> None:
        with self._lock:
            if threshold is not None:
                self.threshold = check_threshold(threshold)
            if presence_threshold is not None:
                self.presence_threshold = check_threshold(presence_threshold, "presence_threshold")
        self._changed()

    def _changed(self) -> None:
        """Classes or thresholds changed: a paused frame is segmented again before this returns
        (so that the next frame the page fetches shows the change); a playing one on its next frame."""
        with self._lock:
            self._dirty = True
            paused = self._paused
        if paused:
            self._advance()
        self._wake.set()

    def state(self) -> dict:
        """What the page shows beside the frame (JSON-ready)."""
        with self._lock:
            frame = self._frame
            result = frame.result if frame is not None else None
            classes = []
            for i, name in enumerate(self.segmenter.classes):
                b, g, r = PALETTE[i % len(PALETTE)]  # the overlay's colour (BGR), while the order holds
                item = {"name": name, "index": i + 1, "color": f"#{r:02x}{g:02x}{b:02x}"}
                if result is not None and name in result.classes:
                    item["presence"] = round(float(result.presence.get(name, 1.0)), 4)
                    item["pixels"] = int((result.label_map == result.classes.index(name) + 1).sum())
                classes.append(item)
            return {
                "paused": self._paused,
                "source": "uploads" if self._uploads else self._shown_source,
                "frame": None if frame is None else {"index": frame.index, "name": frame.name,
                                                     "width": int(frame.image.shape[1]),
                                                     "height": int(frame.image.shape[0])},
                "classes": classes,
                "timings_ms": {} if result is None else {k: round(v * 1000, 2) for k, v in result.timings.items()},
                "fps": round(self._stats.fps, 2),
                "backend": getattr(self.segmenter.backend, "name", None),
                "precision": getattr(self.segmenter.backend, "precision", None),
                "threshold": self.threshold,
                "presence_threshold": (self.presence_threshold if self.presence_threshold is not None
                                       else getattr(self.segmenter, "presence_threshold", None)),
                "error": self._error,
            }
