"""SAMM (Spatial Alignment and Masking Module) of "Out-of-domain GAN inversion via Invertibility Decomposition".

The module tree *is* the official checkpoint's ``params_ema`` layout (``feats_conv.{0..3}``,
``modulation.{0..3}.alignment.body.body.{0,1}.*``), so an official ``net_g_<iter>.pth`` loads strictly once its
swept-in ``generator.*`` keys are set aside (``facefix.checkpoints.load_samm``). The forward pass follows
the official code (AbnerVictor/OOD-GAN-inversion), including the quirks the trained weights depend on: the non-identity
zero-flow grid (``linspace(-1, 1, r)`` sampled with ``align_corners=False``), the zero-padded asymmetric blur, and the
bicubic ``align_corners=True`` fusion of the coarser mask.

Where it sits: the generator's up-sampling convs at 32, 64, 128 and 256 px hand their pre-noise output G to
:meth:`SAMM.feature_hook`; the block at that resolution returns the aligned feature y' (noise, bias and activation
follow as usual) and records its align tensor (dx, dy, alpha). The four alphas compose to a 1024 mask A, and the
output is ``A * x + (1 - A) * G_samm`` (alpha = 1: out-of-domain, the input's pixels are kept).

Index conventions (the official code's): ``modulation`` index 0..3 <-> resolution 256, 128, 64, 32; ``feats_conv`` index
i projects the encoder tap ``FEATURE_TAPS[i]`` to that same resolution.

Dimension letters: N batch, C channels of a level (512, 512, 256, 128 for 32..256 px), r the level's resolution.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facefix.models.ops import make_kernel, upfirdn2d, winograd_conv3x3, winograd_weight
from facefix.models.stylegan2 import FeatureHook, Generator, channels_for

RESOLUTIONS = (256, 128, 64, 32)
"""Resolution of ``modulation.i`` / ``feats_conv.i`` for i = 0..3 (the official index order)."""
TAP_FOR_RESOLUTION = {256: "input_layer", 128: "body2", 64: "body6", 32: "body20"}
"""Encoder tap (``facefix.models.encoders.FEATURE_TAPS``) that feeds each level."""
TAP_CHANNELS = {"input_layer": 64, "body2": 64, "body6": 128, "body20": 256}
ENCODER_MODES = {
    # fpn_upsample: e4e's FPN resize; input_resize: how the 1024 crop becomes the 256 encoder input.
    "official": {"fpn_upsample": "bicubic", "input_resize": "bilinear"},  # the SAMM repository's vendored e4e
    "e4e": {"fpn_upsample": "bilinear", "input_resize": "pil"},  # encoder4editing as published
}
"""Encoder modes a SAMM checkpoint can be trained with (the official code's ``encoder_mode``)."""


def generator_channels(channel_multiplier: int = 2, channel_max: int = 512) -> dict[int, int]:
    """Channels of the StyleGAN2 feature maps SAMM sees, per resolution (config-f: 512, 512, 256, 128)."""
    ch = channels_for(channel_multiplier, channel_max)
    return {r: ch[r] for r in RESOLUTIONS}


WINOGRAD_MIN_CHANNELS = 64


def _winograd_enabled() -> bool:
    return os.environ.get("FACEFIX_WINOGRAD", "1") != "0"


class Conv3x3(nn.Conv2d):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` (same parameters and keys) that runs inference on CPU with
    Winograd F(2x2, 3x3) (``facefix.models.ops.winograd_conv3x3``).

    Why: the AlignNet convs are ~97% of SAMM's ~1 TFLOP per 1024 photo; Winograd does their channel GEMMs with
    2.25x fewer FLOPs. It only differs from ``F.conv2d`` by float32 rounding (the SAMM goldens hold at their
    tolerances). Training (grad enabled) and GPUs, whose cuDNN already picks fast algorithms, use ``F.conv2d``;
    ``FACEFIX_WINOGRAD=0`` turns it off.

    The transformed weight (16/9 the size of the weight) is cached for the cycles of one SAMM level and dropped
    by :meth:`release` when the level is done: kept for all four levels it would hold ~310 MB of memory, while
    recomputing it costs ~30 ms per 1024-channel conv and photo.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)
        self._wino: tuple[tuple[int, int, torch.device], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        # Thin convs (AlignNet's 2C -> 3 head) are memory-bound: the tile transforms would cost more than they save.
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 or \
                min(self.in_channels, self.out_channels) < WINOGRAD_MIN_CHANNELS or not _winograd_enabled():
            return super().forward(x)
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        if self._wino is None or self._wino[0] != key:  # transformed once per weight version
            self._wino = (key, winograd_weight(self.weight.detach()))
        y = winograd_conv3x3(x, self._wino[1])
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def release(self) -> None:
        """Drop the cached Winograd weight (recomputed on the next call)."""
        self._wino = None


class BottleneckIR(nn.Module):
    """IR residual unit with InstanceNorm (the pSp ``bottleneck_IR`` with ``bn='InstanceNorm'``), stride 1.

    res_layer: IN(affine) -> conv3x3 -> PReLU -> conv3x3 -> IN(affine); shortcut: identity when the channel count is
    kept (the official ``MaxPool2d(1, 1)``, parameter-free), else conv1x1 -> IN(affine). Output = res + shortcut.
    """

    def __init__(self, in_channel: int, depth: int, bias: bool = False):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.Identity()
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, bias=bias),
                                                nn.InstanceNorm2d(depth, affine=True))
        self.res_layer = nn.Sequential(
            nn.InstanceNorm2d(in_channel, affine=True),
            Conv3x3(in_channel, depth, bias),
            nn.PReLU(depth),
            Conv3x3(depth, depth, bias),
            nn.InstanceNorm2d(depth, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AlignNet(nn.Module):
    """(G, E) [N,C,H,W] each -> raw align logits [N,3,H,W]: Body(cat[IN(G) - IN(E), IN(E)]), 2C -> 2C -> 3."""

    def __init__(self, channels: int, bias: bool = False):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)  # non-affine, no running stats: no state-dict entries
        self.body = nn.Sequential(BottleneckIR(2 * channels, 2 * channels, bias),
                                  BottleneckIR(2 * channels, 3, bias))

    def forward(self, gen_n: Tensor, enc_n: Tensor) -> Tensor:
        """Takes already-normalised inputs: IN(E) is the same on every cycle, so the caller computes it once."""
        return self.body(torch.cat([gen_n - enc_n, enc_n], dim=1))


class SAMMBlur(nn.Module):
    """outer([1,3,3,1])/64 FIR, zero padding (2, 1): same size out, attenuated at the top/left borders."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", make_kernel([1.0, 3.0, 3.0, 1.0]))

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=(2, 1))


class SPMWarp(nn.Module):
    """The official ``SPM_Warp``: ``body`` (AlignNet) and ``blur``; holds no state besides them."""

    def __init__(self, channels: int, bias: bool = False):
        super().__init__()
        self.body = AlignNet(channels, bias)
        self.blur = SAMMBlur()


class _Unused(nn.Module):
    """Holds the official ``noiseInj.weight`` scalar (never read by the forward pass) so the file loads strictly."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.zeros(1))


def base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The official zero-flow grid [1,H,W,2] (x, y): ``linspace(-1, 1, n)`` per axis, used with
    ``align_corners=False``, so it is *not* an identity warp (slight zoom, half-zero borders): trained behaviour."""
    ys = torch.linspace(-1, 1, h, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


def warp(gen: Tensor, align: Tensor) -> Tensor:
    """Resample G by the align tensor's flow, only inside its mask.

    Args:
        gen: G [N,C,H,W].
        align: [N,3,H,W] (dx, dy in normalised grid units, alpha in [0,1]).
    Returns:
        ``alpha * grid_sample(G, base + flow) + (1 - alpha) * G`` [N,C,H,W].
    """
    h, w = gen.shape[2:]
    grid = base_grid(h, w, gen.device, gen.dtype) + align[:, :2].permute(0, 2, 3, 1)
    warped = F.grid_sample(gen, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    alpha = align[:, 2:3]
    return alpha * warped + (1 - alpha) * gen


def fuse_masks(coarse: Tensor, fine: Tensor) -> Tensor:
    """The official ``new_PRM``: ``coarse * (fine + 1 - coarse)``, clipped to [0,1]. A coarse alpha of 0 gates the
    fine one off; a coarse alpha of 1 passes the fine one through."""
    return (coarse * (fine + 1 - coarse)).clamp(0, 1)


class SAMMBlock(nn.Module):
    """One level's spatial alignment and masking (the official ``StyledscaleNshfitBlock`` with ``btn=None``).

    Args:
        channels: C of the generator feature at this level.
        warp_scale: s, flow bound in normalised grid units (0.08 = 4% of the width).
        cycle_align: K, AlignNet cycles (weights shared), 1..3.
        bias: conv biases (``mod_bias``; off in the released E4E config).
    """

    def __init__(self, channels: int, warp_scale: float = 0.08, cycle_align: int = 2, bias: bool = False):
        super().__init__()
        self.channels, self.warp_scale, self.cycle_align = channels, warp_scale, cycle_align
        self.register_buffer("weight", torch.ones(1))  # official `weight`: frozen and unused
        self.alignment = SPMWarp(channels, bias)
        self.noiseInj = _Unused()

    def predict(self, gen_n: Tensor, enc_n: Tensor) -> Tensor:
        """One cycle: normalised (G, E) -> blurred (tanh*s, tanh*s, sigmoid) align [N,3,H,W]."""
        raw = self.alignment.body(gen_n, enc_n)
        a = torch.cat([torch.tanh(raw[:, :2]) * self.warp_scale, torch.sigmoid(raw[:, 2:3])], dim=1)
        return self.alignment.blur(a)

    def forward(self, gen: Tensor, enc: Tensor, prev: Tensor | None = None,
                cycle_align: int | None = None) -> tuple[Tensor, Tensor]:
        """Align G to E and mask what cannot be aligned.

        Args:
            gen: G [N,C,H,W], the up-sampling conv output (before noise and bias).
            enc: E [N,C,H,W], the projected encoder feature.
            prev: the coarser level's align tensor [N,3,H/2,W/2] (only its alpha is used), or None at 32 px.
            cycle_align: overrides K for this call.
        Returns:
            (y' [N,C,H,W], align [N,3,H,W] = (dx, dy, alpha) after the cycles and the fusion with ``prev``).
        """
        k_cycles = self.cycle_align if cycle_align is None else cycle_align
        if k_cycles < 1:
            raise ValueError(f"cycle_align must be >= 1, got {k_cycles}")
        norm = self.alignment.body.norm
        enc_n = norm(enc)
        s = self.warp_scale
        y, align = gen, None
        for k in range(k_cycles):
            a = self.predict(norm(y), enc_n)
            if align is None:
                align = a
            else:
                flow = (align[:, :2] + a[:, :2]).clamp(-s, s)
                align = torch.cat([flow, fuse_masks(align[:, 2:3], a[:, 2:3])], dim=1)
            if k == k_cycles - 1 and prev is not None:
                up = F.interpolate(prev[:, 2:3], size=gen.shape[2:], mode="bicubic", align_corners=True)
                align = torch.cat([align[:, :2], fuse_masks(up, align[:, 2:3])], dim=1)
            y = warp(gen, align)  # always resamples the original G, never the previous warp
        for m in self.alignment.modules():
            if isinstance(m, Conv3x3):
                m.release()
        assert align is not None
        return y, align


@dataclass
class SAMMTrace:
    """What one SAMM-driven synthesis produced besides the image: the align tensor of every level.

    aligns: resolution -> [N,3,r,r] (dx, dy, alpha), filled in generator order 32 -> 256.
    """

    aligns: dict[int, Tensor] = field(default_factory=dict)


class SAMM(nn.Module):
    """The four SAMM levels and the four encoder-feature projections (official ``params_ema`` layout).

    Args:
        channel_multiplier: the generator's (2 for FFHQ config-f), sets C per level.
        channel_max: the generator's channel cap (512 in every official config; see :meth:`for_generator`).
        warp_scale, cycle_align, bias: see :class:`SAMMBlock` (released E4E config: 0.08, 2, False).
        encoder_mode: ``official`` (bicubic e4e FPN, non-antialiased bilinear 1024->256 input, the setting the
            official weights were trained with) or ``e4e`` (encoder4editing as published); a checkpoint records it.
    """

    def __init__(self, channel_multiplier: int = 2, warp_scale: float = 0.08, cycle_align: int = 2,
                 bias: bool = False, encoder_mode: str = "official", channel_max: int = 512):
        super().__init__()
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode must be one of {', '.join(ENCODER_MODES)}, got {encoder_mode!r}")
        if not 1 <= cycle_align <= 3:
            raise ValueError(f"cycle_align must be 1, 2 or 3, got {cycle_align}")
        ch = generator_channels(channel_multiplier, channel_max)
        self.config = {"channel_multiplier": channel_multiplier, "warp_scale": warp_scale,
                       "cycle_align": cycle_align, "bias": bias, "encoder_mode": encoder_mode}
        if channel_max != 512:  # recorded only when set, so files of full-size SAMMs keep their config
            self.config["channel_max"] = channel_max
        self.feats_conv = nn.ModuleList(nn.Conv2d(TAP_CHANNELS[TAP_FOR_RESOLUTION[r]], ch[r], 1) for r in RESOLUTIONS)
        self.modulation = nn.ModuleList(SAMMBlock(ch[r], warp_scale, cycle_align, bias) for r in RESOLUTIONS)

    @classmethod
    def for_generator(cls, generator: Generator, **kwargs: object) -> SAMM:
        """A SAMM whose level channels are ``generator``'s (its channel multiplier and cap); ``kwargs`` as
        :class:`SAMM` (warp_scale, cycle_align, bias, encoder_mode)."""
        return cls(generator.channel_multiplier, channel_max=generator.channel_max, **kwargs)  # type: ignore[arg-type]

    def matches(self, generator: Generator) -> bool:
        """True when every level's channels equal ``generator``'s at that resolution."""
        return all(self.block(r).channels == generator.channels[r] for r in RESOLUTIONS)

    @property
    def encoder_mode(self) -> str:
        return self.config["encoder_mode"]

    def block(self, res: int) -> SAMMBlock:
        return self.modulation[RESOLUTIONS.index(res)]

    def project(self, features: Mapping[str, Tensor], levels: Sequence[int] = RESOLUTIONS) -> dict[int, Tensor]:
        """Encoder taps -> E per level.

        Args:
            features: the encoder's taps (``input_layer`` [N,64,256,256], ``body2`` [N,64,128,128],
                ``body6`` [N,128,64,64], ``body20`` [N,256,32,32]); other keys are ignored.
            levels: the resolutions to project (default all four); only their taps are needed, so a generator
                smaller than 256 px and an encoder with only the coarse taps (``SmallEncoder``) work together.
        Returns:
            resolution -> E [N,C,r,r] for each of ``levels``.
        """
        missing = [TAP_FOR_RESOLUTION[r] for r in levels if TAP_FOR_RESOLUTION[r] not in features]
        if missing:
            raise ValueError(f"SAMM needs the encoder taps {', '.join(missing)} (encode with return_features=True)")
        return {r: conv(features[TAP_FOR_RESOLUTION[r]])
                for r, conv in zip(RESOLUTIONS, self.feats_conv, strict=True) if r in levels}

    def feature_hook(self, projected: Mapping[int, Tensor], trace: SAMMTrace,
                     cycle_align: int | None = None) -> FeatureHook:
        """A generator ``feature_hook`` that runs the SAMM blocks and records their align tensors in ``trace``.

        Args:
            projected: :meth:`project` output; its batch must match the W+ batch.
            trace: filled with resolution -> align [N,3,r,r].
            cycle_align: overrides the configured K.
        """
        def hook(res: int, y: Tensor) -> Tensor:
            if res not in projected:
                return y
            y, align = self.block(res)(y, projected[res], trace.aligns.get(res // 2), cycle_align)
            trace.aligns[res] = align
            return y

        return hook

    @staticmethod
    def replay_hook(aligns: Mapping[int, Tensor]) -> FeatureHook:
        """A generator ``feature_hook`` that re-applies stored align tensors (``--mask-from original``): the warp
        and mask of an earlier pass, without running the AlignNets (one SAMM pass per photo, then only warps)."""
        def hook(res: int, y: Tensor) -> Tensor:
            return warp(y, aligns[res]) if res in aligns else y

        return hook


def compose_mask(aligns: Mapping[int, Tensor], size: int = 1024) -> Tensor:
    """The final invertibility mask A from the per-level alphas (as the official code composes it).

    Bilinear (``align_corners=False``) up-sampling of each alpha to ``size``, then A <- up(alpha_32) and
    A <- A * (up(alpha_r) + 1 - A) for r = 64, 128, 256; clipped to [0,1] once at the end.

    Args:
        aligns: resolution -> [N,3,r,r]; missing levels (progressive training) are skipped.
    Returns:
        A [N,1,size,size] in [0,1], 1 = out-of-domain (take the input).
    """
    mask = None
    for res in sorted(aligns):
        up = F.interpolate(aligns[res][:, 2:3], size=(size, size), mode="bilinear", align_corners=False)
        mask = up if mask is None else mask * (up + 1 - mask)
    if mask is None:
        raise ValueError("no SAMM level produced an align tensor")
    return mask.clamp(0, 1)


def blend(x: Tensor, gen: Tensor, mask: Tensor) -> Tensor:
    """``mask * x + (1 - mask) * gen``: x, gen [N,3,S,S] in [-1,1], mask [N,1,S,S] in [0,1] (1 = keep input)."""
    return mask * x + (1 - mask) * gen
