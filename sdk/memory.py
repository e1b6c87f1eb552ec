"""The C heap: keeping a frame's freed memory for the next frame, and handing freed memory back to
the operating system after the support arrays change.

A frame allocates and frees several multi-megabyte arrays (the canvas, the network input, the
graphs' outputs, the probabilities). With glibc's defaults, such arrays are mmapped, or the heap is
trimmed once more than twice the current mmap threshold lies free at its top, so each frame gets
fresh pages and faults them in: 2409 page faults and 5-7 ms of kernel time per EfficientNet-Lite0
INT8 frame on this project's 2-core host. :func:`reuse_freed_memory` sets the mmap threshold to
32 MB and the trim threshold to 64 MB (the values glibc's own dynamic rule reaches once a 32 MB
array has been freed, as in every ResNet-50 frame); after that a frame reuses the pages the last
one freed (0.1-0.2 page faults per frame, 1 ms of kernel time).

Under those thresholds, and under glibc's own rule (which raises the mmap threshold each time a
large mmapped block is freed), the multi-megabyte support and batch arrays come from the heap once
a class has been replaced, and the pages they leave when freed stay resident. ``malloc_trim(0)`` gives every whole free page of every
arena back: after four EfficientNet-Lite0 classes at 473 are removed, 618 MB stay resident instead
of 658 (session 9). The Segmenter calls :func:`release_freed_memory` after it drops support arrays;
nothing happens on other C libraries (musl, macOS, Windows), whose allocators behave otherwise."""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache
from typing import Callable


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
OPT_OUT = "SCCAN_MALLOC_DEFAULTS"  # set to 1: leave glibc's allocator settings as they are


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
    except OSError:
        return None


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    trim = getattr(_libc(), "malloc_trim", None)  # glibc only
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


@lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Let the C heap keep a frame's freed arrays for the next frame (glibc ``mallopt``: mmap
    threshold 32 MB, trim threshold 64 MB). Process-wide and once per process; the Segmenter calls
    it when it is made.

    It changes nothing where the C library is not glibc, where ``SCCAN_MALLOC_DEFAULTS=1`` asks to
    leave the allocator alone, or where glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` environment variables already set these.

    Returns:
        True when the settings were made.
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if (mallopt is None or os.environ.get(OPT_OUT, "") not in ("", "0")
            or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Return whole free pages of the C heap to the system (glibc ``malloc_trim(0)``).

    Returns:
        True when memory was released; False when there was none to release or the C library has
        no ``malloc_trim``.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
