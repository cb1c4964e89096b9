"""e4e and ReStyle-e4e encoders: official layouts and the reference code's numbers (tests/golden)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefix.models.encoders import Encoder4Editing, ReStyleEncoder, face_pool, restyle_invert
from tests.conftest import GOLDEN, assert_channel_views, assert_stats_close, chstats, golden, stats
from tests.models.test_stylegan2 import close
from tests.recipe import fill_module


def _encoder_entries(layout_path):
    sd = json.loads(layout_path.read_text())["state_dict"]
    entries = sd["entries"] if isinstance(sd, dict) else sd
    return [(k[len("encoder."):], s, d) for k, s, d in entries if k.startswith("encoder.")]


@pytest.mark.parametrize("cls,layout", [(Encoder4Editing, GOLDEN / "layout_e4e.json"),
                                        (ReStyleEncoder, GOLDEN / "restyle" / "layout_restyle_e4e.json")])
def test_state_dict_is_official_layout(cls, layout):
    sd = cls().state_dict()
    assert [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in sd.items()] == _encoder_entries(layout)


@pytest.fixture(scope="module")
def e4e():
    return fill_module(Encoder4Editing(), "encoder", 5000).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def restyle():
    return fill_module(ReStyleEncoder(), "encoder", 6000).eval().requires_grad_(False)


@torch.no_grad()
def test_e4e_codes_features_and_inversion(e4e, g1024):
    d = golden("e4e_inversion.npz")
    out = e4e.encode(torch.from_numpy(d["x"]), return_features=True)
    close(out.codes, d["codes"])
    feats = golden("e4e_features.npz")
    for key, tap in (("c1_body6", "body6"), ("c2_body20", "body20"), ("c3_body23", "body23")):
        assert_channel_views(out.features[tap], feats, key, 3e-4)
    wplus = out.codes + torch.from_numpy(d["latent_avg"])[None]
    close(wplus, d["wplus"])
    img = g1024.synthesis(wplus)
    close(face_pool(img), d["recon256"])
    close(img[:, :, ::16, ::16], d["img1024_sub16"])
    np.testing.assert_allclose(stats(img), d["img1024_stats"], rtol=1e-4)


@torch.no_grad()
def test_e4e_edit_golden_end_to_end(g1024):
    d = golden("e4e_edit.npz")
    wplus = torch.from_numpy(d["wplus_in"])
    direction = torch.from_numpy(d["direction"])
    for j, factor in enumerate(d["factors"]):
        w = wplus + float(factor) * direction  # [1,512] broadcast over the 18 rows (e4e convention)
        close(w, d["wplus_edit"][j:j + 1])
        img = g1024.synthesis(w)
        close(face_pool(img), d["edit256"][j:j + 1])
        close(img[:, :, ::16, ::16], d["edit1024_sub16"][j:j + 1])
        np.testing.assert_allclose(stats(img), d["edit1024_stats"][j], rtol=1e-4)


@torch.no_grad()
def test_fpn_upsample_mode_matters(e4e):
    x = torch.from_numpy(golden("e4e_inversion.npz")["x"])
    bicubic = Encoder4Editing(fpn_upsample="bicubic")
    bicubic.load_state_dict(e4e.state_dict())
    a, b = e4e(x), bicubic.eval()(x)
    assert torch.equal(a[:, :3], b[:, :3])          # coarse rows read c3 only
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3  # FPN rows differ (bicubic vs bilinear upsampling)


@torch.no_grad()
def test_restyle_codes_per_iteration_and_taps(restyle):
    inv = golden("restyle/restyle_inversion.npz")
    x = torch.from_numpy(inv["x"])
    # the first input (x, average image) and the last (x, the image fed back from iteration 4)
    enc_in = {0: torch.cat([x, torch.from_numpy(inv["avg_image"])[None]], 1),
              4: torch.cat([x, torch.from_numpy(golden("restyle/restyle_enc_inputs.npz")["enc_input4_prev"])], 1)}
    for i, inp in enc_in.items():
        close(restyle(inp), inv["codes"][i])
    out = restyle.encode(enc_in[4], return_features=True)
    feats = golden("restyle/restyle_features.npz")
    for tap in ("body2", "body6", "body20", "body23"):
        assert_channel_views(out.features[tap], feats, tap, 3e-4)
    l0, tap = golden("restyle/restyle_features_l0.npz"), out.features["input_layer"]
    sub2 = l0["input_layer_sub2_ch"]
    close(tap[:, :sub2.shape[1], ::2, ::2], sub2, 3e-4)
    assert_stats_close(chstats(tap), l0["input_layer_chstats"], 3e-4, tap[0, 0].numel(), "input_layer")


@torch.no_grad()
def test_restyle_full_loop_golden(restyle, g1024):
    inv = golden("restyle/restyle_inversion.npz")
    latent_avg = torch.from_numpy(inv["latent_avg"])
    avg_image = face_pool(g1024.synthesis(latent_avg[None]))
    close(avg_image[0], inv["avg_image"])
    out = restyle_invert(restyle, g1024.synthesis, torch.from_numpy(inv["x"]), latent_avg, avg_image, n_iters=5)
    close(out.codes, inv["latents"][4])
    img = g1024.synthesis(out.codes)
    close(img[:, :, ::16, ::16], inv["final_img1024_sub16"])
    close(img[:, :, 480:544, 480:544], inv["final_img1024_center64"])
    np.testing.assert_allclose(stats(img), inv["img1024_stats"][4], rtol=1e-4)


def test_restyle_loop_logic_with_a_stub():
    """Channel order (image first), average image at iteration 0, latent_avg added once, pooled feedback."""
    calls = []

    class Probe(ReStyleEncoder):
        def encode(self, x, return_features=False):
            calls.append(x.clone())
            from facefix.models.encoders import EncoderOutput
            return EncoderOutput(torch.ones(x.shape[0], 18, 512), None)

    x = torch.full((1, 3, 256, 256), 0.5)
    avg = torch.full((1, 3, 256, 256), -0.25)
    synth = lambda w: w[:, :1, :1].reshape(-1, 1, 1, 1).expand(-1, 3, 1024, 1024)  # noqa: E731
    out = restyle_invert(Probe(), synth, x, torch.zeros(18, 512), avg, n_iters=3)
    assert len(calls) == 3
    assert torch.equal(calls[0][:, :3], x) and torch.equal(calls[0][:, 3:], avg.expand(1, 3, 256, 256))
    assert calls[1][0, 3:].unique().tolist() == [1.0]   # G(w after iteration 0) pooled
    assert calls[2][0, 3:].unique().tolist() == [2.0]
    assert out.codes.unique().tolist() == [3.0]         # 0 + 1 + 1 + 1
