"""SAMM on photos beyond the golden pair, through the pipeline, against the official forward pass.

The official outputs and how they were produced: ``tests/golden/samm/README_photos.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import GOLDEN
from tests.models.test_samm import TOL_ALIGN, TOL_F16, TOL_RGB, close

PHOTOS = Path(__file__).resolve().parents[1] / "golden" / "samm"
CASES = ("astronaut512", "astronaut2048", "grace_shift_flip", "grace_dark", "grace_clutter", "checker")


def photo_input(case: str) -> np.ndarray:
    """The uint8 RGB crop [S,S,3] of a case. Only the astronaut crop is stored (``facefix.align`` of
    ``skimage.data.astronaut()`` at 512 px); the others are exact integer transforms of it, of the aligned
    grace_hopper crop, or of pixel indices."""
    if case.startswith("astronaut"):
        astro = np.asarray(Image.open(PHOTOS / "photos_astronaut512.png").convert("RGB"))
        if case == "astronaut512":
            return astro
        # 2048 px: 4x nearest plus a 5 px ripple, so that resizing without and with antialias differ
        yy, xx = np.mgrid[:2048, :2048]
        ripple = ((xx + 2 * yy) % 5 - 2) * 12
        return np.clip(np.kron(astro, np.ones((4, 4, 1), np.int16)) + ripple[..., None], 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:1024, :1024]
    if case == "checker":  # no face; 3 px checker in red, ramps in green and blue
        return np.stack([(xx // 3 + yy // 3) % 2 * 255, xx // 4 % 256, yy // 4 % 256], -1).astype(np.uint8)
    grace = np.asarray(Image.open(GOLDEN / "align" / "grace_hopper_aligned1024.png").convert("RGB"))
    if case == "grace_shift_flip":  # moved 41 px up and 29 px right (mirrored borders), then flipped
        padded = np.pad(grace, ((64, 64), (64, 64), (0, 0)), mode="reflect")
        return np.ascontiguousarray(padded[105:1129, 35:1059][:, ::-1])
    if case == "grace_dark":
        return (grace.astype(np.uint16) * 9 // 16 + 8).astype(np.uint8)
    if case == "grace_clutter":  # coloured boxes and a 2 px checker band around an untouched face ellipse
        out = grace.copy()
        outside = (xx - 512) ** 2 * 420 ** 2 + (yy - 540) ** 2 * 330 ** 2 >= (330 * 420) ** 2
        for i in range(40):
            x0, y0, w, h = i * 379 % 960, i * 613 % 960, 24 + i * 53 % 170, 24 + i * 97 % 170
            box = np.zeros_like(outside)
            box[y0:y0 + h, x0:x0 + w] = True
            out[box & outside] = (i * 71 % 256, i * 149 % 256, i * 211 % 256)
        band = outside & (yy >= 920)
        out[band] = np.where(((xx // 2 + yy // 2) % 2 == 1)[band][:, None], 250, 5)
        return out
    raise ValueError(case)


def official(case: str) -> dict[str, np.ndarray]:
    """The official outputs of one case (``photos_official.npz`` keys ``<case>__<array>``)."""
    with np.load(PHOTOS / "photos_official.npz") as d:
        return {k.split("__", 1)[1]: d[k] for k in d.files if k.startswith(case + "__")}


def stats_close(t: torch.Tensor, ref: np.ndarray, what: str) -> None:
    """Whole-tensor [mean, std (N-1), min, max, sum |x|] in float64 against ``ref``: atol 1e-4, sum |x| rtol 1e-4."""
    x = t.double()
    ours = np.array([x.mean().item(), x.std().item(), x.min().item(), x.max().item(), x.abs().sum().item()])
    assert np.abs(ours[:4] - ref[:4]).max() <= 1e-4 and abs(ours[4] - ref[4]) / abs(ref[4]) <= 1e-4, what


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_photo_matches_official(pipe, case):
    """prepare -> encode -> render with SAMM, level by level, against the official forward pass.

    How the official forward was driven: ``run_ood_faceGAN_inversion.py`` with ``options/test/E4E_Face_test.yml``
    (cycle_align 2), recipe weights, avg latent = the generator file's [512] ``latent_avg``, on CPU, with the
    goldens' two noise patches: ``randomize_noise=False``, and the four SAMM layers' noise =
    ``noises.noise_{5,7,9,11}``. That is facefix's default drive (the checkpoint's fixed noise). Unpatched, the
    official code draws fresh noise on every call: two such runs of one photo differ by 19.7-21.1 dB PSNR (image)
    and 20.2-22.1 dB (mask), so no deterministic output can match one of them.
    A crop that is not 1024 px is first resized to 1024 by bilinear interpolation without antialias, as the
    official script does; the encoder input and the blend start from that image (``astronaut512`` up,
    ``astronaut2048`` down: with a direct resize to 256 px and an antialiased blend it was off by 0.059 in W+).
    """
    ref = official(case)
    x, x256 = pipe.prepare(photo_input(case))
    close(x256[:, :, ::8, ::8], ref["x256_sub8"], 1e-5, "x256")
    inv = pipe.encode(x256)
    close(inv.w_plus, ref["wplus"], TOL_ALIGN, "wplus")
    out = pipe.render(x, inv, mask="samm")
    for r, step in ((32, 1), (64, 2), (128, 4), (256, 8)):
        close(out.aligns[r][:, :, ::step, ::step], ref[f"align_{r}_sub{step}"], TOL_ALIGN, f"align_{r}")
    close(out.aligns[256][:, :, :32, :32], ref["align_256_corner"], TOL_ALIGN, "align_256 corner")
    close(out.mask[:, :, ::16, ::16], ref["mask_sub16"], TOL_ALIGN, "mask")
    close(out.generated[:, :, ::16, ::16], ref["gen_sub16_f16"].astype(np.float32), TOL_F16, "gen")
    close(out.image[:, :, ::8, ::8], ref["out_sub8_f16"].astype(np.float32), TOL_F16, "out")
    close(out.image[:, :, 496:528, 496:528], ref["out_center32"], TOL_RGB, "out center")
    for name, t in (("mask", out.mask), ("gen", out.generated), ("out", out.image)):
        stats_close(t, ref[f"{name}_stats"], name)
