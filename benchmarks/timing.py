"""Shared helpers of the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on
``sys.path``): timing, malloc set-up after building recipe models, and access to the test helpers."""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Run ``fn`` ``repeat`` times; (fastest wall time in s, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def repo_root_on_path() -> None:
    """Put the repository root on ``sys.path``, so that benchmarks import the test helpers: the recipe weights
    (``tests.recipe``) and the checkpoint writers (``tests.conftest``)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def tune_after_build() -> bool:
    """Give the freed heap of model building back (the recipe's temporaries; a checkpoint load leaves none, so
    they must not count as the pipeline's memory), then apply facefix's malloc tuning. Returns whether it applied."""
    from facefix.runtime import tune_malloc

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return tune_malloc()
