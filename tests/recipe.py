"""Deterministic "recipe" weights in the official checkpoint layouts.

The real checkpoints (StyleGAN2-FFHQ, e4e, ReStyle) cannot be shipped with tests, so tests, benchmarks and the
synthetic benchmark fill the official layouts with deterministic pseudo-random tensors. The rules are those of
``tests/golden/README.md`` (weight recipe): entry ``i`` (counting every entry of that state dict, in order) is
drawn from ``torch.randn(shape, generator=manual_seed(seed_base + i))`` and scaled per key family; constants (blur
kernels, BatchNorm step counters) are exact. With torch 2.13 on AVX2 CPUs the tensors are bit-identical to the
goldens'. This is test and benchmark scaffolding, not part of the facefix package.

Because the rules only look at key names and shapes, they work at any generator size (64 px test configs, 1024).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase

import torch
from torch import Tensor

GENERATOR_SEED_BASE = 1000
E4E_ENCODER_SEED_BASE = 5000
RESTYLE_ENCODER_SEED_BASE = 6000
G_LATENT_AVG_SEED = 900      # [512] latent_avg of a generator checkpoint
E4E_LATENT_AVG_SEED = 901    # [18,512] latent_avg of an e4e checkpoint
RESTYLE_LATENT_AVG_SEED = 902
SAMM_SEED_BASE = 7000

_BLUR = (1.0, 3.0, 3.0, 1.0)


def blur4_kernel() -> Tensor:
    """The StyleGAN up-sampling FIR: outer([1,3,3,1])/64*4, float32 [4,4] (sums to 4, the gain of a 2x upsample)."""
    k = torch.tensor(_BLUR, dtype=torch.float32)
    return torch.outer(k, k) / 64 * 4


def _randn(shape: Sequence[int], seed: int) -> Tensor:
    return torch.randn(list(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def generator_rule(key: str, shape: Sequence[int]) -> tuple[str, float, float]:
    """(kind, scale, offset) for a rosinality ``g_ema`` key (first matching rule of the golden README's table)."""
    rules = [
        ("*.kernel", "blur4", 0.0, 0.0),
        ("style.*.weight", "affine", 100.0, 0.0),
        ("style.*.bias", "affine", 10.0, 0.0),
        ("*modulation.weight", "affine", 0.5, 0.0),
        ("*modulation.bias", "affine", 0.125, 1.0),
        ("to_rgb*conv.weight", "affine", 0.25, 0.0),
        ("*conv.weight", "affine", 1.0, 0.0),
        ("*noise.weight", "affine", 0.125, 0.0),
        ("*activate.bias", "affine", 0.125, 0.0),
        ("to_rgb*.bias", "affine", 0.125, 0.0),
        ("input.input", "affine", 1.0, 0.0),
        ("noises.noise_*", "affine", 1.0, 0.0),
    ]
    for pattern, kind, scale, offset in rules:
        if fnmatchcase(key, pattern):
            return kind, scale, offset
    raise KeyError(f"no generator recipe rule for {key!r}")


def encoder_rule(key: str, shape: Sequence[int]) -> tuple[str, float, float]:
    """(kind, scale, offset) for an e4e / ReStyle encoder key without the ``encoder.`` prefix."""
    if key.endswith("num_batches_tracked"):
        return "zero_i64", 0.0, 0.0
    if key.endswith("running_var"):
        return "absaffine", 0.125, 1.0
    if key.endswith("running_mean"):
        return "affine", 0.125, 0.0
    if key.endswith(".weight") and len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        # The scale is the float32 value of 1/sqrt(fan_in): torch multiplies by that exact python float.
        return "affine", float(torch.tensor(1 / math.sqrt(fan_in), dtype=torch.float32)), 0.0
    if fnmatchcase(key, "styles.*.linear.weight"):
        return "affine", 1.0, 0.0
    if fnmatchcase(key, "styles.*.linear.bias"):
        return "affine", 0.125, 0.0
    if key.endswith(".weight") and len(shape) == 1:
        # PReLU slopes sit at index 2 of input_layer and of every bottleneck's res_layer.
        if key == "input_layer.2.weight" or fnmatchcase(key, "body.*.res_layer.2.weight"):
            return "affine", 0.0625, 0.25
        return "affine", 0.125, 1.0
    if key.endswith(".bias") and len(shape) == 1:
        return "affine", 0.125, 0.0
    raise KeyError(f"no encoder recipe rule for {key!r}")


def _f32(x: float) -> float:
    """The float32 value of ``x`` as a Python float (the recipe JSON's scales are float32 numbers)."""
    return float(torch.tensor(x, dtype=torch.float32))


# The AlignNet head's two InstanceNorm affines set the raw (dx, dy, alpha) statistics directly, so their offsets are
# per channel: flows near tanh's linear range, the mask logit spread wide (golden README, SAMM weight recipe).
_SAMM_HEAD_GAMMA = (0.25, 0.25, 1.75)
_SAMM_HEAD_BETA = (0.0, 0.0, 0.25)


def samm_rule(key: str, shape: Sequence[int]) -> tuple[str, float, float | tuple[float, ...]]:
    """(kind, scale, offset) for a SAMM ``params_ema`` key (``feats_conv.*``, ``modulation.*``)."""
    if key.endswith(".blur.kernel"):
        return "blur1", 0.0, 0.0
    if fnmatchcase(key, "modulation.*.noiseInj.weight"):
        return "affine", 0.125, 0.0
    if re.fullmatch(r"modulation\.\d+\.weight", key):
        return "affine", 0.125, 1.0
    if fnmatchcase(key, "feats_conv.*.bias"):
        return "affine", 0.125, 0.0
    if key.endswith(".weight") and len(shape) == 4:
        return "affine", _f32(1 / math.sqrt(shape[1] * shape[2] * shape[3])), 0.0
    if fnmatchcase(key, "*body.1.res_layer.4.*") or fnmatchcase(key, "*body.1.shortcut_layer.1.*"):
        return "affine", 0.0625, _SAMM_HEAD_GAMMA if key.endswith(".weight") else _SAMM_HEAD_BETA
    if fnmatchcase(key, "*res_layer.2.weight"):
        return "affine", 0.0625, 0.25
    if key.endswith(".weight") and len(shape) == 1:
        return "affine", 0.125, 1.0
    if key.endswith(".bias") and len(shape) == 1:
        return "affine", 0.125, 0.0
    raise KeyError(f"no SAMM recipe rule for {key!r}")


def make_tensor(index: int, seed_base: int, kind: str, scale: float, offset: float | tuple[float, ...],
                shape: Sequence[int]) -> Tensor:
    """One recipe tensor (float32, or int64 for ``zero_i64``); a tuple ``offset`` is per entry of dim 0."""
    if kind == "blur4":
        return blur4_kernel().reshape(shape)
    if kind == "blur1":
        return blur4_kernel().reshape(shape) / 4
    if kind == "zero_i64":
        return torch.zeros(list(shape), dtype=torch.int64)
    t = _randn(shape, seed_base + index)
    if kind == "absaffine":
        t = t.abs()
    if isinstance(offset, tuple):
        return t * scale + torch.tensor(offset, dtype=torch.float32).reshape(-1, *[1] * (t.ndim - 1))
    return t * scale + offset


def recipe_state_dict(entries: Iterable[tuple[str, Sequence[int]]], family: str,
                      seed_base: int | None = None) -> OrderedDict[str, Tensor]:
    """Fill a state-dict layout with recipe tensors.

    Args:
        entries: ``(key, shape)`` in state-dict order (e.g. ``model.state_dict()`` items or a layout JSON).
        family: ``"generator"`` (rosinality g_ema keys), ``"encoder"`` (e4e/ReStyle keys, no prefix) or ``"samm"``
            (SAMM ``params_ema`` keys without the swept ``generator.*`` ones).
        seed_base: defaults to 1000 for generators, 5000 (e4e) for encoders and 7000 for SAMM; ReStyle uses 6000.
    """
    rule = {"generator": generator_rule, "encoder": encoder_rule, "samm": samm_rule}[family]
    if seed_base is None:
        seed_base = {"generator": GENERATOR_SEED_BASE, "encoder": E4E_ENCODER_SEED_BASE,
                     "samm": SAMM_SEED_BASE}[family]
    out: OrderedDict[str, Tensor] = OrderedDict()
    for i, (key, shape) in enumerate(entries):
        kind, scale, offset = rule(key, tuple(shape))
        out[key] = make_tensor(i, seed_base, kind, scale, offset, tuple(shape))
    return out


def fill_module(module: torch.nn.Module, family: str, seed_base: int | None = None) -> torch.nn.Module:
    """Load recipe weights into ``module`` (strict), using its own state-dict order as the layout."""
    entries = [(k, tuple(v.shape)) for k, v in module.state_dict().items()]
    module.load_state_dict(recipe_state_dict(entries, family, seed_base), strict=True)
    return module


def build_recipe(factory: Callable[[], torch.nn.Module], family: str, seed_base: int | None = None) -> torch.nn.Module:
    """``factory()`` built on the meta device, then given recipe weights with ``assign=True``: each weight is
    allocated once, as a checkpoint load leaves it (benchmarks measure peak memory; ``fill_module`` holds the
    random init and the recipe copy at the same time). Returned in eval mode without gradients."""
    with torch.device("meta"):
        module = factory()
    entries = [(k, tuple(v.shape)) for k, v in module.state_dict().items()]
    module.load_state_dict(recipe_state_dict(entries, family, seed_base), strict=True, assign=True)
    return module.eval().requires_grad_(False)


def latent_avg(shape: Sequence[int], seed: int) -> Tensor:
    """``randn(shape, seed) * 0.5``: the recipe's latent_avg ([512] seed 900, [18,512] seeds 901 / 902)."""
    return _randn(shape, seed) * 0.5
