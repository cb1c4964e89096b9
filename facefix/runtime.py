"""Process-level settings for fast CPU inference: glibc malloc tuning.

Why: a 1024 px StyleGAN2 pass allocates many 64-256 MB temporaries. glibc serves each one with a fresh ``mmap``
and returns it with ``munmap`` on free, so the kernel zero-fills every page again on the next pass: about 1.5 M
minor page faults and 5 s of system time per generator forward on 2 cores (``shared/research/perf_baseline.md``).
Telling malloc to keep large blocks on its heap (no mmap, no trimming) lets PyTorch reuse the same pages, the
effect of preloading jemalloc without asking users to preload anything. Freed memory stays mapped to the process,
which is what a short-lived CLI run wants. Set ``FACEFIX_MALLOC_TUNING=0`` to leave malloc alone.

This is a side effect on the whole process, so the library never does it on import: the CLI and the benchmarks
call :func:`tune_malloc` once at start-up, and Python users may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def tune_malloc() -> bool:
    """Keep large allocations on the glibc heap so they are reused instead of re-faulted. Returns True if applied.

    A no-op (False) on non-Linux platforms, non-glibc C libraries, or when ``FACEFIX_MALLOC_TUNING=0``.
    """
    if os.environ.get("FACEFIX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0)                 # never serve an allocation with its own mmap
    ok &= mallopt(_M_TRIM_THRESHOLD, _INT_MAX)   # never give freed heap back to the kernel mid-run
    ok &= mallopt(_M_TOP_PAD, 64 << 20)          # grow the heap in 64 MB steps
    return bool(ok)
