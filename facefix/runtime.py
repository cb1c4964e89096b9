"""Process-level settings for fast CPU inference: glibc malloc tuning.

Why: a 1024 px StyleGAN2 pass allocates many 64-256 MB temporaries. glibc serves each one with a fresh ``mmap``
and returns it with ``munmap`` on free, so the kernel zero-fills every page again on the next pass: about 1.5 M
minor page faults and 5 s of system time per generator forward on 2 cores.
Telling malloc to keep large blocks on its heap (no mmap, no trimming) lets PyTorch reuse the same pages, the
effect of preloading jemalloc without asking users to preload anything. Freed memory stays mapped to the process,
which is what a short-lived CLI run wants. Set ``FACEFIX_MALLOC_TUNING=0`` to leave malloc alone.
The one exception is a SAMM render, which maps its largest blocks again (:func:`mmap_large_blocks`) so that
the heap does not fragment.

This is a side effect on the whole process, so the library never does it on import: the CLI and the benchmarks
call :func:`tune_malloc` once at start-up, and Python users may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
_mallopt = None  # libc's mallopt once tune_malloc has applied its settings


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
    global _mallopt
    _mallopt = mallopt if ok else None
    return bool(ok)


@contextmanager
def mmap_large_blocks(threshold: int = 8 << 20) -> Iterator[None]:
    """Inside the block, allocations of at least ``threshold`` bytes get their own mmap again (returned to the
    kernel when freed), if :func:`tune_malloc` had turned that off; otherwise a no-op.

    Why: SAMM's levels allocate ever larger temporaries (4 MB at 32 px to 64 MB at 256 px). On a heap that never
    maps or trims, the freed blocks of one level are too small for the next one's, so the heap grows ~1 GB past
    what is live (3.0-3.5 GB peak RSS for a 1024 photo instead of ~2.4 GB live). Mapping the blocks of 8 MB and
    more (the SAMM level activations and the generator's maps from 64 px up) keeps the peak near the live
    size, while the many smaller ones (Winograd chunks, see ``facefix.models.ops``) reuse heap pages. The
    threshold was chosen with ``benchmarks/bench_samm.py`` (``benchmarks/README.md``).
    """
    if _mallopt is None:
        yield
        return
    _mallopt(_M_MMAP_THRESHOLD, threshold)
    _mallopt(_M_MMAP_MAX, 1 << 16)
    try:
        yield
    finally:
        _mallopt(_M_MMAP_MAX, 0)
