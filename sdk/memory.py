"""Handing freed memory back to the operating system after the support arrays change.

glibc's allocator raises its mmap threshold each time a large mmapped block is freed, so once a
class has been replaced, the multi-megabyte support and batch arrays come from its heap, and the
pages they leave when freed stay resident. ``malloc_trim(0)`` gives every whole free page of every
arena back: after four EfficientNet-Lite0 classes at 473 are removed, 618 MB stay resident instead
of 658 (session 9). The Segmenter calls :func:`release_freed_memory` after it drops support arrays;
nothing happens on other C libraries (musl, macOS, Windows), whose allocators behave otherwise."""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache
from typing import Callable


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return whole free pages of the C heap to the system (glibc ``malloc_trim(0)``).

    Returns:
        True when memory was released; False when there was none to release or the C library has
        no ``malloc_trim``.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
