"""The C allocator's settings for a training process (Linux, glibc).

A training step allocates and frees the same few megabytes of tensors hundreds of times
an epoch. glibc's malloc gives memory above its trim threshold back to the kernel on
each free and serves large blocks by fresh `mmap`s, so the next step faults the same
pages in again: on this project's 2-core machine a fresh process's first epoch of batch
1024 took 8k-27k minor page faults (up to 0.2 s of system time), 7.4k-8k with the
settings below, and was about 5 % faster with them (BENCHMARKS.md, training speed).

`retain_freed_memory` raises the trim threshold (freed heap stays in the process for
reuse) and the mmap threshold (blocks up to 32 MiB come from the heap). The process
keeps its peak heap instead of shrinking after it; the settings are process-wide and
last until the process ends. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import cache

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Freed heap memory is returned to the kernel only above this much at the heap's top.
TRIM_THRESHOLD_BYTES = 1 << 30
#: Blocks up to this size come from the heap (and are reused), not from fresh mmaps.
MMAP_THRESHOLD_BYTES = 32 << 20


@cache
def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (once per process); returns
    whether the settings took effect (False where the C library is not glibc)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(trimmed and mapped)
