"""Frames from what ``sccan segment --input`` names, in jetson-inference's URI style.

* an image file, or a folder of images (sorted by name);
* a video file (anything OpenCV reads);
* ``csi://N``: a Jetson CSI camera through GStreamer (nvarguscamerasrc); needs an OpenCV built
  with GStreamer, as JetPack's system OpenCV is (pip's wheels are not);
* ``v4l2:///dev/videoN`` (or ``/dev/videoN``): a USB/V4L2 camera;
* ``rtsp://...``, ``http(s)://...``: network streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import BadImageError, MissingFileError, SCCANError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class SourceError(SCCANError):
    """An input that cannot be opened or read (the message says why and what is supported)."""


@dataclass
class Source:
    """A sequence of BGR frames with names; ``stream`` is True for video and cameras.

    A folder's unreadable files are skipped while iterating and listed in ``skipped`` (path,
    reason), so one bad file does not end a run.
    """

    frames: Iterator[tuple[str, np.ndarray]]
    stream: bool
    fps: float
    count: int | None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def has_gstreamer() -> bool:
    return any("GStreamer" in line and "YES" in line for line in cv2.getBuildInformation().splitlines())


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """The GStreamer pipeline for a Jetson CSI camera, ending in BGR frames for OpenCV."""
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={width}, height={height}, "
            f"framerate={fps}/1, format=NV12 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
            "video/x-raw, format=BGR ! appsink drop=1")


def _read(path: str | Path, flags: int, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    image = cv2.imread(str(path), flags)
    if image is None:
        raise BadImageError(f"cannot read {what} {path}: not an image OpenCV can decode "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}), or damaged")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image from a file, or :class:`MissingFileError` / :class:`BadImageError` naming it."""
    return _read(path, cv2.IMREAD_COLOR, "image")


def read_mask(path: str | Path) -> np.ndarray:
    """An H x W mask from a file (any non-zero pixel is the object), or an error naming it."""
    return _read(path, cv2.IMREAD_GRAYSCALE, "mask")


def _capture(cap: cv2.VideoCapture, what: str, count: int | None) -> Source:
    if not cap.isOpened():
        raise SourceError(f"cannot open {what}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0

    def frames() -> Iterator[tuple[str, np.ndarray]]:
        i = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield f"frame{i:06d}", frame
                i += 1
        finally:
            cap.release()

    return Source(frames(), True, float(fps), count)


def open_source(uri: str, width: int = 1280, height: int = 720, fps: int = 30) -> Source:
    """Open an image, folder, video file or camera URI."""
    if uri.startswith("csi://"):
        if not has_gstreamer():
            raise SourceError("csi:// needs OpenCV built with GStreamer (JetPack's system python3-opencv); this "
                              "OpenCV has none - do not install opencv-python(-headless) from pip on a Jetson")
        return _capture(cv2.VideoCapture(csi_pipeline(int(uri[6:] or 0), width, height, fps), cv2.CAP_GSTREAMER),
                        uri, None)
    if uri.startswith("v4l2://") or uri.startswith("/dev/video"):
        device = uri[len("v4l2://"):] if uri.startswith("v4l2://") else uri
        index = int(device.rsplit("video", 1)[-1]) if "video" in device else 0
        return _capture(cv2.VideoCapture(index, cv2.CAP_V4L2), uri, None)
    if uri.split("://", 1)[0] in ("rtsp", "http", "https"):
        return _capture(cv2.VideoCapture(uri), uri, None)
    path = Path(uri)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        source = Source(iter(()), False, 0.0, len(files))

        def folder() -> Iterator[tuple[str, np.ndarray]]:
            for p in files:
                try:
                    yield p.stem, read_image(p)
                except SCCANError as exc:
                    source.skipped.append((str(p), str(exc)))

        source.frames = folder()
        return source
    if not path.exists():
        raise SourceError(f"input {uri} does not exist (give an image, a folder, a video file, csi://N, "
                          "v4l2:///dev/videoN or rtsp://...)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Source(iter([(path.stem, read_image(path))]), False, 0.0, 1)
    cap = cv2.VideoCapture(str(path))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    return _capture(cap, f"video {path}", count)
