"""Fixtures of the SAMM tests: the SAMM recipe model and the golden pipeline set-up."""

from __future__ import annotations

import pytest

from facefix.models.encoders import Encoder4Editing
from facefix.models.samm import SAMM
from facefix.pipeline import FacefixPipeline
from tests.recipe import fill_module, latent_avg


@pytest.fixture(scope="module")
def samm():
    return fill_module(SAMM(), "samm").eval().requires_grad_(False)


@pytest.fixture(scope="module")
def pipe(g1024, samm):
    """The golden set-up: g1024 recipe, e4e recipe (the official SAMM encoder mode), avg = g's [512] latent_avg."""
    enc = fill_module(Encoder4Editing(), "encoder", 5000).eval().requires_grad_(False)
    avg = latent_avg([512], 900).expand(18, 512).clone()
    p = FacefixPipeline(g1024, enc, avg, samm=samm)
    assert enc.fpn_upsample == "bicubic" and p.input_resize == "bilinear"  # picked up from SAMM's encoder mode
    return p
