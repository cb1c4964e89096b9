"""Build models from the official checkpoint files: rosinality StyleGAN2, e4e, ReStyle-e4e, SAMM.

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
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from facefix.errors import UsageError, WeightsError
from facefix.models.encoders import Encoder4Editing, ReStyleEncoder, SmallEncoder
from facefix.models.ops import make_kernel
from facefix.models.samm import ENCODER_MODES, SAMM
from facefix.models.stylegan2 import BLUR_KERNEL, Generator, n_latent_for
from facefix.weights import load_safetensors_cache, safe_torch_load, to_safetensors_cache

_NOISE = re.compile(r"^noises\.noise_\d+$")


@dataclass
class LoadedGenerator:
    """A generator and the W mean shipped with it (``latent_avg`` [512], or None when the file has none)."""

    generator: Generator
    latent_avg: Tensor | None


AnyEncoder = Encoder4Editing | ReStyleEncoder | SmallEncoder


@dataclass
class LoadedEncoder:
    """An encoder checkpoint: the encoder, its ``latent_avg`` [L,512] and the decoder it was trained with (None when
    not asked for; ``generator_size`` still says which generator the codes are for)."""

    encoder: AnyEncoder
    latent_avg: Tensor
    generator: Generator | None
    generator_size: int
    kind: str  # "e4e" | "restyle" | "small"

    def check_generator(self, generator: Generator, where: object) -> None:
        """A separate generator (``where``: its file) must be the size this encoder's codes are for."""
        if generator.size != self.generator_size:
            raise UsageError(f"{where}: a {generator.size}px generator does not fit the encoder's "
                             f"{self.generator_size}px codes")


def _keys_summary(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _check_finite(t: Tensor, where: str, key: str, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise WeightsError(f"{where}: {key} contains NaN or inf values: a corrupt {what} checkpoint")


def _strict_load(module: torch.nn.Module, state: Mapping[str, Tensor], where: str, what: str,
                 placeholders: Collection[str] = ()) -> None:
    """load_state_dict(strict=True) with a one-line WeightsError instead of PyTorch's multi-line message.

    A NaN or inf anywhere in the weights (a corrupt file, a diverged training run) is refused too: it would
    otherwise turn every output into noise or black. ``placeholders``: keys the loader filled in itself, not checked.
    """
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
    for k, t in state.items():
        if k not in placeholders:
            _check_finite(t, where, k, what)
    # assign=True: the module was built on the meta device, the checkpoint's tensors become its storage.
    module.load_state_dict(state, strict=True, assign=True)


def infer_generator_config(g_state: Mapping[str, Tensor], where: str = "checkpoint") -> dict[str, int]:
    """Generator(size, style_dim, n_mlp, channel_multiplier, channel_max) arguments from a ``g_ema`` state dict's
    keys and shapes."""
    try:
        style_dim = g_state["style.1.weight"].shape[0]
        n_mlp = sum(1 for k in g_state if re.fullmatch(r"style\.\d+\.weight", k))
        n_rgbs = sum(1 for k in g_state if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
        size = 2 ** (n_rgbs + 2)
        # channels at 64 px are 256 * channel_multiplier (to_rgbs.3 is the 64 px level)
        channel_multiplier = g_state["to_rgbs.3.conv.weight"].shape[2] // 256 if n_rgbs >= 4 else 2
        # the 4x4 input has the cap's channels (512 in every official config, less in small test generators)
        channel_max = int(g_state["input.input"].shape[1])
    except KeyError as err:
        raise WeightsError(f"{where}: not a StyleGAN2 generator (no {err.args[0]})") from err
    config = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": max(channel_multiplier, 1)}
    return config if channel_max == 512 else {**config, "channel_max": channel_max}


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
    filled = set()
    if not has_noise:
        for k, v in own.items():
            if _NOISE.match(k):
                state[k] = torch.full(v.shape, float("nan"))  # never usable as data; synthesis refuses fixed noise
                filled.add(k)
    _strict_load(g, state, where, "StyleGAN2 generator", filled)
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
            _check_finite(avg, where, "latent_avg", "StyleGAN2")
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
    _check_finite(avg, where, "latent_avg", "encoder")
    return avg


def encoder_from_state(enc_state: Mapping[str, Tensor], n_styles: int, where: str = "checkpoint",
                       fpn_upsample: str = "bilinear") -> tuple[AnyEncoder, str]:
    """Build the encoder matching the keys: ReStyle (6-channel input, no FPN), e4e (3-channel, FPN) or facefix's
    ``SmallEncoder`` (``stages.*`` keys; its width is the first conv's output channels)."""
    first = enc_state.get("input_layer.0.weight")
    small = enc_state.get("stages.0.0.weight")
    if first is None and small is None:
        raise WeightsError(f"{where}: no encoder.input_layer.0.weight: not an e4e/ReStyle checkpoint")
    with torch.device("meta"):  # see generator_from_state
        if first is None:
            enc, kind = SmallEncoder(n_styles=n_styles, width=int(small.shape[0])), "small"
        elif first.shape[1] == 6:
            enc, kind = ReStyleEncoder(n_styles=n_styles), "restyle"
        else:
            enc, kind = Encoder4Editing(n_styles=n_styles, fpn_upsample=fpn_upsample), "e4e"
    _strict_load(enc, enc_state, where, f"{kind} encoder")
    return enc.eval().requires_grad_(False), kind


def save_encoder(path: str | Path, encoder: AnyEncoder, generator: Generator, latent_avg: Tensor) -> None:
    """Write an encoder file in the e4e layout (``{'state_dict': encoder.* + decoder.*, 'latent_avg', 'opts'}``)
    that :func:`load_encoder` (and so ``--encoder``) reads: how facefix ships a ``SmallEncoder`` with its generator.

    Args:
        latent_avg: the W mean added to the codes, [L,512] or [512].
    """
    state = {**{f"encoder.{k}": v.detach().cpu() for k, v in encoder.state_dict().items()},
             **{f"decoder.{k}": v.detach().cpu() for k, v in generator.state_dict().items()}}
    payload = {"state_dict": state, "latent_avg": latent_avg.detach().cpu().float(),
               "opts": {"encoder_type": type(encoder).__name__, "stylegan_size": generator.size}}
    _save_atomic(path, payload)


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu",
                 fpn_upsample: str = "bilinear", cache: bool = False, with_generator: bool = True) -> LoadedEncoder:
    """Load ``e4e_ffhq_encode.pt`` or ``restyle_e4e_ffhq_encode.pt`` (``{'state_dict', 'opts', 'latent_avg', ...}``),
    or a ``SmallEncoder`` file written by :func:`save_encoder`.

    Unknown top-level keys (optimizer, discriminator, global_step) are ignored. The file's decoder is returned too,
    so a user who passes only ``--encoder`` still gets a generator; ``with_generator=False`` (a separate
    ``--generator`` is used) drops it, which frees its ~130 MB at 1024 px. ``cache``: as in :func:`load_generator`.
    """
    where = str(path)
    ckpt = _read(path, map_location, cache)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        keys = _keys_summary(list(ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise WeightsError(f"{where}: not an e4e/ReStyle checkpoint (expected 'state_dict', found {keys})")
    enc_state, dec_state = e4e_key_filter(_as_state(ckpt["state_dict"], where))
    if not enc_state:
        raise WeightsError(f"{where}: no encoder.* weights in state_dict")
    generator = generator_from_state(dec_state, where) if with_generator else None
    size = infer_generator_config(dec_state, where)["size"]
    n_latent = n_latent_for(size)
    encoder, kind = encoder_from_state(enc_state, n_latent, where, fpn_upsample)
    avg = _latent_avg_wplus(ckpt.get("latent_avg"), n_latent, where)
    return LoadedEncoder(encoder, avg, generator, size, kind)


SAMM_FORMAT = "facefix-samm"
SAMM_FORMAT_VERSION = 1


def _samm_config_from_keys(state: Mapping[str, Tensor], where: str) -> dict[str, object]:
    """channel_multiplier and mod_bias from an official ``params_ema`` (the file records no config)."""
    first = state.get("feats_conv.0.weight")
    if first is None:
        raise WeightsError(f"{where}: no feats_conv.0.weight: not a SAMM checkpoint")
    # feats_conv.0 projects to the 256 px level, which has 64 * channel_multiplier channels
    return {"channel_multiplier": max(int(first.shape[0]) // 64, 1),
            "bias": "modulation.0.alignment.body.body.0.res_layer.1.bias" in state}


def load_samm(path: str | Path, generator: Generator | None = None, map_location: str | torch.device = "cpu",
              cycle_align: int | None = None) -> SAMM:
    """Load SAMM weights: the official training output or facefix's own format.

    - Official ``net_g_<iter>.pth``: ``{'params', 'params_ema'}`` (``params_ema`` is used, as the official
      inference does). Its config is the released E4E one (warp_scale 0.08, cycle_align 2, the official encoder
      mode); the file's swept-in ``generator.*.modulation.*`` keys must equal ``generator``'s weights, because
      SAMM was trained on that generator's features (a mismatch is a WeightsError, not a silent mix).
    - facefix (``facefix.train`` / :func:`save_samm`): ``{'format': 'facefix-samm', 'config', 'state_dict'}``,
      whose config records warp_scale, cycle_align, bias and the encoder mode it was trained with.

    Args:
        generator: the generator SAMM will run inside (checked against the official file's generator keys).
        cycle_align: overrides the file's cycle count (the AlignNet is shared across cycles, so 1-3 all work).
    Returns:
        SAMM in eval mode, no grad; ``samm.config["encoder_mode"]`` says how the encoder must run.
    """
    where = str(path)
    ckpt = _read(path, map_location, cache=False)
    if not isinstance(ckpt, Mapping):
        raise WeightsError(f"{where}: expected a dict checkpoint, found {type(ckpt).__name__}")
    if ckpt.get("format") == SAMM_FORMAT:
        if int(ckpt.get("version", 0)) > SAMM_FORMAT_VERSION:
            raise WeightsError(f"{where}: SAMM file format v{ckpt.get('version')} is newer than this facefix "
                               f"(v{SAMM_FORMAT_VERSION}); upgrade facefix")
        config = dict(ckpt.get("config") or {})
        state = dict(_as_state(ckpt.get("state_dict"), where))
        if config.get("encoder_mode") not in ENCODER_MODES:
            raise WeightsError(f"{where}: unknown encoder_mode {config.get('encoder_mode')!r}")
    elif "params_ema" in ckpt or "params" in ckpt:
        state = dict(_as_state(ckpt.get("params_ema", ckpt.get("params")), where))
        config = {"warp_scale": 0.08, "cycle_align": 2, "encoder_mode": "official",
                  **_samm_config_from_keys(state, where)}
        swept = {k: state.pop(k) for k in [k for k in state if k.startswith("generator.")]}
        if generator is not None:
            own = generator.state_dict()
            for k, v in swept.items():
                ref = own.get(k[len("generator."):])
                if ref is None or ref.shape != v.shape or not torch.equal(ref.to(v.device, v.dtype), v):
                    raise WeightsError(f"{where}: trained on a different StyleGAN2 generator ({k} differs from "
                                       "the loaded generator's); use the generator it was trained with")
        # the official loader drops a stale 2-D delta_latent; it is an editing buffer, not a weight
        state = {k: v for k, v in state.items() if k != "delta_latent"}
    else:
        raise WeightsError(f"{where}: not a SAMM checkpoint (top-level keys: {_keys_summary(list(ckpt))})")
    if cycle_align is not None:
        config["cycle_align"] = cycle_align
    try:
        with torch.device("meta"):
            samm = SAMM(**config)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{where}: bad SAMM config ({err})") from err
    if generator is not None and not samm.matches(generator):
        raise WeightsError(f"{where}: SAMM for channel_multiplier {samm.config['channel_multiplier']} and channel_max "
                           f"{samm.config.get('channel_max', 512)}, the generator has {generator.channel_multiplier} "
                           f"and {generator.channel_max}")
    _strict_load(samm, state, where, "SAMM")
    return samm.eval().requires_grad_(False)


def save_samm(path: str | Path, samm: SAMM, extra: Mapping[str, object] | None = None) -> None:
    """Write SAMM in facefix's format (config + state dict, float32, CPU), atomically.

    ``extra``: JSON-like metadata kept alongside (training step, data, losses), ignored by :func:`load_samm`.
    """
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in samm.state_dict().items()}
    payload = {"format": SAMM_FORMAT, "version": SAMM_FORMAT_VERSION, "config": dict(samm.config),
               "state_dict": state, "meta": dict(extra or {})}
    _save_atomic(path, payload)


def _save_atomic(path: str | Path, payload: Mapping[str, object]) -> None:
    """``torch.save(payload)`` to ``path`` via a temp file and rename (no half-written checkpoint on a crash)."""
    import io

    from facefix.image_io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())
