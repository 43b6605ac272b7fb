"""Process-level tuning for training and serving on the CPU.

glibc serves every allocation above 128 KiB (later: above the largest freed one) with a fresh mmap, and
the kernel zero-fills each page on first touch. A training step allocates several (batch x n_items) score
and gradient tensors of ~16 MB and frees them again, so with the defaults every step pays tens of thousands
of page faults: measured here, SR-GNN on Tmall spent ~20 % of each step in the kernel. Raising the mmap and
trim thresholds lets freed blocks be reused instead. Nothing changes on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3


@functools.cache
def tune_malloc() -> bool:
    """Keep big freed blocks in the heap (glibc only). Returns whether the settings were applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # the largest value glibc accepts on 64-bit
    ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30)
    ok &= mallopt(M_TOP_PAD, 256 * 1024 * 1024)
    return bool(ok)
