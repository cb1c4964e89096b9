"""Shared fixtures: paths to the golden data and recipe-weight models, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

GOLDEN = Path(__file__).resolve().parent / "golden"


def golden(name: str) -> dict[str, np.ndarray]:
    """Load one golden npz of ``tests/golden`` (see its README)."""
    with np.load(GOLDEN / name) as d:
        return {k: d[k] for k in d.files}


def chstats(t: torch.Tensor) -> np.ndarray:
    """[C,5] per channel of an [N,C,...] tensor over the other axes: mean, std (N-1), min, max, sum |x|, in float64
    (the goldens' ``*_chstats``; their ``*_stats`` are the same five numbers over a whole tensor)."""
    x = t.detach().double().transpose(0, 1).flatten(1)
    return torch.stack([x.mean(1), x.std(1), x.min(1).values, x.max(1).values, x.abs().sum(1)], 1).numpy()


def stats(t: torch.Tensor) -> np.ndarray:
    """[5] mean, std (N-1), min, max, sum |x| of a whole tensor, in float64 (the goldens' ``*_stats``)."""
    return chstats(t.reshape(1, 1, -1))[0]


def assert_stats_close(ours: np.ndarray, ref: np.ndarray, atol: float, count: int, what: str = "") -> None:
    """Channel stats (``chstats``, ``count`` elements per channel) standing in for an element-wise comparison within
    ``atol``: mean, std, min and max within ``atol``, sum |x| within ``count * atol`` (an element-wise match within
    ``atol`` implies these, std up to a factor sqrt(count / (count - 1)))."""
    err = max(np.abs(ours[..., :4] - ref[..., :4]).max(), np.abs(ours[..., 4] - ref[..., 4]).max() / count)
    assert err <= atol, f"{what} stats: max |diff| {err:.3g} > {atol}"


def assert_channel_views(t: torch.Tensor, d: dict[str, np.ndarray], name: str, atol: float) -> None:
    """A [1,C,H,W] tensor against its trimmed golden within ``atol``: the first channels at full resolution
    (``<name>_ch``) element-wise, and every channel's stats (``<name>_chstats``)."""
    ref = d[f"{name}_ch"]
    err = (t[:, :ref.shape[1]].detach().float() - torch.from_numpy(ref)).abs().max().item()
    assert err <= atol, f"{name}: max |diff| {err:.3g} > {atol}"
    assert_stats_close(chstats(t), d[f"{name}_chstats"], atol, t[0, 0].numel(), name)


def crops(t: torch.Tensor, origins: np.ndarray, size: int = 64) -> torch.Tensor:
    """[K,C,size,size] crops of a [1,C,H,W] tensor at the (row, column) ``origins`` [K,2] (the goldens' ``*_crops``)."""
    return torch.stack([t[0, :, y:y + size, x:x + size] for y, x in origins.tolist()])


@pytest.fixture(scope="session")
def g64():
    """Generator(64) with the g64 recipe weights (bit-identical to the goldens' weights)."""
    from facefix.models.stylegan2 import Generator
    from tests.recipe import fill_module

    return fill_module(Generator(64), "generator").eval().requires_grad_(False)


@pytest.fixture(scope="session")
def g1024():
    """Generator(1024) config-f with the g1024 recipe weights (~133 MB)."""
    from facefix.models.stylegan2 import Generator
    from tests.recipe import fill_module

    return fill_module(Generator(1024), "generator").eval().requires_grad_(False)


def write_generator_checkpoint(path: Path, size: int = 64, legacy: bool = False, drop: str | None = None) -> Path:
    """A rosinality-format file ``{'g_ema', 'latent_avg'}`` with recipe weights; ``drop`` removes keys containing it."""
    from facefix.models.stylegan2 import Generator
    from tests.recipe import fill_module, latent_avg

    sd = fill_module(Generator(size), "generator").state_dict()
    if drop:
        sd = type(sd)((k, v) for k, v in sd.items() if drop not in k)
    torch.save({"g_ema": sd, "latent_avg": latent_avg([512], 900)}, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_e4e_checkpoint(path: Path, size: int = 64, restyle: bool = False) -> Path:
    """An e4e (or ReStyle) file in the official layout: {'state_dict': encoder.* + decoder.*, 'opts', 'latent_avg'}."""
    from facefix.models.encoders import Encoder4Editing, ReStyleEncoder
    from facefix.models.stylegan2 import Generator
    from tests.recipe import fill_module, latent_avg

    g = fill_module(Generator(size), "generator")
    enc = fill_module(ReStyleEncoder(g.n_latent) if restyle else Encoder4Editing(g.n_latent), "encoder",
                      6000 if restyle else 5000)
    sd = {**{"encoder." + k: v for k, v in enc.state_dict().items()},
          **{"decoder." + k: v for k, v in g.state_dict().items()}}
    opts = {"encoder_type": "ProgressiveBackboneEncoder" if restyle else "Encoder4Editing", "stylegan_size": size,
            "start_from_latent_avg": True, "progressive_steps": [0, 1], "device": "cuda:0", "checkpoint_path": None}
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": latent_avg([g.n_latent, 512], 901)}, path)
    return path


def write_small_encoder_checkpoint(path: Path, size: int = 64, channel_max: int = 32) -> Path:
    """A ``SmallEncoder`` file (``checkpoints.save_encoder``, e4e layout) over a small recipe-weight generator
    (``channel_max`` channels per level): the cheap stand-in for e4e in training tests (~10 MB, ms per image).
    The encoder has PyTorch's default init under a fixed seed (the recipe has no rules for its own keys)."""
    from facefix.checkpoints import save_encoder
    from facefix.models.encoders import SmallEncoder
    from facefix.models.stylegan2 import Generator
    from tests.recipe import fill_module, latent_avg

    g = fill_module(Generator(size, channel_multiplier=1, channel_max=channel_max), "generator")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = SmallEncoder(g.n_latent, width=8)
    save_encoder(path, enc.eval(), g, latent_avg([g.n_latent, 512], 901))
    return path


@pytest.fixture(scope="session")
def small64_file(tmp_path_factory) -> Path:
    """A SmallEncoder + 64 px, 32-channel generator file, written once per session."""
    return write_small_encoder_checkpoint(tmp_path_factory.mktemp("ckpt_small") / "small64.pt")


@pytest.fixture(scope="session")
def e4e64_file(tmp_path_factory) -> Path:
    """An e4e checkpoint over the 64 px generator (10 W+ rows, ~620 MB on disk), written once per session."""
    return write_e4e_checkpoint(tmp_path_factory.mktemp("ckpt") / "e4e64.pt")


@pytest.fixture(scope="session")
def e4e1024_file(tmp_path_factory) -> Path:
    """The real-size e4e checkpoint (1.2 GB, official layout, recipe weights), written once per session."""
    return write_e4e_checkpoint(tmp_path_factory.mktemp("ckpt1024") / "e4e_ffhq_encode.pt", size=1024)


def write_samm_checkpoint(path: Path, generator_state: dict | None = None, both: bool = False) -> Path:
    """An official-format SAMM file ``{'params_ema'[, 'params']}`` with the SAMM recipe weights; the swept-in
    ``generator.*.modulation.*`` keys come from ``generator_state`` (the g1024 recipe by default)."""
    from facefix.models.samm import SAMM
    from facefix.models.stylegan2 import Generator
    from tests.recipe import fill_module

    sd = dict(fill_module(SAMM(), "samm").state_dict())
    if generator_state is None:
        generator_state = fill_module(Generator(1024), "generator").state_dict()
    sd.update({f"generator.{k}": v for k, v in generator_state.items() if ".modulation." in k})
    torch.save({"params": sd, "params_ema": sd} if both else {"params_ema": sd}, path)
    return path
