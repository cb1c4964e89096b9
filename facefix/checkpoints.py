"""Build models from the official checkpoint files: rosinality StyleGAN2, e4e, ReStyle-e4e.

Why a module of its own (style.md puts key filters in ``weights.py``): ``weights.py`` is about *files* (manifest,
download, sha256, caches, safe unpickling); this module is about *contents*: which keys a file has, which
architecture they describe, and how they map onto facefix's modules. Renaming happens only here
(``e4e_key_filter``), and every file goes through :func:`facefix.weights.safe_torch_load`
(``torch.load(weights_only=True)``), so loading never runs pickled code.

Loading is strict: a missing, unexpected or mis-shaped key is a :class:`WeightsError` naming the file and the
first offending keys. Two known variants of the public files are tolerated:
- no ``*.kernel`` buffers (some copies of ``stylegan2-ffhq-config-f.pt``): they are constants and are rebuilt;
- no ``noises.noise_*`` buffers: the generator is marked ``has_fixed_noise = False`` and then refuses to run with
  fixed noise (the caller must pass ``--seed``), rather than silently using random init values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from facefix.errors import WeightsError
from facefix.models.encoders import Encoder4Editing, ReStyleEncoder
from facefix.models.ops import make_kernel
from facefix.models.stylegan2 import BLUR_KERNEL, Generator
from facefix.weights import load_safetensors_cache, safe_torch_load, to_safetensors_cache

_NOISE = re.compile(r"^noises\.noise_\d+$")


@dataclass
class LoadedGenerator:
    """A generator and the W mean shipped with it (``latent_avg`` [512], or None when the file has none)."""

    generator: Generator
    latent_avg: Tensor | None


@dataclass
class LoadedEncoder:
    """An encoder checkpoint: the encoder, its ``latent_avg`` [18,512] and the decoder it was trained with."""

    encoder: Encoder4Editing | ReStyleEncoder
    latent_avg: Tensor
    generator: Generator
    kind: str  # "e4e" | "restyle"


def _keys_summary(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _strict_load(module: torch.nn.Module, state: Mapping[str, Tensor], where: str, what: str) -> None:
    """load_state_dict(strict=True) with a one-line WeightsError instead of PyTorch's multi-line message."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_keys_summary(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_keys_summary(unexpected)}")
        raise WeightsError(f"{where}: not a {what} checkpoint ({'; '.join(parts)})")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsError(f"{where}: {k} has shape {list(state[k].shape)}, a {what} needs {list(v.shape)}")
    # assign=True: the module was built on the meta device, the checkpoint's tensors become its storage.
    module.load_state_dict(state, strict=True, assign=True)


def infer_generator_config(g_state: Mapping[str, Tensor], where: str = "checkpoint") -> dict[str, int]:
    """Generator(size, style_dim, n_mlp, channel_multiplier) arguments from a ``g_ema`` state dict's keys and shapes."""
    try:
        style_dim = g_state["style.1.weight"].shape[0]
        n_mlp = sum(1 for k in g_state if re.fullmatch(r"style\.\d+\.weight", k))
        n_rgbs = sum(1 for k in g_state if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
        size = 2 ** (n_rgbs + 2)
        # channels at 64 px are 256 * channel_multiplier (to_rgbs.3 is the 64 px level)
        channel_multiplier = g_state["to_rgbs.3.conv.weight"].shape[2] // 256 if n_rgbs >= 4 else 2
    except KeyError as err:
        raise WeightsError(f"{where}: not a StyleGAN2 generator (no {err.args[0]})") from err
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": max(channel_multiplier, 1)}


def generator_from_state(g_state: Mapping[str, Tensor], where: str = "checkpoint") -> Generator:
    """A strict-loaded :class:`Generator` from a rosinality ``g_ema`` state dict (no prefix)."""
    # Built on the meta device: no time spent drawing random init values that the checkpoint replaces.
    with torch.device("meta"):
        g = Generator(**infer_generator_config(g_state, where))
    state = dict(g_state)
    own = g.state_dict()
    for k in own:
        if k.endswith(".kernel") and k not in state:
            # constants, rebuilt (copies of the FFHQ file without them exist); x4 = up-sampling gain
            state[k] = make_kernel(BLUR_KERNEL) * 4
    has_noise = any(_NOISE.match(k) for k in state)
    if not has_noise:
        for k, v in own.items():
            if _NOISE.match(k):
                state[k] = torch.full(v.shape, float("nan"))  # never usable as data; synthesis refuses fixed noise
    _strict_load(g, state, where, "StyleGAN2 generator")
    g.has_fixed_noise = has_noise
    return g.eval().requires_grad_(False)


def _read(path: str | Path, map_location: str | torch.device, cache: bool) -> object:
    """The checkpoint's contents; with ``cache``, from (or into) a memory-mapped safetensors copy of its tensors.

    The copy is keyed on the source file's sha256 (``facefix.weights``), so a replaced file is never served stale.
    Only tensors are kept, which is all the loaders below read (``opts`` is informational).
    """
    if cache:
        cached = load_safetensors_cache(path, device=str(map_location))
        if cached is not None:
            return cached
    ckpt = safe_torch_load(path, map_location=map_location)
    if cache and isinstance(ckpt, Mapping):
        try:
            to_safetensors_cache(path, ckpt)
        except (WeightsError, OSError):
            pass  # a cache is an optimisation: a read-only disk must not stop the run
    return ckpt


def _as_state(obj: object, where: str) -> Mapping[str, Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{where}: expected a dict of tensors")
    return obj


def load_generator(path: str | Path, map_location: str | torch.device = "cpu", cache: bool = False) -> LoadedGenerator:
    """Load ``stylegan2-ffhq-config-f.pt`` (``{'g_ema', 'latent_avg'}``; ``g``/``d`` ignored) or any e4e/ReStyle file
    (its ``decoder.*`` weights). Returns the generator (eval mode, no grad) and ``latent_avg`` [512] if present.
    ``cache``: keep a safetensors copy of the pickle and memory-map it on later loads (for downloaded files)."""
    where = str(path)
    ckpt = _read(path, map_location, cache)
    if not isinstance(ckpt, Mapping):
        raise WeightsError(f"{where}: expected a dict checkpoint, found {type(ckpt).__name__}")
    if "g_ema" in ckpt:
        g = generator_from_state(_as_state(ckpt["g_ema"], where), where)
        avg = ckpt.get("latent_avg")
        if avg is not None:
            avg = avg.reshape(-1, avg.shape[-1])[0].float()  # [512] (some tools store [1,512] or [18,512])
        return LoadedGenerator(g, avg)
    if "state_dict" in ckpt:
        _, dec = e4e_key_filter(_as_state(ckpt["state_dict"], where))
        return LoadedGenerator(generator_from_state(dec, where), None)
    raise WeightsError(f"{where}: not a StyleGAN2 checkpoint (top-level keys: {_keys_summary(list(ckpt))})")


def e4e_key_filter(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a pSp/e4e ``state_dict`` into (encoder keys without ``encoder.``, decoder keys without ``decoder.``)."""
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    return enc, dec


def _latent_avg_wplus(avg: object, n_latent: int, where: str) -> Tensor:
    """``latent_avg`` as W+ [n_latent, 512]: accepts [512], [1,512] or [n_latent,512] (all seen in the wild)."""
    if not isinstance(avg, Tensor):
        raise WeightsError(f"{where}: no latent_avg tensor (needed to decode e4e codes)")
    avg = avg.float()
    if avg.ndim == 1 or (avg.ndim == 2 and avg.shape[0] == 1):
        avg = avg.reshape(1, -1).repeat(n_latent, 1)
    if tuple(avg.shape) != (n_latent, avg.shape[-1]):
        raise WeightsError(f"{where}: latent_avg has shape {list(avg.shape)}, expected [{n_latent}, 512] or [512]")
    return avg


def encoder_from_state(enc_state: Mapping[str, Tensor], n_styles: int, where: str = "checkpoint",
                       fpn_upsample: str = "bilinear") -> tuple[Encoder4Editing | ReStyleEncoder, str]:
    """Build the encoder matching the keys: ReStyle (6-channel input, no FPN) or e4e (3-channel, FPN)."""
    first = enc_state.get("input_layer.0.weight")
    if first is None:
        raise WeightsError(f"{where}: no encoder.input_layer.0.weight: not an e4e/ReStyle checkpoint")
    with torch.device("meta"):  # see generator_from_state
        if first.shape[1] == 6:
            enc, kind = ReStyleEncoder(n_styles=n_styles), "restyle"
        else:
            enc, kind = Encoder4Editing(n_styles=n_styles, fpn_upsample=fpn_upsample), "e4e"
    _strict_load(enc, enc_state, where, f"{kind} encoder")
    return enc.eval().requires_grad_(False), kind


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu",
                 fpn_upsample: str = "bilinear", cache: bool = False) -> LoadedEncoder:
    """Load ``e4e_ffhq_encode.pt`` or ``restyle_e4e_ffhq_encode.pt`` (``{'state_dict', 'opts', 'latent_avg', ...}``).

    Unknown top-level keys (optimizer, discriminator, global_step) are ignored. The file's decoder is returned too,
    so a user who passes only ``--encoder`` still gets a generator, and a separate ``--generator`` can be checked
    against it. ``cache``: as in :func:`load_generator`.
    """
    where = str(path)
    ckpt = _read(path, map_location, cache)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        keys = _keys_summary(list(ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise WeightsError(f"{where}: not an e4e/ReStyle checkpoint (expected 'state_dict', found {keys})")
    enc_state, dec_state = e4e_key_filter(_as_state(ckpt["state_dict"], where))
    if not enc_state:
        raise WeightsError(f"{where}: no encoder.* weights in state_dict")
    generator = generator_from_state(dec_state, where)
    encoder, kind = encoder_from_state(enc_state, generator.n_latent, where, fpn_upsample)
    avg = _latent_avg_wplus(ckpt.get("latent_avg"), generator.n_latent, where)
    return LoadedEncoder(encoder, avg, generator, kind)
