"""Keep glibc from returning large freed blocks to the system while a prediction runs.

glibc serves every block over its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives
it back on ``free``: each U-Net layer then page-faults its whole output in again, which cost
5.7 s of system time against 13 s of user time for a 2048x2048 image. Inside
:func:`keep_freed_memory` large blocks come from the heap and stay there for reuse; on exit the
defaults are restored and ``malloc_trim`` hands the memory back, so nothing leaks.

The settings are process-wide, so a generator opens the context around each step and never
across a ``yield``. A step that another will follow soon exits with ``trim=False``: the mmap
limit comes back, but glibc's trim threshold stays raised (with it back at 128 KiB, the first
``free`` after the step, anyone's, trims the heap's top and the next tile page-faults its
activations in again: +180,000 minor faults, +0.3 s of system time on a 2048x2048 image, 4 tiles,
base-16 model) until :func:`trim_freed_memory` or an exit with ``trim=True``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from contextlib import contextmanager

__all__ = ["keep_freed_memory", "trim_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536

_lock = threading.Lock()
_users = 0


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


@contextmanager
def keep_freed_memory(trim: bool = True):
    """Context in which freed memory is kept by the process for reuse (glibc only; else no-op).

    When the last open context exits, large blocks come from ``mmap`` again; with ``trim`` the
    trim threshold comes back too and the freed memory is handed back to the system at once,
    without it both wait for the next :func:`trim_freed_memory` (or exit with ``trim``).
    """
    global _users
    if _LIBC is None:
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            # the largest int: with 2**30, a tile whose memory tops 1 GiB (tiling.DEFAULT_MEMORY
            # allows 2) had its heap trimmed after every pass and page-faulted in again (a
            # base-16 2236-px tile: 264,000 minor faults per pass; with this value, none after
            # the second pass)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                if trim:
                    _trim()


def trim_freed_memory() -> None:
    """Restore glibc's trim threshold and hand the freed memory back to the system now, unless
    a :func:`keep_freed_memory` context is open (glibc only; else no-op)."""
    if _LIBC is None:
        return
    with _lock:
        if _users == 0:
            _trim()


def _trim() -> None:
    _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    _LIBC.malloc_trim(0)
