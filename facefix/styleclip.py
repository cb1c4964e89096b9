"""StyleCLIP global directions: a text prompt -> a direction in StyleSpace (S), applied as per-layer style offsets.

The method is StyleCLIP's ``global_torch`` (Patashnik, Wu et al., ICCV 2021, §6; orpatashnik/StyleCLIP):

1. Embed the target prompt (``--text "a face with curly hair"``) and the neutral one (``--neutral``, default
   ``"a face"``) with CLIP ViT-B/32's text tower, each averaged over StyleCLIP's 79 prompt templates ("a bad photo of
   a {}.", ...): unit embeddings, mean, renormalised. ``dt = (t_target - t_neutral) / |...|`` [D], D = 512.
2. Relevance of every style channel: ``r = fs3 @ dt`` [R]. ``fs3`` (StyleCLIP's ``fs3.npy``, [6048, 512]) has one unit
   CLIP-space row per non-toRGB style channel of the 1024 px FFHQ generator, in :meth:`Generator.style_layers` order.
3. Disentanglement threshold ``beta``: channels with ``|r| < beta`` are set to 0; the rest is divided by
   ``max |r|``, so the most relevant channel gets +-1.
4. Per channel times ``s_std``, the std of that style channel over random faces (:func:`style_statistics`), and
   spread over the layers: **all 17 non-toRGB layers, as the original StyleCLIP** (``SplitS``); hyperstyle's port
   (``editing/styleclip``) fills only the first 11 and drops the finer 6 (its ``[:11]``); toRGB styles get 0 in both.
5. Edit: ``s' = s(w) + alpha * ds`` on every layer (``Generator.synthesis(style_offsets=...)``). The W+ code is not
   changed, so a text edit combines with W+ edits (applied first) and with SAMM.

Units. ``alpha``: how many style standard deviations the most relevant channel moves (others proportionally less);
StyleCLIP's interface offers -15..25, hyperstyle sweeps -5..5; about -6..6 keeps faces natural. ``beta``: the
relevance threshold, a cosine in CLIP space: 0.08 changes many channels (stronger, more entangled), 0.3 very few
(only the prompt's core attribute); StyleCLIP's range is 0.08..0.4, hyperstyle uses 0.11..0.16.

``s_std``. StyleCLIP's statistics (its ``S_mean_std``, made by ``GetCode.py``) are over W codes truncated with
psi = 0.7; :func:`style_statistics` computes the same from the loaded generator, so ``alpha`` means the same: 20,000
z ~ N(0, I) through the mapping network, truncated with psi = 0.7 towards their mean, then the mean and covariance of
w [512,512]. Why 20,000: the relative standard error of a std estimate is 1/sqrt(2N) = 0.5%, i.e. the edit of
``alpha = 3`` lands somewhere in 3 +- 0.015, which no one can see; StyleCLIP's 100,000 would give 0.2% at five times
the cost (the mapping network is the whole cost: 3-7 s on 2 CPU cores for 20,000, depending on load). The styles are
affine in w (``s = A w + b`` per layer), so their mean and std follow exactly from those two moments:
``mean = A mu + b``, ``std = psi * sqrt(diag(A C A^T))``: the numbers one would get by pushing every sample through
all 26 affines (the tests compare the two), without that pass (which costs twice the mapping network). They are
computed once per generator and cached on disk next to the other cached weights (``$HF_HOME/facefix/styleclip/``),
keyed by a sha256 of the generator weights they depend on (mapping network and affines), i.e. by the content of the
generator file rather than its path.

CLIP. The optional extra ``facefix[clip]`` installs ``transformers``: facefix builds ``CLIPTextModelWithProjection``
and ``CLIPTokenizer`` from OpenAI's ViT-B/32 files (Hub ``openai/clip-vit-base-patch32``, pinned revision and sha256
in the manifest; only the text tower's weights are loaded, with the weights-only loader). ``open-clip-torch`` was
the first choice, but it imports torchvision: the torchvision release for torch 2.13 (0.28.0, a CUDA build on PyPI)
does not import beside the CPU torch 2.13.0 ("operator torchvision::nms does not exist"), and an unconstrained
``pip install open-clip-torch`` replaces torch with a newer CUDA build (2.14.1 plus about 3 GB of CUDA libraries).
transformers needs neither torchvision nor a particular torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from facefix import weights
from facefix.errors import InputError, UsageError, WeightsError

if TYPE_CHECKING:  # transformers is the optional CLIP extra: imported only when --text is used
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from facefix.models.stylegan2 import Generator

__all__ = [
    "DEFAULT_NEUTRAL",
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "STATS_SAMPLES",
    "STATS_PSI",
    "CLIP_ENTRIES",
    "FS3_ENTRY",
    "ClipText",
    "GlobalDirection",
    "StyleStats",
    "prompt_templates",
    "load_clip_text",
    "load_fs3",
    "global_direction",
    "style_statistics",
    "cached_style_statistics",
    "style_offsets",
]

DEFAULT_NEUTRAL = "a face"
DEFAULT_ALPHA = 3.0
DEFAULT_BETA = 0.15
STATS_SAMPLES = 20_000
STATS_PSI = 0.7
STATS_SEED = 0
_STATS_CHUNK = 10_000  # samples per mapping-network call: 20 MB of w at a time

#: Manifest entries of the CLIP text model: weights (the full ViT-B/32 pickle), config, tokenizer files.
CLIP_ENTRIES = {"weights": "clip_vit_b32", "config": "clip_vit_b32_config", "vocab": "clip_vit_b32_vocab",
                "merges": "clip_vit_b32_merges"}
FS3_ENTRY = "styleclip_fs3"
TEMPLATES_FILE = Path(__file__).with_name("data") / "styleclip_templates.txt"
_CLIP_EXTRA = "pip install 'facefix[clip]'"


def prompt_templates(path: str | Path | None = None) -> list[str]:
    """StyleCLIP's 79 prompt templates (``{}`` = the prompt), one per line; default: the shipped file."""
    p = Path(path) if path is not None else TEMPLATES_FILE
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln]


# -------------------------------------------------------------------------------- CLIP text tower


@dataclass(eq=False)
class ClipText:
    """A CLIP text tower: ``tokenizer`` + ``model`` (``CLIPTextModelWithProjection``, eval mode, CPU float32)."""

    model: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer

    @property
    def dim(self) -> int:
        """D, the CLIP embedding size (512 for ViT-B/32)."""
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> Tensor:
        """texts -> unit CLIP text embeddings float32 [N, D]. Padded to the longest text: CLIP's causal attention
        reads the end token before any padding, so this equals CLIP's 77-token padding."""
        ids = self.tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = self.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).text_embeds
        return out / out.norm(dim=-1, keepdim=True)

    def prompt_embedding(self, prompt: str, templates: Sequence[str]) -> Tensor:
        """A prompt averaged over templates: unit embeddings of ``t.format(prompt)``, mean, renormalised -> [D]."""
        emb = self.embed([t.format(prompt) for t in templates]).mean(0)
        return emb / emb.norm()

    def text_delta(self, target: str, neutral: str, templates: Sequence[str]) -> Tensor:
        """StyleCLIP's ``dt``: unit (target - neutral) of the template-averaged embeddings, float32 [D]."""
        dt = self.prompt_embedding(target, templates) - self.prompt_embedding(neutral, templates)
        norm = float(dt.norm())
        if not norm > 1e-6:
            raise UsageError(f"--text {target!r} and --neutral {neutral!r} embed to the same point in CLIP space; "
                             "describe the change in the target prompt")
        return dt / norm


def _clip_files(folder: Path | None, offline: bool | None) -> dict[str, Path]:
    if folder is None:
        return {key: weights.resolve(name, offline=offline) for key, name in CLIP_ENTRIES.items()}
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"--clip {folder}: not a folder (expected config.json, vocab.json, merges.txt and "
                         "model.safetensors or pytorch_model.bin)")
    files = {"config": folder / "config.json", "vocab": folder / "vocab.json", "merges": folder / "merges.txt"}
    files["weights"] = next((f for f in (folder / "model.safetensors", folder / "pytorch_model.bin") if f.is_file()),
                            folder / "model.safetensors")
    for f in files.values():
        if not f.is_file():
            raise InputError(f"--clip {folder}: {f.name} is missing")
    return files


def _text_state(file: Path) -> dict[str, Tensor]:
    """The text tower's tensors of a CLIP checkpoint (``text_model.*``, ``text_projection.*``), weights-only."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{file}: unreadable safetensors file ({str(err).splitlines()[0][:120]})") from err
    else:
        state = weights.safe_torch_load(file)
    if not isinstance(state, dict):
        raise WeightsError(f"{file}: expected a CLIP state dict, found {type(state).__name__}")
    return {k: v for k, v in state.items()
            if isinstance(k, str) and k.startswith(("text_model.", "text_projection.")) and isinstance(v, Tensor)}


def load_clip_text(folder: str | Path | None = None, offline: bool | None = None) -> ClipText:
    """Build the CLIP text tower: from ``folder`` (config.json, vocab.json, merges.txt, model.safetensors or
    pytorch_model.bin; any CLIP text model, e.g. a small test one), or from the manifest's pinned OpenAI ViT-B/32
    files (downloaded once, sha256-checked). Only ``text_model.*`` and ``text_projection.*`` are loaded.

    Raises :class:`UsageError` naming ``pip install 'facefix[clip]'`` when transformers is missing, and
    :class:`WeightsError` / :class:`InputError` for missing or wrong files.
    """
    try:
        from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as err:
        raise UsageError(f"--text needs the optional CLIP text model (transformers), which is not installed: "
                         f"{_CLIP_EXTRA}") from err
    files = _clip_files(None if folder is None else Path(folder), offline)
    try:
        cfg = json.loads(files["config"].read_text(encoding="utf-8"))
        if cfg.get("model_type") == "clip":  # a full CLIP config (OpenAI's): its text part and projection size
            full = CLIPConfig.from_dict(cfg)
            text_cfg = full.text_config
            text_cfg.projection_dim = full.projection_dim
        elif cfg.get("model_type") == "clip_text_model":
            text_cfg = CLIPTextConfig.from_dict(cfg)
        else:
            raise ValueError(f"model_type {cfg.get('model_type')!r} is not a CLIP model")
        vocab = json.loads(files["vocab"].read_text(encoding="utf-8"))
        merges = [tuple(ln.split()) for ln in files["merges"].read_text(encoding="utf-8").splitlines()
                  if ln.strip() and not ln.startswith("#version")]
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the library never prints: no transformers notices on stderr
        try:
            tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
            model = CLIPTextModelWithProjection(text_cfg)
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise WeightsError(f"{files['config'].parent}: not a usable CLIP text model "
                           f"({str(err).splitlines()[0][:160]})") from err
    state = _text_state(files["weights"])
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith("position_ids")]
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise WeightsError(f"{files['weights']}: not this CLIP text model's weights ({what})")
    for key, ref in expected.items():
        if state[key].shape != ref.shape:
            raise WeightsError(f"{files['weights']}: {key} has shape {list(state[key].shape)}, expected "
                               f"{list(ref.shape)}")
    model.load_state_dict({k: state[k].float() for k in expected}, strict=True)
    return ClipText(model.eval().requires_grad_(False), tokenizer)


# -------------------------------------------------------------------------------- fs3 and the direction


def load_fs3(path: str | Path) -> Tensor:
    """StyleCLIP's ``fs3.npy``: float [R, D] (R style channels, D CLIP size; [6048, 512] for FFHQ 1024) -> float32.
    :class:`InputError` for pickles, a wrong rank or dtype, NaN/inf."""
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"{p}: not a plain .npy array ({str(err).splitlines()[0][:120]})") from err
    if arr.ndim != 2 or arr.dtype.kind != "f" or min(arr.shape) < 1:
        raise InputError(f"{p}: expected a float [channels, clip_dim] array (fs3), got {arr.dtype} "
                         f"{list(arr.shape)}")
    fs3 = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(fs3).all():
        raise InputError(f"{p}: fs3 contains NaN or inf")
    return fs3


@dataclass(frozen=True, eq=False)
class GlobalDirection:
    """A text direction over the non-toRGB style channels, before ``s_std``: ``channels`` float32 [R] in
    [-1, 1] (0 below ``beta``; the most relevant channel is +-1), ``n_channels`` of them nonzero."""

    channels: Tensor
    beta: float
    n_channels: int


def global_direction(fs3: Tensor, delta_t: Tensor, beta: float) -> GlobalDirection:
    """Steps 2-3 of the module docstring: ``r = fs3 @ dt``; ``|r| < beta`` -> 0; divided by ``max |r|``.

    fs3: [R, D]; delta_t: unit [D]; beta > 0. :class:`UsageError` when no channel reaches ``beta``."""
    if fs3.ndim != 2 or delta_t.shape != (fs3.shape[1],):
        raise InputError(f"fs3 has CLIP size {fs3.shape[-1]}, the text embedding {delta_t.shape[-1]}: they must "
                         "come from the same CLIP model (ViT-B/32 for StyleCLIP's fs3)")
    relevance = fs3.float() @ delta_t.float()                                    # [R]
    kept = torch.where(relevance.abs() < beta, torch.zeros_like(relevance), relevance)
    top = float(kept.abs().max())
    if top == 0:
        raise UsageError(f"--beta {beta:g}: no style channel is that relevant to the prompt (the largest "
                         f"|relevance| is {float(relevance.abs().max()):.3f}); lower --beta")
    return GlobalDirection(kept / top, float(beta), int((kept != 0).sum()))


# -------------------------------------------------------------------------------- style statistics


@dataclass(frozen=True, eq=False)
class StyleStats:
    """Mean and std of every StyleSpace layer's style over random faces: float32 [C] each, in
    :meth:`Generator.style_layers` order (see the module docstring for how they are made)."""

    mean: list[Tensor]
    std: list[Tensor]


@torch.no_grad()
def style_statistics(generator: Generator, n_samples: int = STATS_SAMPLES, psi: float = STATS_PSI,
                     seed: int = STATS_SEED) -> StyleStats:
    """StyleSpace mean and std of ``generator`` over ``n_samples`` random z (CPU ``torch.Generator(seed)``),
    w = mapping(z) truncated with ``psi`` towards their mean; exact from the moments of w (module docstring)."""
    dev = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    d = generator.style_dim
    total, outer = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n_samples, _STATS_CHUNK):
        z = torch.randn(min(_STATS_CHUNK, n_samples - start), d, generator=rng)
        w = generator.mapping(z.to(dev)).double().cpu()                        # [n,D]
        total += w.sum(0)
        outer += w.T @ w
    mu = total / n_samples
    cov = outer / n_samples - torch.outer(mu, mu)                               # population covariance [D,D]
    means, stds = [], []
    for layer in generator.style_layers():
        a, b = (t.double().cpu() for t in layer.conv.modulation.affine())        # [C,D], [C]
        means.append((a @ mu + b).float())
        stds.append((psi * ((a @ cov) * a).sum(1).clamp_min(0).sqrt()).float())
    return StyleStats(means, stds)


def _stats_key(generator: Generator, n_samples: int, psi: float, seed: int) -> str:
    """sha256 of everything the statistics depend on: the mapping network and every affine, plus the settings."""
    digest = hashlib.sha256(f"{n_samples}:{psi}:{seed}".encode())
    tensors = list(generator.style.state_dict().items()) + [
        (f"{layer.name}.{k}", v) for layer in generator.style_layers()
        for k, v in layer.conv.modulation.state_dict().items()]
    for name, t in tensors:
        digest.update(name.encode())
        digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_style_statistics(generator: Generator, n_samples: int = STATS_SAMPLES, psi: float = STATS_PSI,
                            seed: int = STATS_SEED) -> StyleStats:
    """:func:`style_statistics`, computed once per generator and kept in ``$HF_HOME/facefix/styleclip/``.

    A cache file that is unreadable or has the wrong shapes is recomputed; a cache folder that cannot be written
    only costs the recomputation next time."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    from facefix.errors import FacefixError
    from facefix.image_io import atomic_write_bytes

    layers = generator.style_layers()
    path = weights.cache_dir() / "styleclip" / f"s_stats-{_stats_key(generator, n_samples, psi, seed)[:32]}.safetensors"
    try:
        data = load_file(str(path))
        stats = StyleStats([data[f"mean.{i}"] for i in range(len(layers))],
                           [data[f"std.{i}"] for i in range(len(layers))])
        if all(m.shape == s.shape == (layer.channels,) for m, s, layer in zip(stats.mean, stats.std, layers,
                                                                              strict=True)):
            return stats
    except (OSError, KeyError, SafetensorError, ValueError):
        pass
    stats = style_statistics(generator, n_samples, psi, seed)
    tensors = {**{f"mean.{i}": m for i, m in enumerate(stats.mean)}, **{f"std.{i}": s for i, s in enumerate(stats.std)}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(tensors, metadata={"samples": str(n_samples), "psi": str(psi)}))
    except (OSError, FacefixError):
        pass
    return stats


# -------------------------------------------------------------------------------- offsets for the generator


def style_offsets(generator: Generator, edits: Sequence[tuple[GlobalDirection, float]],
                  stats: StyleStats) -> list[Tensor | None] | None:
    """Step 4-5 of the module docstring for ``(direction, alpha)`` pairs (summed) -> ``Generator.synthesis``
    ``style_offsets``: [1, C] per non-toRGB layer (``alpha * direction * s_std``), None for toRGB layers; None when
    ``edits`` is empty. :class:`InputError` when fs3 does not fit the generator."""
    if not edits:
        return None
    layers = generator.style_layers()
    sizes = [layer.channels for layer in layers if not layer.torgb]
    for direction, _ in edits:
        if direction.channels.numel() != sum(sizes):
            raise InputError(f"fs3 has {direction.channels.numel()} rows, but this {generator.size} px generator has "
                             f"{sum(sizes)} non-toRGB style channels (StyleCLIP's fs3 is for the 1024 px FFHQ "
                             "StyleGAN2)")
    dev, dtype = generator.input.input.device, generator.input.input.dtype
    stds = [std for layer, std in zip(layers, stats.std, strict=True) if not layer.torgb]
    sums = [torch.zeros_like(std) for std in stds]
    for direction, alpha in edits:
        for total, part, std in zip(sums, torch.split(direction.channels, sizes), stds, strict=True):
            total += alpha * (part * std)  # StyleCLIP's order: boundary = direction * s_std, then s + alpha * boundary
    parts = iter(sums)
    return [None if layer.torgb else next(parts).to(dev, dtype)[None] for layer in layers]
