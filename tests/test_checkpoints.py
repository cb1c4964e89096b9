"""Loading the official checkpoint layouts from files: strict keys, known variants, clear errors, no pickled code."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from facefix.checkpoints import load_encoder, load_generator
from facefix.errors import WeightsError
from tests.conftest import golden, write_e4e_checkpoint, write_generator_checkpoint
from tests.models.test_stylegan2 import close


@pytest.mark.parametrize("legacy", [False, True])
def test_generator_file_loads_and_matches_golden(tmp_path, legacy):
    path = write_generator_checkpoint(tmp_path / "g.pt", legacy=legacy)
    loaded = load_generator(path)
    assert loaded.generator.size == 64 and loaded.latent_avg.shape == (512,)
    d = golden("g64_synthesis.npz")
    with torch.no_grad():
        close(loaded.generator.synthesis(torch.from_numpy(d["wplus"])), d["img"])


def test_missing_blur_kernels_are_rebuilt(tmp_path):
    path = write_generator_checkpoint(tmp_path / "g.pt", drop=".kernel")
    d = golden("g64_synthesis.npz")
    with torch.no_grad():
        close(load_generator(path).generator.synthesis(torch.from_numpy(d["wplus"])), d["img"])


def test_missing_noise_buffers_never_become_silent_random_noise(tmp_path):
    g = load_generator(write_generator_checkpoint(tmp_path / "g.pt", drop="noises.")).generator
    w = torch.zeros(1, 10, 512)
    with pytest.raises(RuntimeError, match="no noise buffers"):
        g.synthesis(w)
    assert torch.isfinite(g.synthesis(w, generator=torch.Generator().manual_seed(0))).all()


def test_wrong_keys_and_shapes_are_one_line_errors(tmp_path):
    path = write_generator_checkpoint(tmp_path / "g.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["g_ema"]["extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match=r"extra\.pt: not a StyleGAN2 generator checkpoint \(unexpected 1 keys"):
        load_generator(tmp_path / "extra.pt")
    del ckpt["g_ema"]["extra.weight"]
    ckpt["g_ema"]["conv1.activate.bias"] = torch.zeros(7)
    torch.save(ckpt, tmp_path / "shape.pt")
    with pytest.raises(WeightsError, match=r"conv1\.activate\.bias has shape \[7\]"):
        load_generator(tmp_path / "shape.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a StyleGAN2 checkpoint"):
        load_generator(tmp_path / "other.pt")


def test_nan_or_inf_weights_are_refused_at_load(tmp_path):
    """A corrupt or diverged checkpoint would render black or noise images that look like results."""
    from facefix.checkpoints import save_encoder
    from facefix.models.encoders import SmallEncoder

    path = write_generator_checkpoint(tmp_path / "g.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["g_ema"]["convs.2.conv.weight"][0, 0, 0, 0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(WeightsError, match=r"nan\.pt: convs\.2\.conv\.weight contains NaN or inf values"):
        load_generator(tmp_path / "nan.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["latent_avg"][3] = float("inf")
    torch.save(ckpt, tmp_path / "inf_avg.pt")
    with pytest.raises(WeightsError, match="latent_avg contains NaN or inf"):
        load_generator(tmp_path / "inf_avg.pt")
    g = load_generator(path).generator
    enc = SmallEncoder(g.n_latent, width=8)
    with torch.no_grad():
        enc.stages[0][0].weight[0, 0, 0, 0] = float("-inf")
    save_encoder(tmp_path / "enc.pt", enc, g, torch.zeros(g.n_latent, 512))
    with pytest.raises(WeightsError, match=r"enc\.pt: stages\.0\.0\.weight contains NaN or inf"):
        load_encoder(tmp_path / "enc.pt")


def test_truncated_file(tmp_path):
    path = write_generator_checkpoint(tmp_path / "g.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pt") as err:
        load_generator(tmp_path / "cut.pt")
    assert "\n" not in str(err.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"g_ema": _Evil()}, f)
    with pytest.raises(WeightsError, match="refusing to load"):
        load_generator(path)


def test_protocol4_tensor_file_is_refused_with_a_fix_and_no_warning(tmp_path):
    import warnings

    from facefix.weights import safe_torch_load

    path = tmp_path / "direction.pt"
    torch.save(torch.randn(512), path, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError, match=r"direction\.pt: refusing to load: pickle protocol 4.*torch\.save"):
            safe_torch_load(path)
    assert [str(w.message) for w in caught] == []
    torch.save(torch.randn(512), path)  # the default protocol loads
    assert safe_torch_load(path).shape == (512,)


def test_e4e_file_gives_encoder_decoder_and_latent_avg(e4e64_file):
    loaded = load_encoder(e4e64_file)
    assert loaded.kind == "e4e" and loaded.generator.size == 64
    assert loaded.latent_avg.shape == (10, 512) and loaded.encoder.n_styles == 10
    # the generator inside an e4e file equals a g_ema file's generator
    d = golden("g64_synthesis.npz")
    with torch.no_grad():
        close(loaded.generator.synthesis(torch.from_numpy(d["wplus"])), d["img"])
    assert not any(p.requires_grad for p in loaded.encoder.parameters())
    assert not loaded.encoder.training
    # a separate --generator: the file's decoder is not built, the encoder and its codes are the same
    slim = load_encoder(e4e64_file, with_generator=False)
    assert slim.generator is None and slim.generator_size == 64
    assert torch.equal(slim.latent_avg, loaded.latent_avg)
    assert all(torch.equal(a, b) for a, b in zip(slim.encoder.state_dict().values(),
                                                  loaded.encoder.state_dict().values(), strict=True))


def test_restyle_file_is_recognised(tmp_path):
    loaded = load_encoder(write_e4e_checkpoint(tmp_path / "r.pt", restyle=True))
    assert loaded.kind == "restyle"


def test_latent_avg_variants(tmp_path, e4e64_file):
    ckpt = torch.load(e4e64_file, weights_only=True)
    ckpt["latent_avg"] = ckpt["latent_avg"][0]  # [512], as some tools store it
    torch.save(ckpt, tmp_path / "avg512.pt")
    loaded = load_encoder(tmp_path / "avg512.pt")
    assert loaded.latent_avg.shape == (10, 512) and torch.equal(loaded.latent_avg[3], ckpt["latent_avg"])
    del ckpt["latent_avg"]
    torch.save(ckpt, tmp_path / "noavg.pt")
    with pytest.raises(WeightsError, match="no latent_avg"):
        load_encoder(tmp_path / "noavg.pt")


@pytest.mark.slow
def test_real_size_e4e_file_round_trip(e4e1024_file):
    """The 1.2 GB official-layout e4e file (recipe weights) loads strictly and reproduces the e4e goldens."""
    from facefix.models.encoders import face_pool

    path = e4e1024_file
    assert path.stat().st_size > 1.1e9
    loaded = load_encoder(path)
    d = golden("e4e_inversion.npz")
    with torch.no_grad():
        codes = loaded.encoder(torch.from_numpy(d["x"]))
        close(codes, d["codes"])
        w = codes + loaded.latent_avg[None]
        close(w, d["wplus"])
        close(face_pool(loaded.generator.synthesis(w)), np.asarray(d["recon256"]))


def test_safetensors_cache_is_made_once_and_then_used(tmp_path, monkeypatch):
    import facefix.checkpoints as ck

    path = write_generator_checkpoint(tmp_path / "g.pt")
    first = load_generator(path, cache=True)
    copy = tmp_path / "g.pt.safetensors"
    assert copy.is_file()
    # Second load must come from the copy: make the pickle path unusable for torch.load.
    monkeypatch.setattr(ck, "safe_torch_load", lambda *a, **k: pytest.fail("pickle read again"))
    second = load_generator(path, cache=True)
    for (k, a), b in zip(first.generator.state_dict().items(), second.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert torch.equal(first.latent_avg, second.latent_avg)


def test_small_encoder_file_with_its_small_generator_and_a_samm_sized_for_it(tmp_path, g64):
    """The small configuration: SmallEncoder + 32-channel generator in one e4e-layout file, and a SAMM
    whose levels take the generator's channels and whose facefix file records them."""
    from facefix.checkpoints import load_samm, save_samm
    from facefix.models.samm import SAMM
    from tests.conftest import write_small_encoder_checkpoint

    loaded = load_encoder(write_small_encoder_checkpoint(tmp_path / "small.pt"))
    g = loaded.generator
    assert loaded.kind == "small" and g.size == 64 and g.channel_max == 32 and g.channels[64] == 32
    assert loaded.latent_avg.shape == (g.n_latent, 512)
    with torch.no_grad():
        out = loaded.encoder.encode(torch.rand(2, 3, 256, 256) * 2 - 1, return_features=True)
    assert out.codes.shape == (2, g.n_latent, 512) and out.features is not None
    assert out.features["body6"].shape == (2, 128, 64, 64) and out.features["body20"].shape == (2, 256, 32, 32)

    samm = SAMM.for_generator(g, cycle_align=1)
    assert [samm.block(r).channels for r in (32, 64)] == [32, 32] and samm.config["channel_max"] == 32
    assert "channel_max" not in SAMM.for_generator(g64).config  # full-size configs are recorded as before
    projected = samm.project(out.features, (32, 64))  # only the levels a 64 px generator has
    assert set(projected) == {32, 64} and projected[64].shape == (2, 32, 64, 64)
    with pytest.raises(ValueError, match="taps input_layer, body2 "):
        samm.project(out.features)
    save_samm(tmp_path / "samm.pt", samm)
    back = load_samm(tmp_path / "samm.pt", g)
    assert back.config == samm.config
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), samm.state_dict().values(), strict=True))
    with pytest.raises(WeightsError, match="channel_max 32, the generator has 2 and 512"):
        load_samm(tmp_path / "samm.pt", g64)
