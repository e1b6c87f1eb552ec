"""Segment every frame of a video (or camera URI) and write an annotated MP4.

    python samples/video_segment.py BUNDLE SUPPORT.npz INPUT OUTPUT.mp4

SUPPORT.npz comes from ``Segmenter.save_support`` (or ``sccan segment ... --save-support``): the
object is registered once, on any machine with the same bundle, and loaded here.
"""

from __future__ import annotations

import sys
import time

import cv2

from sccan.sdk import Segmenter
from sccan.sdk.sources import open_source


def main(bundle: str, support: str, source: str, output: str, max_frames: int | None = None) -> int:
    seg = Segmenter(bundle)
    seg.load_support(support)
    frames = open_source(source)
    writer, n, start = None, 0, time.perf_counter()
    for _, frame in frames.frames:
        overlay = seg.segment(frame).overlay(frame)
        if writer is None:
            h, w = overlay.shape[:2]
            writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), frames.fps or 30.0, (w, h))
        writer.write(overlay)
        n += 1
        if max_frames and n >= max_frames:
            break
    if writer is not None:
        writer.release()
    print(f"{n} frames, {n / (time.perf_counter() - start):.1f} FPS -> {output}")
    return n


if __name__ == "__main__":
    main(*sys.argv[1:5])
