"""The synthetic out-of-domain benchmark in its quick mode (benchmarks/ood_synthetic/run.py --quick).

The whole path runs: a small generator, a SmallEncoder trained to invert it, occluded and misaligned test images
with true masks, SAMM trained by the real ``facefix train samm`` command, and the evaluation. The bars are well
under what the quick run measured on 2 CPU cores (see the constants), so they catch a broken method, not noise.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "ood_synthetic" / "run.py"
# The quick run (seed 0, 150 SAMM steps) measured IoU@0.5 0.32 and +6.8 dB inside the occluders (README); an
# barely trained SAMM (60 steps: the same ring-shaped mask on every image) scored IoU@0.5 0.003.
MIN_IOU = 0.2                # SAMM (cycle_align 2) mask IoU@0.5 vs the true occluder mask
MIN_OCCLUDED_GAIN_DB = 4.0   # SAMM over encoder-only, PSNR inside the occluders


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ood_synthetic_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_occluders_have_exact_masks_and_misalignment_stays_out_of_them(bench):
    rng = np.random.default_rng(0)
    clean = np.full((64, 64, 3), 100, np.uint8)
    donor = np.full((64, 64, 3), 200, np.uint8)
    for kind in bench.OCCLUDERS:
        img, mask = bench.occlude(clean, donor, rng, kinds=(kind,))
        assert mask.any() and mask.dtype == bool
        assert (img[~mask] == clean[~mask]).all()  # nothing outside the mask changed
        if kind == "patch":
            assert (img[mask] == donor[mask]).all()
    moved = bench.misalign(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8),
                           np.random.default_rng(2))
    assert moved.shape == (64, 64, 3) and moved.dtype == np.uint8


def test_mask_scores_and_region_fidelity(bench):
    true = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    true[:, :, :8] = True
    half = torch.zeros(2, 1, 16, 16)
    half[:, :, :4] = 0.9  # half of the true region, confidently
    s = bench.mask_scores(half, true)
    assert s["iou@0.5"] == pytest.approx(0.5) and s["precision@0.5"] == 1 and s["recall@0.5"] == pytest.approx(0.5)
    assert s["iou@0.75"] == pytest.approx(0.5) and bench.mask_scores(half * 0.5, true)["iou@0.5"] == 0

    true = torch.zeros(2, 1, 48, 48, dtype=torch.bool)
    true[:, :, :16] = True
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    y = x.clone()
    y[:, :, :16] = -x[:, :, :16]  # wrong only inside the true mask
    f = bench.fidelity(y, x, true)
    assert f["psnr_out"] == 100 and f["psnr_in"] < 10 and f["psnr"] < 20
    assert f["ssim_in"] < 0.1 and f["ssim_out"] > 0.5  # SSIM windows near the edge see both regions


def test_quick_run_samm_finds_the_occluders_and_beats_the_encoder(bench, tmp_path):
    result = bench.run(bench.QUICK, tmp_path, log=lambda _line: None)
    table = result["table"]
    samm, enc = table["SAMM cycle_align 2"], table["encoder only"]
    assert samm["iou@0.5"] >= MIN_IOU, table
    assert samm["psnr_in"] >= enc["psnr_in"] + MIN_OCCLUDED_GAIN_DB, table
    assert samm["psnr"] > enc["psnr"]
    # the report: the table, the figure and the numbers behind them
    assert "| SAMM cycle_align 2 |" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["table"] == json.loads(json.dumps(table))
    assert (tmp_path / "figure.png").stat().st_size > 0
    assert (tmp_path / "samm_run" / "samm_latest.pt").is_file()  # trained by `facefix train samm`
