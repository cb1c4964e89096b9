"""SAMM: the official checkpoint layout, and the official forward pass's numbers (tests/golden/samm)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from facefix.models.samm import RESOLUTIONS, SAMM, SAMMTrace, blend, compose_mask
from tests.conftest import GOLDEN, assert_channel_views, chstats, crops, golden
from tests.recipe import fill_module

SAMM_DIR = GOLDEN / "samm"
# the two 1024 input photos (RGB uint8): the aligned grace_hopper and a seeded smooth random image
INPUTS = {"grace": GOLDEN / "align" / "grace_hopper_aligned1024.png", "smooth": SAMM_DIR / "samm_smooth.png"}
# tests/golden/README.md, SAMM tolerances
TOL_ALIGN, TOL_RGB, TOL_FEAT, TOL_F16 = 1e-4, 2e-4, 3e-4, 3e-3


def close(a: torch.Tensor, ref: np.ndarray, atol: float, what: str = "") -> None:
    a = a.detach().cpu().float().numpy()
    assert a.shape == ref.shape, (what, a.shape, ref.shape)
    err = np.abs(a - ref.astype(np.float32)).max()
    assert err <= atol, f"{what}: max |diff| {err:.3g} > {atol}"


def input_u8(image: str) -> np.ndarray:
    """[1024,1024,3] uint8 RGB input photo of the pipeline goldens."""
    return np.asarray(Image.open(INPUTS[image]).convert("RGB"))


def stats_close(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert np.abs(ours[..., :4] - ref[..., :4]).max() <= 2e-4, what
    rel = np.abs(ours[..., 4] - ref[..., 4]) / np.maximum(np.abs(ref[..., 4]), 1e-12)
    assert rel.max() <= 1e-4, what


def test_state_dict_is_the_official_layout_and_recipe_is_bit_exact(samm):
    layout = json.loads((SAMM_DIR / "layout_samm_e4e.json").read_text())
    entries = layout["samm_entries"]["entries"]
    assert [(k, list(v.shape)) for k, v in samm.state_dict().items()] == [(k, s) for k, s, _ in entries]
    # the official count is 43,974,148 trainable, 4 of which are the unused noiseInj scalars (buffers here)
    assert sum(p.numel() for p in samm.parameters()) == 43_974_148 - 4
    recipe = json.loads((SAMM_DIR / "recipe_samm_e4e.json").read_text())
    sd = samm.state_dict()
    for row in recipe["rows"]:
        assert hashlib.sha256(sd[row["key"]].numpy().tobytes()).hexdigest() == row["sha256"], row["key"]


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("k", [2, 1])
@torch.no_grad()
def test_block_matches_official_on_non_square_inputs(samm, res, k):
    d = golden("samm/samm_block_unit.npz")
    prev = torch.from_numpy(d[f"P_{res}"]) if f"P_{res}" in d else None
    y, align = samm.block(res)(torch.from_numpy(d[f"G_{res}"]), torch.from_numpy(d[f"E_{res}"]), prev, cycle_align=k)
    close(align, d[f"align_{res}_k{k}"], TOL_ALIGN, "align")
    assert_channel_views(y, d, f"y_{res}_k{k}", TOL_RGB)


@torch.no_grad()
def test_block32_on_pipeline_tensors(samm):
    d = golden("samm/samm_block32_io.npz")
    y, align = samm.block(32)(torch.from_numpy(d["G_32"]), torch.from_numpy(d["E_32"]))
    close(align, d["align_32"], TOL_ALIGN, "align")
    assert_channel_views(y, d, "y_32", TOL_FEAT)


def test_unused_official_scalars_do_not_change_outputs(samm):
    d = golden("samm/samm_block_unit.npz")
    g, e = torch.from_numpy(d["G_32"]), torch.from_numpy(d["E_32"])
    with torch.no_grad():
        before = samm.block(32)(g, e)[0]
        blk = samm.block(32)
        saved = blk.weight.clone(), blk.noiseInj.weight.clone()
        blk.weight += 0.5
        blk.noiseInj.weight += 0.5
        after = samm.block(32)(g, e)[0]
        blk.weight.copy_(saved[0])  # (x + 0.5) - 0.5 is not x in float32: restore exactly for later tests
        blk.noiseInj.weight.copy_(saved[1])
    assert torch.equal(before, after)


def _check_views(out, d):
    for r in RESOLUTIONS:  # the 128 and 256 px aligns strided to 64 px
        step, a = r // min(r, 64), out.aligns[r]
        key = f"align_{r}" if step == 1 else f"align_{r}_sub{step}"
        close(a[:, :, ::step, ::step], d[key], TOL_ALIGN, key)
    for name, t, tol in (("mask1024", out.mask, TOL_ALIGN), ("gen", out.generated, TOL_RGB),
                         ("out", out.image, TOL_RGB)):
        close(t[:, :, ::16, ::16], d[f"{name}_sub16"], tol, f"{name}_sub16")
        close(t[:, :, 480:544, 480:544], d[f"{name}_center64"], tol, f"{name}_center64")
        ref = d[f"{name}_stats"]
        x = t.double()
        ours = np.array([x.mean().item(), x.std().item(), x.min().item(), x.max().item(), x.abs().sum().item()])
        assert np.abs(ours[:4] - ref[:4]).max() <= 1e-4 and abs(ours[4] - ref[4]) / abs(ref[4]) <= 1e-4, name


@torch.no_grad()
def test_grace_inversion_features_masks_and_full_images(pipe):
    """Main case, stage by stage: x256, codes, the G/E/y' of every level, aligns, mask, gen, out (full f16)."""
    d = golden("samm/samm_grace_inv.npz")
    x, x256 = pipe.prepare(input_u8("grace"))
    close(x256, d["x256"], 1e-5, "x256")
    inv = pipe.encode(x256)
    close(inv.w_plus - pipe.latent_avg, d["codes"], TOL_ALIGN, "codes")
    close(inv.w_plus, d["wplus"], TOL_ALIGN, "wplus")

    projected = pipe.samm.project(inv.features)
    trace, seen = SAMMTrace(), {}
    inner = pipe.samm.feature_hook(projected, trace)

    def spy(res, y):
        out = inner(res, y)
        if res in projected:
            seen[res] = (chstats(y), chstats(out))
        return out

    gen = pipe.generator.synthesis(inv.w_plus, feature_hook=spy)
    for r in RESOLUTIONS:
        stats_close(seen[r][0], d[f"G_{r}_chstats"], f"G_{r}")
        stats_close(chstats(projected[r]), d[f"E_{r}_chstats"], f"E_{r}")
        stats_close(seen[r][1], d[f"y_{r}_chstats"], f"y_{r}")
    mask = compose_mask(trace.aligns)
    out = blend(x, gen, mask)
    from facefix.pipeline import PipelineOutput

    _check_views(PipelineOutput(out, inv.w_plus, gen, mask, "samm", trace.aligns), d)
    # full-resolution crops of the float16 images: corners, edge midpoints, centre
    full_mg = golden("samm/samm_grace_inv_full_mask_gen_f16.npz")
    full_out = golden("samm/samm_grace_inv_full_out_f16.npz")
    for name, t, f in (("mask1024", mask, full_mg), ("gen", gen, full_mg), ("out", out, full_out)):
        close(crops(t, f["crop_origins"]), f[f"{name}_f16_crops"], TOL_F16, f"full {name}")

    # --mask-from original: replaying the stored aligns on the same code re-creates the SAMM pass exactly.
    replay = pipe.render(x, inv, mask="samm", reference=PipelineOutput(out, inv.w_plus, gen, mask, "samm",
                                                                       trace.aligns))
    assert torch.equal(replay.generated, gen) and torch.equal(replay.image, out)


@pytest.mark.parametrize("case", ["grace_edit", "grace_k1", "smooth_inv"])
@torch.no_grad()
def test_pipeline_render_matches_official(pipe, case):
    """Through FacefixPipeline.render: the smile edit (flow and mask recomputed on the edited pass, as the official
    code does), one alignment cycle with the same weights, and a second image."""
    inputs = golden("samm/samm_inputs.npz")
    image, mode = case.split("_")
    d = golden(f"samm/samm_{case}.npz")
    x, x256 = pipe.prepare(input_u8(image))
    inv = pipe.encode(x256)
    w = inv.w_plus
    if mode == "edit":
        w = w + float(inputs["edit_intensity"]) * torch.from_numpy(inputs["smile_direction"])[None]
    close(w, d["wplus"], TOL_ALIGN, "wplus")
    out = pipe.render(x, inv, w_plus=w, mask="samm", cycle_align=1 if mode == "k1" else None)
    _check_views(out, d)


# -- loading ----------------------------------------------------------------------------------------------------


def test_official_file_loads_and_checks_its_generator(tmp_path, g1024, samm):
    from facefix.checkpoints import load_samm
    from facefix.errors import WeightsError
    from tests.conftest import write_samm_checkpoint

    path = write_samm_checkpoint(tmp_path / "net_g_410000.pth", g1024.state_dict(), both=True)
    loaded = load_samm(path, g1024)
    assert loaded.config == samm.config
    for (k, a), b in zip(samm.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert load_samm(path, g1024, cycle_align=1).block(32).cycle_align == 1

    # trained on another generator: its swept-in style affines differ -> refused, not silently mixed
    other = {k: (v + 1 if k == "convs.4.conv.modulation.bias" else v) for k, v in g1024.state_dict().items()}
    bad = write_samm_checkpoint(tmp_path / "other.pth", other)
    with pytest.raises(WeightsError, match="different StyleGAN2 generator.*convs.4.conv.modulation.bias"):
        load_samm(bad, g1024)


def test_facefix_format_round_trip_keeps_config(tmp_path):
    from facefix.checkpoints import load_samm, save_samm
    from facefix.errors import WeightsError

    model = fill_module(SAMM(channel_multiplier=1, cycle_align=3, encoder_mode="e4e", bias=True), "samm")
    save_samm(tmp_path / "s.pt", model, {"step": 12})
    loaded = load_samm(tmp_path / "s.pt")
    assert loaded.config == model.config and loaded.encoder_mode == "e4e"
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    torch.save({"g_ema": {}}, tmp_path / "g.pt")
    with pytest.raises(WeightsError, match="not a SAMM checkpoint"):
        load_samm(tmp_path / "g.pt")


@pytest.mark.slow
def test_cli_invert_with_official_samm_file_matches_golden(tmp_path, e4e1024_file, g1024):
    """`facefix invert --aligned --samm FILE --save mask` on the golden crop reproduces the official output."""
    from tests.conftest import write_generator_checkpoint, write_samm_checkpoint
    from tests.test_cli import ALIGNED, run

    gen = write_generator_checkpoint(tmp_path / "stylegan2-ffhq-config-f.pt", size=1024)
    samm_file = write_samm_checkpoint(tmp_path / "net_g.pth", g1024.state_dict())
    r = run("invert", ALIGNED, "--aligned", "--samm", samm_file, "--generator", gen, "--encoder", e4e1024_file,
            "--save", "mask", "--device", "cpu", "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output

    def png_crops(name: str, origins: np.ndarray) -> np.ndarray:  # [9,C,64,64] of an output PNG, as int
        img = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / name)).astype(np.int64))
        return crops(img.permute(2, 0, 1)[None], origins).numpy()

    full_out = golden("samm/samm_grace_inv_full_out_f16.npz")  # full-resolution crops of the float16 images
    full_mg = golden("samm/samm_grace_inv_full_mask_gen_f16.npz")
    out = png_crops("grace_hopper_aligned1024.png", full_out["crop_origins"])
    ref_u8 = np.clip(np.round((full_out["out_f16_crops"].astype(np.float32) + 1) * 127.5), 0, 255)
    assert np.abs(out - ref_u8).max() <= 1 and (out != ref_u8).mean() < 0.01
    mask = png_crops("grace_hopper_aligned1024.mask.png", full_mg["crop_origins"])[:, :1]
    ref_mask = full_mg["mask1024_f16_crops"].astype(np.float32)
    assert np.abs(mask - np.round(ref_mask * 255)).max() <= 1


@pytest.mark.parametrize("shape", [(1, 8, 5, 7, 9), (2, 16, 3, 12, 16), (1, 32, 32, 1, 1), (3, 4, 6, 2, 3)])
def test_winograd_conv_equals_direct_conv(shape, monkeypatch):
    import torch.nn.functional as F

    import facefix.models.ops as ops

    n, c, co, h, w = shape
    g = torch.Generator().manual_seed(sum(shape))
    x, wt = torch.randn(n, c, h, w, generator=g), torch.randn(co, c, 3, 3, generator=g)
    ref = F.conv2d(x, wt, padding=1)
    for chunk in (ops.WINOGRAD_CHUNK_ELEMS, 64):  # one chunk, and many tile-row chunks
        monkeypatch.setattr(ops, "WINOGRAD_CHUNK_ELEMS", chunk)
        y = ops.winograd_conv3x3(x, ops.winograd_weight(wt))
        assert y.shape == ref.shape and (y - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_conv3x3_uses_direct_conv_for_training_and_follows_weight_updates():
    from facefix.models.samm import Conv3x3

    conv = Conv3x3(64, 64, bias=True)  # wide enough for the Winograd path
    x = torch.randn(1, 64, 6, 6)
    y = conv(x)  # grad enabled: plain conv, differentiable
    y.sum().backward()
    assert conv.weight.grad is not None and conv._wino is None
    with torch.no_grad():
        fast = conv(x)
        assert conv._wino is not None  # the Winograd path ran
        assert (fast - y).abs().max() < 1e-5
        conv.weight.mul_(2)  # an in-place update (an optimizer step) invalidates the cached transform
        assert (conv(x) - conv._conv_forward(x, conv.weight, conv.bias)).abs().max() < 1e-5
