"""SAMM training: frozen e4e encoder and StyleGAN2 generator, trainable SAMM (``feats_conv`` + ``modulation``).

The recipe is the official SAMM E4E one; :class:`TrainConfig` holds it as defaults and ``examples/train_samm.toml``
documents every key. The library entry point is :func:`train_samm`; the ``facefix train samm`` command only parses
options into it.

One step (N images per process, S = generator size, L W+ rows, D = 512; alpha = 1 means out-of-domain):

    image files uint8 --resize to S, hflip--> x [N,3,S,S] in [-1,1] and x256 [N,3,256,256] (the pipeline's encoder
    input for the SAMM encoder mode) --e4e (eval, no grad)--> W+ = codes + latent_avg [N,L,D] and the encoder taps
    --SAMM.project + generator.synthesis with the SAMM hook on the active levels, random noise--> G [N,3,S,S] and
    the align tensors --compose_mask--> A [N,1,S,S] --blend--> y = A x + (1 - A) G
    loss = 1 MSE(y, x) + 1 VGG19 perceptual + 50 Gram style + 0.1 identity + 0.2 mask-binary + 5 mask-area
    (the GAN term is left out: the official G loss sees a detached fake, so it has no gradient)
    Adam(2e-5, betas (0, 0.99)), lr x0.75 every 15k steps, EMA decay 0.5**(32/10000) of all SAMM parameters.

Progressive levels: 32 px from the start; 64, 128 and 256 px join after ``progressive_steps`` (2k, 6k, 10k), as
the official ``progressiveModSize`` schedule; only levels up to the generator size exist.

Run folder (``run_dir``):
    config.json           the config, data and weight paths of the last start
    metrics.jsonl         one JSON object per log line / validation
    samm_step{N}.pt       EMA weights in facefix's SAMM format (``facefix.checkpoints.load_samm``, ``--samm``)
    samm_latest.pt        the newest of them
    state_step{N}.pt      raw weights, EMA, optimizer, scheduler, grad scaler, RNG, step: what ``resume`` reads
    val/step{N}.png       validation grid: input | generator | mask | output, one row per held-out image
    tb/                   TensorBoard events (only when ``tensorboard`` is installed)

Determinism: the samples of step s (file order and flips) and its generator noise are functions of (seed, s,
rank), so a run resumed from ``state_step{k}.pt`` repeats exactly what the uninterrupted run would have done.

Distributed: under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK set) each process trains on its shard of every
epoch (``DistributedSampler``); SAMM is wrapped in ``DistributedDataParallel`` (nccl on CUDA, gloo on CPU); rank 0
alone logs and writes files. ``batch_size`` is per process.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from facefix import checkpoints, weights
from facefix.batch import find_images
from facefix.errors import InputError, UsageError, WeightsError
from facefix.image_io import atomic_write, atomic_write_bytes, load_image, save_image, to_tensor, to_uint8
from facefix.losses import (
    LPIPS,
    IdentityLoss,
    PerceptualLoss,
    load_ir_se50,
    load_lpips,
    load_vgg19,
    mask_losses,
    psnr,
    ssim,
)
from facefix.models.encoders import Encoder4Editing, SmallEncoder
from facefix.models.samm import ENCODER_MODES, RESOLUTIONS, SAMM, SAMMTrace, blend, compose_mask
from facefix.models.stylegan2 import Generator
from facefix.pipeline import encoder_input, resolve_device

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

LogFn = Callable[[str], object]
TrainEncoder = Encoder4Editing | SmallEncoder
"""Encoders SAMM trains over: e4e, or the small one of test configs and the synthetic benchmark."""
MASK_KEYS = (32, 64, 128, 256, 1024)
"""Keys of ``mask_area_tau``: the SAMM levels, and 1024 for the composed mask whatever the generator size."""
STATE_FORMAT = "facefix-samm-train-state"
STATE_FORMAT_VERSION = 1
_STATE_RE = re.compile(r"^state_step(\d+)\.pt$")


# -- config -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Everything a SAMM training run is configured with; defaults = the official E4E recipe.

    The TOML file (``load_config``) uses these names as top-level keys; ``examples/train_samm.toml`` documents
    them. Weights of the loss terms are the recipe's effective ones (mask-binary 0.2 = 5.0 x 0.04).
    """

    # optimisation
    lr: float = 2e-5                            # Adam learning rate of SAMM + feats_conv
    betas: tuple[float, float] = (0.0, 0.99)    # Adam betas (beta1 = 0 in the recipe)
    lr_decay: float = 0.75                      # lr multiplier applied ...
    lr_decay_every: int = 15_000                # ... every this many steps
    ema_decay: float = 0.5 ** (32 / 10_000)     # per-step EMA decay of the saved weights (0.99778)
    batch_size: int = 2                         # images per process and step
    max_steps: int = 150_000                    # the spec's 100-150k; lr is ~1.3e-6 by then
    seed: int = 0                               # SAMM init, data order, flips and generator noise
    amp: bool = False                           # float16 autocast + GradScaler (CUDA only; ignored elsewhere)
    # data
    hflip: bool = True                          # random horizontal flip (p = 0.5)
    num_workers: int = 4                        # DataLoader worker processes (0 = load in the main process)
    val_dir: str | None = None                  # held-out folder; default: the first val_images of the data
    val_images: int = 4                         # images used for validation (0 = no validation)
    # SAMM architecture (recorded in the checkpoint)
    encoder_mode: str = "official"              # official (bicubic FPN, bilinear 1024->256) or e4e
    cycle_align: int = 2                        # AlignNet cycles per level (1..3)
    warp_scale: float = 0.08                    # flow bound in normalised grid units
    mod_bias: bool = False                      # conv biases in the SAMM blocks
    progressive_steps: tuple[int, int, int] = (2000, 6000, 10_000)  # 64, 128, 256 px join after these steps
    # losses (0 disables a term)
    pixel_weight: float = 1.0                   # MSE on [-1,1]
    perceptual_weight: float = 1.0              # VGG19 L1 on pre-ReLU features (needs VGG19 weights)
    style_weight: float = 50.0                  # L1 on their Gram matrices (needs VGG19 weights)
    id_weight: float = 0.1                      # 1 - cos of IR-SE50 ArcFace embeddings (needs IR-SE50 weights)
    mask_binary_weight: float = 0.2             # sum_r mean(min(alpha, 1 - alpha))
    mask_area_weight: float = 5.0               # sum_r relu(mean(alpha) - tau_r)
    mask_area_tau: dict[int, float] = field(
        default_factory=lambda: {32: 0.3, 64: 0.3, 128: 0.2, 256: 0.2, 1024: 0.2})
    vgg19_path: str | None = None               # torchvision vgg19-dcbb9e9d.pth (default: manifest)
    ir_se50_path: str | None = None             # pSp/e4e model_ir_se50.pth (default: manifest)
    lpips_backbone_path: str | None = None      # validation LPIPS: torchvision alexnet-owt-7be5be79.pth (or vgg16)
    lpips_lin_path: str | None = None           # ... with the lpips package's weights/v0.1/alex.pth (or vgg.pth)
    # bookkeeping (in steps)
    log_every: int = 50
    val_every: int = 2000                       # 0 = never (else also after the last step)
    ckpt_every: int = 2000                      # a checkpoint is also written after the last step
    keep_states: int = 2                        # resume states kept (samm_step files are all kept)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready values (tuples as lists, tau keys as strings)."""
        d = dataclasses.asdict(self)
        d["mask_area_tau"] = {str(k): v for k, v in self.mask_area_tau.items()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


_PATH_KEYS = ("val_dir", "vgg19_path", "ir_se50_path", "lpips_backbone_path", "lpips_lin_path")


def _coerce(key: str, value: object, where: str, base: Path) -> object:
    """One config value, type-checked against the field's default and converted (ints to floats, paths to
    absolute strings relative to ``base``, tau tables merged over the defaults)."""
    default = getattr(TrainConfig(), key)

    def bad(expected: str) -> UsageError:
        return UsageError(f"{where}: {key} = {value!r}: expected {expected}")

    def number(v: object, kind: type) -> float | int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise bad("an integer" if kind is int else "a number")
        return kind(v)

    if key in _PATH_KEYS:
        if not isinstance(value, str) or not value:
            raise bad("a path")
        return str((base / Path(value).expanduser()).resolve())
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, (int, float)):
        return number(value, type(default))
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise bad(f"a list of {len(default)} numbers")
        return tuple(number(v, type(default[0])) for v in value)
    if isinstance(default, dict):
        if not isinstance(value, Mapping):
            raise bad("a table like { 32 = 0.3, 1024 = 0.2 }")
        merged = dict(default)
        for k, v in value.items():
            if str(k) not in {str(m) for m in MASK_KEYS}:
                raise UsageError(f"{where}: {key}: unknown level {k!r} (expected {', '.join(map(str, MASK_KEYS))})")
            merged[int(k)] = float(number(v, float))
        return merged
    raise AssertionError(f"no coercion for {key}")


def _check_values(cfg: TrainConfig, where: str) -> None:
    """Range checks; the first violation is a one-line UsageError."""
    checks: list[tuple[str, bool, str]] = [
        ("lr", cfg.lr > 0, "> 0"),
        ("betas", all(0 <= b < 1 for b in cfg.betas), "two numbers in [0, 1)"),
        ("lr_decay", 0 < cfg.lr_decay <= 1, "in (0, 1]"),
        ("lr_decay_every", cfg.lr_decay_every >= 1, ">= 1"),
        ("ema_decay", 0 <= cfg.ema_decay < 1, "in [0, 1)"),
        ("batch_size", cfg.batch_size >= 1, ">= 1"),
        ("max_steps", cfg.max_steps >= 1, ">= 1"),
        ("seed", cfg.seed >= 0, ">= 0"),
        ("num_workers", cfg.num_workers >= 0, ">= 0"),
        ("val_images", cfg.val_images >= 0, ">= 0"),
        ("encoder_mode", cfg.encoder_mode in ENCODER_MODES, f"one of {', '.join(ENCODER_MODES)}"),
        ("cycle_align", 1 <= cfg.cycle_align <= 3, "1, 2 or 3"),
        ("warp_scale", cfg.warp_scale > 0, "> 0"),
        ("progressive_steps", all(s >= 0 for s in cfg.progressive_steps)
         and list(cfg.progressive_steps) == sorted(cfg.progressive_steps), "non-decreasing steps >= 0"),
        *[(k, getattr(cfg, k) >= 0, ">= 0") for k in ("pixel_weight", "perceptual_weight", "style_weight",
                                                      "id_weight", "mask_binary_weight", "mask_area_weight")],
        ("mask_area_tau", all(0 <= t <= 1 for t in cfg.mask_area_tau.values()), "thresholds in [0, 1]"),
        ("log_every", cfg.log_every >= 1, ">= 1"),
        ("val_every", cfg.val_every >= 0, ">= 0"),
        ("ckpt_every", cfg.ckpt_every >= 1, ">= 1"),
        ("keep_states", cfg.keep_states >= 1, ">= 1"),
        ("lpips_lin_path", (cfg.lpips_lin_path is None) == (cfg.lpips_backbone_path is None),
         "set together with lpips_backbone_path"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise UsageError(f"{where}: {key} must be {expected}, got {getattr(cfg, key)!r}")


def _coerce_all(values: Mapping[str, object], where: str, base: Path) -> dict[str, object]:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    out = {}
    for key, value in values.items():
        if key not in known:
            hint = " (keys are top-level, no [sections])" if isinstance(value, Mapping) else ""
            raise UsageError(f"{where}: unknown key {key!r}{hint}; see examples/train_samm.toml")
        out[key] = _coerce(key, value, where, base)
    return out


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, object] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file (missing keys keep their defaults) and then ``overrides``.

    Relative paths in the file are relative to the file's folder; in ``overrides``, to the working directory.
    ``overrides`` uses the same keys (e.g. ``{"max_steps": 1000}`` for ``--max-steps``); None values are skipped.
    Raises:
        UsageError: unreadable file, invalid TOML, unknown key, wrong type or out-of-range value (one line).
    """
    values: dict[str, object] = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            with open(p, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as err:
            raise UsageError(f"{p}: config file not found") from err
        except OSError as err:
            raise UsageError(f"{p}: cannot read config ({err.strerror or err})") from err
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"{p}: not valid TOML ({err})") from err
        values.update(_coerce_all(data, where, p.resolve().parent))
    cfg = TrainConfig(**values)  # type: ignore[arg-type]
    _check_values(cfg, where)
    if overrides:  # checked again, so that an error names the option rather than the file
        values.update(_coerce_all({k: v for k, v in overrides.items() if v is not None}, "option", Path.cwd()))
        cfg = TrainConfig(**values)  # type: ignore[arg-type]
        _check_values(cfg, "option")
    return cfg



# -- data -------------------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder``, found as ``facefix invert FOLDER`` finds them (:func:`facefix.batch.find_images`).
    Raises InputError if there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (training needs a folder of FFHQ-aligned faces)")
    try:
        files = find_images(root)
    except OSError as err:
        raise InputError(f"{root}: cannot list the folder ({err.strerror or err})") from err
    if not files:
        raise InputError(f"{root}: no images (JPEG, PNG, WebP, TIFF, BMP) in this folder or below")
    return files


class FaceFolder(Dataset):
    """Aligned face files -> training pairs; indexed by ``(file index, hflip)`` (see :class:`StepSampler`).

    Args:
        files: square FFHQ-aligned crops (``facefix align`` output, FFHQ ``images1024x1024``).
        size: S, the generator size; other sizes are resized (PIL bicubic).
        encoder_resize: ``pil`` or ``bilinear``, how the crop becomes the encoder input (the SAMM encoder mode's
            ``input_resize``, exactly as :meth:`facefix.pipeline.FacefixPipeline.prepare` makes it).
    Returns (per item):
        x [3,S,S] float32 in [-1,1] and x256 [3,256,256] float32 in [-1,1].
    """

    def __init__(self, files: Sequence[Path], size: int, encoder_resize: str):
        self.files, self.size, self.encoder_resize = list(files), size, encoder_resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[Tensor, Tensor]:
        index, flip = item
        path = self.files[index]
        rgb = load_image(path).rgb
        h, w = rgb.shape[:2]
        if h != w:
            raise InputError(f"{path}: {w}x{h} is not square; training needs aligned crops (see facefix align)")
        if h != self.size:
            rgb = np.asarray(Image.fromarray(rgb).resize((self.size, self.size), Image.BICUBIC))
        if flip:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        return to_tensor(rgb)[0], encoder_input(rgb, self.encoder_resize)[0]


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative ints (SeedSequence: nearby inputs give unrelated streams)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


_FLIP_STREAM, _NOISE_STREAM, _VAL_STREAM, _INIT_STREAM = 1, 2, 3, 4


class StepSampler(Sampler):
    """The endless ``(file index, hflip)`` stream of one process, starting at a given step.

    Epoch e is ``DistributedSampler(seed=seed).set_epoch(e)``'s shard for this rank (shuffled, padded to equal
    shards); each file's flip in epoch e is a coin toss seeded by (seed, e). The epochs are concatenated and step
    s takes entries [s*N, (s+1)*N), so the batches depend only on (seed, step, rank, world size).
    """

    def __init__(self, n_files: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 hflip: bool = True, start_step: int = 0):
        self.shards = DistributedSampler(range(n_files), num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=seed)
        self.n_files, self.seed, self.hflip = n_files, seed, hflip
        self.start = start_step * batch_size

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        per_epoch = self.shards.num_samples
        epoch, skip = divmod(self.start, per_epoch)
        while True:
            self.shards.set_epoch(epoch)
            flips = np.zeros(self.n_files, dtype=bool)
            if self.hflip:
                flips = np.random.default_rng(_seed(self.seed, _FLIP_STREAM, epoch)).random(self.n_files) < 0.5
            for i in list(self.shards)[skip:]:
                yield i, bool(flips[i])
            epoch, skip = epoch + 1, 0


# -- distributed ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device, bool]:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group (nccl on CUDA, gloo on CPU).

    Returns:
        (DistInfo, this process's device, whether this call created the process group and must destroy it).
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise UsageError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from err
    if world <= 1:
        return DistInfo(), resolve_device(device), False
    if device in ("auto", "cuda") and torch.cuda.is_available():
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = resolve_device("cpu" if device == "auto" else device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), dev, created


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


# -- model pieces -----------------------------------------------------------------------------------------------


def active_levels(step: int, progressive_steps: Sequence[int], generator_size: int) -> tuple[int, ...]:
    """SAMM levels that run at 0-based ``step``: 32 always, 64/128/256 once step + 1 > their start (the official
    schedule counts iterations from 1 and adds a level when ``current_iter > milestone``)."""
    levels = [32] + [r for r, start in zip((64, 128, 256), progressive_steps, strict=True) if step + 1 > start]
    return tuple(r for r in levels if r <= generator_size)


def init_samm(samm: SAMM, seed: int) -> SAMM:
    """Training-from-scratch initialisation (as the official code's), drawn from a generator seeded with ``seed``.

    AlignNet convs: ``xavier_normal_`` (gain 1), biases 0; ``feats_conv``: PyTorch's default conv init
    (``kaiming_uniform_(a=sqrt(5))``, bias U(+-1/sqrt(fan_in))). InstanceNorm affines (1, 0) and PReLU (0.25)
    keep their construction values.
    """
    g = torch.Generator().manual_seed(_seed(seed, _INIT_STREAM))
    with torch.no_grad():
        for m in samm.modulation.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, generator=g)
                if m.bias is not None:
                    m.bias.zero_()
        for conv in samm.feats_conv:
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=g)
            bound = 1 / math.sqrt(conv.weight[0].numel())
            nn.init.uniform_(conv.bias, -bound, bound, generator=g)
    return samm


class SAMMForward(nn.Module):
    """SAMM's part of a training forward as one module, so DistributedDataParallel can wrap it: its only
    parameters are SAMM's; the frozen generator is an argument, so DDP neither broadcasts nor tracks it."""

    def __init__(self, samm: SAMM):
        super().__init__()
        self.samm = samm

    def forward(self, generator: Generator, features: Mapping[str, Tensor], w_plus: Tensor, x: Tensor,
                noise: Sequence[Tensor], levels: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, dict[int, Tensor]]:
        """Generate with SAMM on ``levels`` only and blend.

        Args:
            generator: frozen, S px.
            features: the e4e taps (256 px input).
            w_plus: [N,L,D] absolute codes.
            x: [N,3,S,S] in [-1,1], the target (pasted where the mask is 1).
            noise: per-layer generator noise [N,1,r,r].
            levels: active SAMM resolutions; the hook leaves the others' features unchanged.
        Returns:
            (y [N,3,S,S] blended, G [N,3,S,S] generator output, A [N,1,S,S] mask, aligns {r: [N,3,r,r]}).
        """
        projected = self.samm.project(features, levels)
        trace = SAMMTrace()
        gen = generator.synthesis(w_plus, noise=noise, feature_hook=self.samm.feature_hook(projected, trace))
        mask = compose_mask(trace.aligns, gen.shape[-1])
        return blend(x, gen, mask), gen, mask, trace.aligns


class SAMMCriterion:
    """The official recipe's weighted loss terms; VGG and identity terms are left out when their network is None.

    __call__(y, x, aligns, mask) -> {"pixel", ["perceptual", "style",] ["identity",] "mask_binary", "mask_area",
    "total"}: weighted scalars; y, x [N,3,S,S] in [-1,1]; aligns {r: [N,3,r,r]}; mask [N,1,S,S].
    """

    def __init__(self, config: TrainConfig, perceptual: PerceptualLoss | None = None,
                 identity: IdentityLoss | None = None):
        self.config, self.perceptual, self.identity = config, perceptual, identity

    def __call__(self, y: Tensor, x: Tensor, aligns: Mapping[int, Tensor], mask: Tensor) -> dict[str, Tensor]:
        c = self.config
        terms = {"pixel": c.pixel_weight * F.mse_loss(y, x)}
        if self.perceptual is not None:
            percep, style = self.perceptual(y, x)
            terms.update(perceptual=c.perceptual_weight * percep, style=c.style_weight * style)
        if self.identity is not None:
            terms["identity"] = c.id_weight * self.identity(y, x)
        binary, area = mask_losses(aligns, mask, c.mask_area_tau)
        terms.update(mask_binary=c.mask_binary_weight * binary, mask_area=c.mask_area_weight * area)
        terms["total"] = sum(terms.values())  # type: ignore[assignment]
        return terms


def _loss_weights(path: str | None, name: str, off: list[str], terms: str) -> str | Path | None:
    """The configured file, else the manifest's ``name`` if it is already on disk (``FACEFIX_<NAME>``,
    ``FACEFIX_WEIGHTS_DIR``, the cache; sha256-checked). Never downloads: fetching 175-575 MB is the user's call
    (``facefix weights download NAME``). When there is none, ``off`` gets a line saying so and why."""
    if path:
        return path
    try:
        return weights.resolve(name, offline=True)
    except WeightsError as e:
        off.append(f"{terms} ({e}, or set {name}_path)")
        return None


def build_criterion(config: TrainConfig, device: torch.device, log: LogFn) -> SAMMCriterion:
    """The loss terms with their networks on ``device``; logs ONE line naming the terms that are off because
    their weights (VGG19, IR-SE50: a config path or the manifest's file on disk) are missing."""
    perceptual = identity = None
    off = []
    if config.perceptual_weight > 0 or config.style_weight > 0:
        vgg19 = _loss_weights(config.vgg19_path, "vgg19", off, "perceptual + style")
        if vgg19 is not None:
            perceptual = PerceptualLoss(load_vgg19(vgg19).to(device))
    if config.id_weight > 0:
        ir_se50 = _loss_weights(config.ir_se50_path, "ir_se50", off, "identity")
        if ir_se50 is not None:
            identity = IdentityLoss(load_ir_se50(ir_se50).to(device))
    if off:
        log(f"note: losses disabled: {'; '.join(off)}; training with the other terms")
    return SAMMCriterion(config, perceptual, identity)


def build_lpips(config: TrainConfig, device: torch.device, log: LogFn) -> LPIPS | None:
    """The validation LPIPS network on ``device`` when both its files are configured; otherwise None and ONE
    line saying LPIPS is not reported (facefix cannot download its weights)."""
    if config.lpips_backbone_path and config.lpips_lin_path:
        return load_lpips(config.lpips_backbone_path, config.lpips_lin_path).to(device)
    log("note: validation without LPIPS (set lpips_backbone_path and lpips_lin_path, see "
        "examples/train_samm.toml)")
    return None


def load_models(encoder_path: str | os.PathLike[str] | None, generator_path: str | os.PathLike[str] | None,
                encoder_mode: str, offline: bool | None = None) -> tuple[Generator, TrainEncoder, Tensor]:
    """(generator, e4e encoder, latent_avg [L,D]) as :meth:`FacefixPipeline.from_pretrained` loads them.
    A ``SmallEncoder`` file (``checkpoints.save_encoder``; small generators, the synthetic benchmark) is accepted too.

    The encoder file comes from ``encoder_path`` or the manifest; the generator is ``generator_path``'s, else the
    e4e file's decoder. In ``official`` mode with a generator file, its [512] ``latent_avg`` is used (as officially).
    """
    enc_file = weights.resolve("e4e", override=encoder_path, offline=offline)
    loaded = checkpoints.load_encoder(enc_file, fpn_upsample=ENCODER_MODES[encoder_mode]["fpn_upsample"],
                                      cache=encoder_path is None, with_generator=generator_path is None)
    if not isinstance(loaded.encoder, (Encoder4Editing, SmallEncoder)):
        raise UsageError(f"{enc_file}: SAMM training needs an e4e (or facefix SmallEncoder) encoder, this file "
                         f"holds a {loaded.kind} one")
    generator, latent_avg = loaded.generator, loaded.latent_avg
    if generator_path is not None:
        lg = checkpoints.load_generator(weights.resolve("stylegan2", override=generator_path, offline=offline))
        loaded.check_generator(lg.generator, generator_path)
        generator = lg.generator
        if encoder_mode == "official" and lg.latent_avg is not None:
            latent_avg = lg.latent_avg.reshape(1, -1).expand(generator.n_latent, -1).clone()
    assert generator is not None
    return generator, loaded.encoder, latent_avg


# -- run folder -------------------------------------------------------------------------------------------------


def latest_state(run_dir: str | os.PathLike[str]) -> Path | None:
    """The ``state_step{N}.pt`` with the largest N in ``run_dir``, or None."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("state_step*.pt") if (m := _STATE_RE.match(p.name))]
    return max(found)[1] if found else None


def _replace_with_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to (or, where links fail, a copy of) ``src``, atomically."""
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.lnk"
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(dst, src.read_bytes())


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


# -- trainer ----------------------------------------------------------------------------------------------------


class SAMMTrainer:
    """SAMM training over ready models (``train_samm`` loads them from files; benchmarks pass recipe models).

    Args:
        config: the run's :class:`TrainConfig`.
        generator, encoder, latent_avg: frozen models (moved to ``device``; the encoder's FPN resize is set to
            the config's encoder mode) and the [L,D] W mean.
        train_files, val_files: aligned face images (val may be empty).
        run_dir: output folder (created).
        device: this process's device.
        dist_info: torchrun placement (default: single process).
        log: line sink for rank 0 (console); other ranks stay silent.
        meta: JSON-like facts recorded in config.json and every SAMM checkpoint (data and weight paths).
    """

    def __init__(self, config: TrainConfig, generator: Generator, encoder: TrainEncoder, latent_avg: Tensor,
                 train_files: Sequence[Path], val_files: Sequence[Path], run_dir: str | os.PathLike[str],
                 device: torch.device | str = "cpu", dist_info: DistInfo | None = None, log: LogFn = print,
                 meta: Mapping[str, object] | None = None):
        if generator.size < 32:
            raise UsageError(f"SAMM needs a generator of at least 32 px, got {generator.size}")
        self.config, self.dist = config, dist_info or DistInfo()
        self.device = torch.device(device)
        self.run_dir = Path(run_dir)
        self.log: LogFn = log if self.dist.is_main else (lambda _line: None)
        self.meta = dict(meta or {})
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        if isinstance(encoder, Encoder4Editing):
            encoder.fpn_upsample = ENCODER_MODES[config.encoder_mode]["fpn_upsample"]
        self.encoder = encoder.to(self.device).eval().requires_grad_(False)
        self.latent_avg = latent_avg.to(self.device, torch.float32)
        resize = ENCODER_MODES[config.encoder_mode]["input_resize"]
        self.train_set = FaceFolder(train_files, generator.size, resize)
        self.val_set = FaceFolder(val_files, generator.size, resize)

        with torch.random.fork_rng(devices=[]):  # SAMM's default init must not advance the global RNG
            samm = SAMM.for_generator(generator, warp_scale=config.warp_scale, cycle_align=config.cycle_align,
                                      bias=config.mod_bias, encoder_mode=config.encoder_mode)
        self.samm = init_samm(samm, config.seed).to(self.device).train()
        self.ema = copy.deepcopy(self.samm).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.samm.parameters(), lr=config.lr, betas=config.betas, eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.lr_decay_every, config.lr_decay)
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.step = 0
        self._forward = SAMMForward(self.samm)
        self._ema_forward = SAMMForward(self.ema)
        self._ddp: nn.Module | None = None
        self.criterion = build_criterion(config, self.device, self.log)
        # a metric only: loaded where validation runs
        self.lpips = (build_lpips(config, self.device, self.log)
                      if self.dist.is_main and config.val_every and len(self.val_set) else None)
        self._tb = None
        self._window: dict[str, float] = {}

    # -- one step -----------------------------------------------------------------------------------------
    def _module(self, levels: Sequence[int]) -> nn.Module:
        """SAMMForward, wrapped in DDP when distributed (built once; levels that do not run at the first step,
        or never run under a small generator, have no gradient, so DDP must look for unused parameters)."""
        if not self.dist.enabled:
            return self._forward
        if self._ddp is None:
            unused = any(r not in levels for r in RESOLUTIONS)
            self._ddp = nn.parallel.DistributedDataParallel(
                self._forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False, find_unused_parameters=unused)
        return self._ddp

    def _encode(self, x256: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x256 [N,3,256,256] -> (W+ [N,L,D] with latent_avg, taps); frozen, no grad."""
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            out = self.encoder.encode(x256, return_features=True)
        assert out.features is not None
        return out.codes.float() + self.latent_avg[None], out.features

    def _noise(self, n: int, *stream: int) -> list[Tensor]:
        return self.generator.random_noise(n, torch.Generator().manual_seed(_seed(self.config.seed, *stream)))

    def train_step(self, x: Tensor, x256: Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """One optimisation step on a batch (x [N,3,S,S], x256 [N,3,256,256] on the device).

        Returns:
            (weighted loss terms of this process, {"forward": s, "backward": s} wall times).
        """
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        levels = active_levels(self.step, self.config.progressive_steps, self.generator.size)
        w_plus, features = self._encode(x256)
        # official training draws fresh noise every forward; seeded by (step, rank) so a resumed run repeats it
        noise = self._noise(x.shape[0], _NOISE_STREAM, self.step, self.dist.rank)
        with torch.autocast(self.device.type, enabled=self.amp):
            y, _, mask, aligns = self._module(levels)(self.generator, features, w_plus, x, noise, levels)
            terms = self.criterion(y.float(), x, aligns, mask.float())
        sync()
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self._update_ema()
        sync()
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}, {"forward": t1 - t0,
                                                                   "backward": time.perf_counter() - t1}

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.config.ema_decay
        for e, p in zip(self.ema.parameters(), self.samm.parameters(), strict=True):
            e.mul_(d).add_(p, alpha=1 - d)  # BasicSR's model_ema

    # -- loop ---------------------------------------------------------------------------------------------
    def _loader(self) -> Iterator[tuple[Tensor, Tensor]]:
        c = self.config
        sampler = StepSampler(len(self.train_set), c.batch_size, c.seed, self.dist.rank, self.dist.world_size,
                              c.hflip, start_step=self.step)
        loader = DataLoader(self.train_set, batch_size=c.batch_size, sampler=sampler, num_workers=c.num_workers,
                            pin_memory=self.device.type == "cuda")
        return iter(loader)

    def train(self) -> Path:
        """Train from ``self.step`` to ``max_steps``; returns the last ``samm_step{N}.pt``."""
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._start_logging()
        if self.step >= c.max_steps:
            self.log(f"already at step {self.step} (max_steps {c.max_steps}): nothing to train")
            return self.run_dir / f"samm_step{self.step}.pt"
        batches = self._loader()
        n_img = c.batch_size * self.dist.world_size
        final = self.run_dir / f"samm_step{c.max_steps}.pt"
        while self.step < c.max_steps:
            t0 = time.perf_counter()
            x, x256 = next(batches)
            x = x.to(self.device, non_blocking=True)
            x256 = x256.to(self.device, non_blocking=True)
            t_data = time.perf_counter() - t0
            terms, times = self.train_step(x, x256)
            self._accumulate(terms, {"data": t_data, **times}, n_img)
            if self.step % c.log_every == 0 or self.step == c.max_steps:
                self._log_window()
            last = self.step == c.max_steps
            if c.val_every and (self.step % c.val_every == 0 or last) and len(self.val_set):
                self.validate()
            if self.step % c.ckpt_every == 0 or last:
                final = self.save_checkpoint()
        if self._tb is not None:
            self._tb.close()
        return final

    # -- logging ------------------------------------------------------------------------------------------
    def _start_logging(self) -> None:
        c = self.config
        levels = active_levels(self.step, c.progressive_steps, self.generator.size)
        self.log(f"SAMM training: {len(self.train_set)} images (+{len(self.val_set)} validation), generator "
                 f"{self.generator.size}px, levels {','.join(map(str, levels))} at step {self.step}, device "
                 f"{self.device}, {self.dist.world_size} process(es) x batch {c.batch_size}, to step {c.max_steps}")
        if c.amp and not self.amp:
            self.log(f"note: amp is CUDA-only; training in float32 on {self.device.type}")
        if not self.dist.is_main:
            return
        info = {"config": c.to_dict(), "samm": dict(self.samm.config), "world_size": self.dist.world_size,
                "start_step": self.step, **self.meta}
        atomic_write_bytes(self.run_dir / "config.json", json.dumps(info, indent=2).encode())
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("note: TensorBoard logging off (pip install tensorboard); metrics go to metrics.jsonl")
        else:
            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def _accumulate(self, terms: Mapping[str, float], times: Mapping[str, float], n_img: int) -> None:
        w = self._window
        for k, v in terms.items():
            w[f"loss/{k}"] = w.get(f"loss/{k}", 0.0) + v
        for k, v in times.items():
            w[f"time/{k}"] = w.get(f"time/{k}", 0.0) + v
        w["steps"] = w.get("steps", 0.0) + 1
        w["images"] = w.get("images", 0.0) + n_img

    def _log_window(self) -> None:
        """One console line and one metrics.jsonl record of the means since the last log (losses averaged
        over all processes, which is a collective: every rank calls this at the same steps)."""
        w, self._window = self._window, {}
        keys = sorted(k for k in w if k.startswith("loss/"))
        losses = torch.tensor([w[k] for k in keys], dtype=torch.float64)
        if self.dist.enabled:
            losses = losses.to(self.device)
            dist.all_reduce(losses)
            losses = losses.cpu() / self.dist.world_size
        steps = w["steps"]
        mean = {k[5:]: v / steps for k, v in zip(keys, losses.tolist(), strict=True)}
        times = {k[5:]: w[k] / steps for k in ("time/data", "time/forward", "time/backward")}
        ips = w["images"] / max(sum(times.values()) * steps, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        levels = active_levels(self.step - 1, self.config.progressive_steps, self.generator.size)
        parts = " ".join(f"{k} {v:.4f}" for k, v in mean.items() if k != "total")
        self.log(f"step {self.step}/{self.config.max_steps} | loss {mean['total']:.4f} ({parts}) | levels "
                 f"{','.join(map(str, levels))} | lr {lr:.2e} | {ips:.2f} img/s | data {times['data']:.3f}s "
                 f"fwd {times['forward']:.3f}s bwd {times['backward']:.3f}s")
        self._record({"step": self.step, "loss": mean, "lr": lr, "images_per_s": ips, "time_s": times})

    def _record(self, entry: Mapping[str, object]) -> None:
        """Append to metrics.jsonl and TensorBoard (rank 0)."""
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        if self._tb is not None:
            for group in ("loss", "val"):
                for k, v in dict(entry.get(group) or {}).items():  # type: ignore[call-overload]
                    self._tb.add_scalar(f"{group}/{k}", v, self.step)

    # -- validation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """EMA SAMM (the weights that are saved) on the held-out images, fixed noise per image: mean PSNR and
        SSIM of the blended output vs the input (8-bit RGB), identity similarity when IR-SE50 is loaded, LPIPS
        (on the float images) when its files are configured, and the grid ``val/step{N}.png`` (input | generator |
        mask | output). Rank 0 only; returns the means."""
        if not self.dist.is_main:
            return {}
        levels = active_levels(self.step - 1, self.config.progressive_steps, self.generator.size)
        scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
        rows = []
        b = self.config.batch_size
        for start in range(0, len(self.val_set), b):
            items = [self.val_set[(i, False)] for i in range(start, min(start + b, len(self.val_set)))]
            x = torch.stack([t[0] for t in items]).to(self.device)
            w_plus, features = self._encode(torch.stack([t[1] for t in items]).to(self.device))
            noise = self._noise(x.shape[0], _VAL_STREAM, start)
            y, gen, mask, _ = self._ema_forward(self.generator, features, w_plus, x, noise, levels)
            scores["psnr"] += psnr(y, x).tolist()
            scores["ssim"] += ssim(y, x).tolist()
            if self.criterion.identity is not None:
                scores.setdefault("id", []).extend(self.criterion.identity.similarity(y, x).tolist())
            if self.lpips is not None:
                scores.setdefault("lpips", []).extend(self.lpips(y, x).tolist())
            rows += [torch.cat([x[i], gen[i], mask[i].expand(3, -1, -1) * 2 - 1, y[i]], dim=2)
                     for i in range(x.shape[0])]
        (self.run_dir / "val").mkdir(exist_ok=True)
        save_image(self.run_dir / "val" / f"step{self.step}.png", to_uint8(torch.cat(rows, dim=1).cpu()))
        means = {k: float(np.mean(v)) for k, v in scores.items()}
        self.log(f"val step {self.step}: " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                 + f" on {len(self.val_set)} images (EMA weights)")
        self._record({"step": self.step, "val": means})
        return means

    # -- checkpoints --------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``samm_step{N}.pt`` (EMA), ``samm_latest.pt`` and ``state_step{N}.pt``; drop old states.
        Rank 0 writes, everybody waits at a barrier before and after."""
        path = self.run_dir / f"samm_step{self.step}.pt"
        _barrier(self.dist)
        if self.dist.is_main:
            checkpoints.save_samm(path, self.ema, {"step": self.step, **self.meta})
            _replace_with_copy(path, self.run_dir / "samm_latest.pt")
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()])
            state = {"format": STATE_FORMAT, "version": STATE_FORMAT_VERSION, "step": self.step,
                     "world_size": self.dist.world_size, "samm_config": dict(self.samm.config),
                     "samm": _cpu_state(self.samm), "ema": _cpu_state(self.ema),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rng}
            # streamed into the temp file (no in-memory copy: the state is ~3x the SAMM weights)
            atomic_write(self.run_dir / f"state_step{self.step}.pt", lambda f: torch.save(state, f), "state")
            states = sorted((int(m.group(1)), p) for p in self.run_dir.glob("state_step*.pt")
                            if (m := _STATE_RE.match(p.name)))
            for _, old in states[:-self.config.keep_states]:
                old.unlink(missing_ok=True)
        _barrier(self.dist)
        return path

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Continue from a ``state_step{N}.pt``: weights, EMA, optimizer, scheduler, grad scaler, RNG and step.
        Read with ``torch.load(weights_only=True)``; the SAMM architecture must match the config's."""
        state = weights.safe_torch_load(path, map_location="cpu")
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise WeightsError(f"{path}: not a facefix SAMM training state")
        _check_architecture(state["samm_config"], self.samm.config, str(path))
        self.samm.load_state_dict(state["samm"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(state["rng"]["cuda"]))
        self.step = int(state["step"])
        if int(state["world_size"]) != self.dist.world_size:
            self.log(f"note: {path} was written by {state['world_size']} process(es), this run has "
                     f"{self.dist.world_size}: the data order differs from an uninterrupted run")
        self.log(f"resuming from {path} at step {self.step}")


def _check_architecture(saved: Mapping[str, object], current: Mapping[str, object], where: str) -> None:
    """UsageError when a SAMM config (``SAMM.config`` keys) differs from the one a run was trained with."""
    names = {"bias": "mod_bias"}  # SAMM.config key -> TrainConfig key
    for key, value in saved.items():
        if key in current and current[key] != value:
            raise UsageError(f"{where}: the run was trained with {names.get(key, key)} = {value!r}, the config says "
                             f"{current[key]!r}; use the run's config or a new run folder")


def split_files(data_dir: str | os.PathLike[str], config: TrainConfig) -> tuple[list[Path], list[Path]]:
    """(training files, validation files): the first ``val_images`` of ``val_dir`` if set, else the first
    ``val_images`` of the data folder, which are then held out of training."""
    files = list_images(data_dir)
    if config.val_dir is not None:
        return files, list_images(config.val_dir)[:config.val_images]
    if config.val_images >= len(files):
        raise InputError(f"{data_dir}: {len(files)} image(s) but val_images = {config.val_images} are held out "
                         "for validation; add images, set val_dir, or lower val_images")
    return files[config.val_images:], files[:config.val_images]


def train_samm(config: TrainConfig, data_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str],
               generator_path: str | os.PathLike[str] | None = None,
               encoder_path: str | os.PathLike[str] | None = None, resume: bool = False, device: str = "auto",
               offline: bool | None = None, log: LogFn = print) -> Path:
    """Train SAMM on a folder of FFHQ-aligned faces; returns the final ``samm_step{N}.pt`` (EMA weights).

    Args:
        config: see :class:`TrainConfig` / :func:`load_config`.
        data_dir: aligned face images (searched recursively), e.g. FFHQ ``images1024x1024``.
        run_dir: output folder (module docstring); must not hold a run unless ``resume``.
        generator_path: rosinality StyleGAN2 file; default: the e4e file's decoder.
        encoder_path: e4e checkpoint; default: the manifest's (downloaded to the Hugging Face cache).
        resume: continue from the newest ``state_step{N}.pt`` in ``run_dir``.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` (under torchrun: cuda:LOCAL_RANK or cpu).
        offline: never download (default: ``HF_HUB_OFFLINE``).
        log: where rank 0's progress lines go.
    Raises:
        InputError: empty or unreadable data folder, too few images for the held-out set.
        UsageError: a run folder that already holds a run (without ``resume``) or none (with it), or a config
            that contradicts the run being resumed.
        WeightsError: missing or wrong checkpoint files.
    """
    train_files, val_files = split_files(data_dir, config)
    run = Path(run_dir)
    state = latest_state(run) if run.is_dir() else None
    if resume and state is None:
        raise UsageError(f"{run}: no state_step*.pt to resume from")
    if not resume and state is not None:
        raise UsageError(f"{run}: already holds a training run ({state.name}); use --resume or another -o")
    if resume and (run / "config.json").is_file():
        # fail before loading the models; load_state checks again against the state file itself
        try:
            saved = json.loads((run / "config.json").read_text(encoding="utf-8")).get("samm", {})
        except (OSError, ValueError, AttributeError):
            saved = {}
        _check_architecture(saved, {"warp_scale": config.warp_scale, "cycle_align": config.cycle_align,
                                    "bias": config.mod_bias, "encoder_mode": config.encoder_mode},
                            str(run / "config.json"))
    info, dev, created = init_distributed(device)
    try:
        generator, encoder, latent_avg = load_models(encoder_path, generator_path, config.encoder_mode, offline)
        meta = {"data": str(Path(data_dir).resolve()), "encoder": str(encoder_path or "manifest:e4e"),
                "generator": str(generator_path or "encoder file's decoder")}
        trainer = SAMMTrainer(config, generator, encoder, latent_avg, train_files, val_files, run, dev, info,
                              log, meta)
        if state is not None:
            trainer.load_state(state)
        return trainer.train()
    finally:
        if created:
            dist.destroy_process_group()
