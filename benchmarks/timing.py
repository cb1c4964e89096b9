"""Shared helpers of the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on
``sys.path``): timing, and malloc set-up after building recipe models."""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable
from typing import Any


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Run ``fn`` ``repeat`` times; (fastest wall time in s, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def tune_after_build() -> bool:
    """Give the freed heap of model building back (the recipe's temporaries; a checkpoint load leaves none, so
    they must not count as the pipeline's memory), then apply facefix's malloc tuning. Returns whether it applied."""
    from facefix.runtime import tune_malloc

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return tune_malloc()
