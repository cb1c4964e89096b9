"""StyleGAN2 generator: official layout and the reference code's numbers (tests/golden)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefix.models.stylegan2 import Generator
from tests.conftest import GOLDEN, crops, golden, stats
from tests.recipe import latent_avg

ATOL = 1e-4  # golden README: W, W+ and float32 images


def close(a: torch.Tensor, b: np.ndarray, atol: float = ATOL) -> float:
    diff = (a.detach().float() - torch.from_numpy(np.asarray(b, dtype=np.float32))).abs().max().item()
    assert diff <= atol, f"max |diff| {diff:.3g} > {atol}"
    return diff


@pytest.mark.parametrize("size,layout", [(64, "layout_g64.json"), (1024, "layout_g1024.json")])
def test_state_dict_is_official_layout(size, layout):
    entries = json.loads((GOLDEN / layout).read_text())["entries"]
    sd = Generator(size).state_dict()
    assert [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in sd.items()] == \
        [(k, s, d) for k, s, d in entries]


def test_derived_sizes():
    g = Generator(1024)
    assert (g.n_latent, g.num_layers, g.log_size) == (18, 17, 10)
    assert Generator(64).n_latent == 10


@torch.no_grad()
def test_mapping(g64):
    d = golden("g64_mapping.npz")
    close(g64.mapping(torch.from_numpy(d["z"])), d["w"])


@torch.no_grad()
def test_synthesis_fixed_noise_batch_and_single(g64):
    d = golden("g64_synthesis.npz")
    wplus = torch.from_numpy(d["wplus"])
    shared = g64.synthesis(wplus)  # a CPU inference batch: all levels (<= 64 px) in the shared-weight form
    close(shared, d["img"])
    looped = g64.synthesis(wplus, feature_hook=lambda res, y: y)  # a hooked batch: one convolution per sample
    close(looped, d["img"])
    with torch.enable_grad():  # the reference's grouped convolution, kept for autograd
        grouped = g64.synthesis(wplus)
    assert (grouped - looped).abs().max() <= 1e-5
    assert (grouped - shared).abs().max() <= 1e-5
    for i in range(2):
        close(g64.synthesis(wplus[i:i + 1]), d["img_batch1"][i:i + 1])


@torch.no_grad()
@pytest.mark.parametrize("out_res", [32, 256])
def test_cpu_batch_equals_one_sample_at_a_time(g1024, out_res):
    """A CPU batch shares the levels up to 64 px and runs the rest per sample: the same images as batch 1, with
    per-sample random noise ([N,1,r,r], sliced per sample) and with the fixed buffers ([1,1,r,r])."""
    w = torch.randn(2, 18, 512, generator=torch.Generator().manual_seed(0))
    for noise in (g1024.random_noise(2, torch.Generator().manual_seed(1)), None):
        both = g1024.synthesis(w, noise=noise, out_res=out_res)
        each = torch.cat([g1024.synthesis(w[k:k + 1], out_res=out_res,
                                          noise=None if noise is None else [nz[k:k + 1] for nz in noise])
                          for k in range(2)])
        assert both.shape == (2, 3, out_res, out_res)
        assert (both - each).abs().max() <= 1e-4


@torch.no_grad()
def test_synthesis_custom_noise(g64):
    d = golden("g64_synthesis.npz")
    noise = [torch.from_numpy(d[f"custom_noise_{i}"]) for i in range(g64.num_layers)]
    out = g64.synthesis(torch.from_numpy(d["wplus"][:1]), noise=noise)
    close(out, d["img_custom_noise"])
    # and the noise matters: the fixed-noise image is far from it
    assert (g64.synthesis(torch.from_numpy(d["wplus"][:1])) - out).abs().max() > 0.1


@torch.no_grad()
def test_truncation_z_and_wplus(g64):
    d = golden("g64_truncation.npz")
    t_lat = torch.from_numpy(d["truncation_latent"])
    w = g64.truncate(g64.mapping(torch.from_numpy(d["z"])), float(d["truncation"]), t_lat)
    close(g64.broadcast(w), d["latent"])
    close(g64.synthesis(w), d["img"])
    wp = g64.truncate(torch.from_numpy(d["wplus_in"]), float(d["truncation_wplus"]), t_lat)
    close(wp, d["latent_wplus"])
    close(g64.synthesis(wp), d["img_wplus"])
    # the recipe's truncation latent is the g checkpoint's latent_avg (seed 900)
    close(latent_avg([512], 900)[None], d["truncation_latent"], 0)


@torch.no_grad()
def test_style_mixing(g64):
    d = golden("g64_mixing.npz")
    w = g64.mix(g64.mapping(torch.from_numpy(d["z1"])), g64.mapping(torch.from_numpy(d["z2"])),
                int(d["inject_index"]))
    close(w, d["latent"])
    close(g64.synthesis(w), d["img"])


@torch.no_grad()
def test_seeded_random_noise_is_reproducible_and_differs(g64):
    w = torch.from_numpy(golden("g64_synthesis.npz")["wplus"][:1])
    a = g64.synthesis(w, generator=torch.Generator().manual_seed(3))
    b = g64.synthesis(w, generator=torch.Generator().manual_seed(3))
    c = g64.synthesis(w, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


@torch.no_grad()
def test_early_exit_is_the_skip_image_of_that_level(g64):
    w = torch.from_numpy(golden("g64_synthesis.npz")["wplus"][:1])
    seen = {}

    def hook(res, y):
        seen[res] = y.shape
        return y

    full = g64.synthesis(w, feature_hook=hook)
    assert sorted(seen) == [8, 16, 32, 64]
    half = g64.synthesis(w, out_res=32)
    assert half.shape == (1, 3, 32, 32)
    # The 32px preview is the RGB the full pass had at that level: the full image's low-pass content agrees.
    assert torch.nn.functional.avg_pool2d(full, 2).sub(half).abs().mean() < 0.5 * full.std()
    with pytest.raises(ValueError):
        g64.synthesis(w, out_res=48)


@torch.no_grad()
def test_feature_hook_replaces_features(g64):
    w = torch.from_numpy(golden("g64_synthesis.npz")["wplus"][:1])
    base = g64.synthesis(w)
    out = g64.synthesis(w, feature_hook=lambda res, y: y * 0 if res == 32 else y)
    assert (out - base).abs().max() > 1e-2


def test_missing_noise_buffers_refuse_fixed_noise(g64):
    g = Generator(64)
    g.has_fixed_noise = False
    with pytest.raises(RuntimeError, match="no noise buffers"):
        g.synthesis(torch.zeros(1, 10, 512))


def test_wrong_wplus_rows():
    with pytest.raises(ValueError, match="rows"):
        Generator(64).synthesis(torch.zeros(1, 18, 512))


@torch.no_grad()
def test_g1024_synthesis_golden(g1024):
    d = golden("g1024_synthesis.npz")
    img = g1024.synthesis(torch.from_numpy(d["wplus"]))
    close(img[:, :, ::16, ::16], d["img_sub16"])
    close(torch.nn.functional.adaptive_avg_pool2d(img, 256), d["img_pool256"])
    close(img[:, :, 480:544, 480:544], d["img_center64"])
    f16 = golden("g1024_image_f16.npz")  # full-resolution crops of the float16 image: corners, edges, centre
    close(crops(img, f16["crop_origins"]), f16["img_f16_crops"].astype(np.float32), 3e-3)
    np.testing.assert_allclose(stats(img), d["img_stats"], rtol=1e-4)
