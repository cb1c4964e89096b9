"""Shared fixtures: paths to the golden data and recipe-weight models, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = Path(os.environ.get("FACEFIX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN = SHARED / "golden"


def golden(name: str) -> dict[str, np.ndarray]:
    """Load one golden npz (fails loudly if the shared data is missing: these tests are the numerics proof)."""
    path = GOLDEN / name
    if not path.exists():
        raise FileNotFoundError(f"golden file {path} missing; set FACEFIX_SHARED to the shared/ folder")
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def g64():
    """Generator(64) with the g64 recipe weights (bit-identical to the goldens' weights)."""
    from facefix.models.recipe import fill_module
    from facefix.models.stylegan2 import Generator

    return fill_module(Generator(64), "generator").eval().requires_grad_(False)


@pytest.fixture(scope="session")
def g1024():
    """Generator(1024) config-f with the g1024 recipe weights (~133 MB)."""
    from facefix.models.recipe import fill_module
    from facefix.models.stylegan2 import Generator

    return fill_module(Generator(1024), "generator").eval().requires_grad_(False)
