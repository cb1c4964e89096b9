"""StyleGAN2 generator whose module tree *is* rosinality's ``g_ema`` checkpoint layout.

``Generator(1024, 512, 8, channel_multiplier=2).load_state_dict(ckpt["g_ema"])`` loads the official
``stylegan2-ffhq-config-f.pt`` strictly, with no renaming table: every attribute name below is a checkpoint key
(``style.1.weight``, ``convs.3.conv.modulation.bias``, ``noises.noise_7``, ...). Numerics follow the reference
exactly (``tests/golden``); only the API differs:

- ``mapping`` (z -> w), ``truncate`` and ``mix`` are separate methods, and ``synthesis`` takes a W+ code
  [N, n_latent, 512] directly, so no flag changes what a call returns.
- Noise is the checkpoint's fixed ``noises.noise_i`` buffers by default (deterministic); pass a
  ``torch.Generator`` for seeded random noise, or an explicit list. A generator loaded from a file without noise
  buffers refuses to synthesise with fixed noise instead of silently using its random initial buffers.
- ``out_res`` stops early: the skip architecture has a valid RGB image at every level.
- ``feature_hook(res, y)`` sees (and may replace) the output of each up-sampling conv before noise and bias, which
  is where SAMM aligns generated features to the encoder's.
- ``style_offsets`` edits StyleSpace (S): the per-layer style vectors, i.e. the outputs of every ModulatedConv2d's
  ``modulation`` affine (26 at 1024, toRGB included; :meth:`Generator.style_layers`), get an additive offset, as
  StyleCLIP's global directions do. ``s + ds`` is what the convolution is modulated with; nothing else changes.
- A batch in CPU inference runs its small levels once with shared weights and the large ones per sample
  (:data:`CPU_BATCH_SHARED_RES`): the same images as batch 1 within float rounding, cheaper per image.

Dimension letters: N batch, C channels, L W+ rows (n_latent, 18 at 1024), D style dim (512).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facefix.models.ops import fused_leaky_relu, make_kernel, upfirdn2d

FeatureHook = Callable[[int, Tensor], Tensor]
"""``hook(res, y) -> y'``: y [N,C,res,res] is an up-sampling conv's output before noise and bias."""

StyleOffsets = Sequence["Tensor | None"]
"""One entry per StyleSpace layer (:meth:`Generator.style_layers` order): None, or [N or 1, C] added to that layer's
style (the ``modulation`` output) before it modulates the convolution."""

BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)

CPU_BATCH_SHARED_RES = 64
"""In CPU inference of a batch (N > 1, no autograd, no feature hook), the levels up to this resolution run in the
shared-weight form over the whole batch, and the rest one sample at a time.

Why: below 128 px the maps are small and each sample's modulated filters large (512x512x3x3), so N small GEMMs
that each build and read their own filters lose to one batched GEMM over the shared weight. Above, the maps are
large (a 1024 px map is 134 MB) and there is nothing left to share: one sample at a time keeps a map in cache and
needs no copies into a batch tensor. 64 px was the best cut-off measured (``benchmarks/README.md``).
"""


def _cpu_inference(x: Tensor) -> bool:
    """On the CPU without autograd: where a batch runs split (per sample, or shared-weight levels) instead of as the
    reference's grouped convolution."""
    return x.device.type == "cpu" and not torch.is_grad_enabled()


class PixelNorm(nn.Module):
    """Normalise each vector to unit RMS over dim 1 (the mapping network's input step)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: ``x @ (W * scale)^T + b * lr_mul``, scale = lr_mul / sqrt(in).

    Args:
        in_dim, out_dim: feature sizes.
        bias_init: initial bias value (1 for modulation, so styles start near 1).
        lr_mul: learning-rate multiplier (0.01 in the mapping network); weights are stored divided by it.
        activation: apply fused lrelu(0.2)*sqrt(2) after the bias.
    """

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, in] -> [N, out]."""
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)

    def affine(self) -> tuple[Tensor, Tensor]:
        """The layer without activation as ``x @ A.T + b``: A [out,in] (= weight * scale), b [out] (= bias * lr_mul)."""
        return self.weight * self.scale, self.bias * self.lr_mul

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, lr_mul={self.lr_mul}, act={self.activation}"


class Blur(nn.Module):
    """FIR low-pass after a transposed conv. ``kernel`` buffer = outer([1,3,3,1])/64 * up**2 (a checkpoint key)."""

    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(BLUR_KERNEL) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR up-sampling of the RGB skip path (zero insertion + [1,3,3,1] filter, pad (2,1))."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(BLUR_KERNEL) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N,C,H,W] -> [N,C,2H,2W]."""
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution (StyleGAN2 weight demodulation), optionally with 2x transposed up-sampling.

    Args:
        in_channel, out_channel: channels.
        kernel_size: 3 for feature convs, 1 for ToRGB.
        style_dim: D, the W vector size.
        demodulate: normalise each output filter to unit norm (False for ToRGB).
        upsample: stride-2 transposed conv followed by the FIR blur (doubles H and W).
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            factor = 2
            p = len(BLUR_KERNEL) - factor - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def style(self, w: Tensor, offset: Tensor | None = None) -> Tensor:
        """This layer's StyleSpace vector: ``modulation(w)`` [N,I], plus ``offset`` ([N or 1, I]) when given."""
        style = self.modulation(w)
        return style if offset is None else style + offset

    def modulated_weight(self, w: Tensor, style_offset: Tensor | None = None) -> Tensor:
        """w: [N,D] -> per-sample weights [N, out, in, k, k] (modulated, demodulated if enabled).
        ``style_offset``: [N or 1, in] added to the style (see :meth:`style`)."""
        n = w.shape[0]
        style = self.style(w, style_offset).view(n, 1, self.in_channel, 1, 1)  # [N,1,I,1,1]
        weight = self.scale * self.weight * style                               # [N,O,I,k,k]
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)           # [N,O]
            weight = weight * demod.view(n, self.out_channel, 1, 1, 1)
        return weight

    def forward_shared(self, x: Tensor, w: Tensor, style_offset: Tensor | None = None) -> Tensor:
        """The same layer as :meth:`forward` in its shared-weight form (the reference's ``fused=False``):
        x: [N,in,H,W], w: [N,D] -> [N,out,H',W'].

        The styles scale the input channels, one convolution with the shared weight runs over the whole batch, and
        demodulation scales the output channels: ``demod[n,o] = rsqrt(sum_i (scale * style[n,i])**2 *
        sum_k weight[o,i,k]**2 + 1e-8)``, the norm of sample n's modulated filter o without building the filters.
        Equal to :meth:`forward` up to float rounding (< 1e-5 on a 1024 px image in [-1,1]). It pays off where
        the per-sample filters are large and the maps small, so that one batched GEMM replaces N small ones
        (``Generator.synthesis``); at batch 1 the two forms take the same time.
        """
        n = x.shape[0]
        style = self.style(w, style_offset) * self.scale                        # [N,I]
        weight = self.weight[0]                                                 # [O,I,k,k]
        x = x * style.view(n, self.in_channel, 1, 1)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt(style.square() @ weight.square().sum([2, 3]).t() + 1e-8)  # [N,O]
            out = out.mul_(demod.view(n, self.out_channel, 1, 1))
        return out

    def forward(self, x: Tensor, w: Tensor, style_offset: Tensor | None = None) -> Tensor:
        """x: [N,in,H,W], w: [N,D] -> [N,out,H',W'] with H' = 2H if upsample else H. ``style_offset``: [N or 1, in]
        added to the style (StyleSpace edit; see :meth:`style`).

        Each sample gets its own modulated filters, as in the reference's fused path, so the numerics equal the
        reference's. The batch runs as one grouped convolution (groups = N), as the reference does, except in CPU
        inference, where each sample runs its own convolution into a preallocated output: oneDNN's grouped
        convolution needs much more memory there and is not faster per image (``benchmarks/README.md``). Without
        a feature hook, ``Generator.synthesis`` splits a CPU batch itself (:data:`CPU_BATCH_SHARED_RES`); this loop
        serves a hooked batch (SAMM with ``--batch-size`` > 1 on a CPU).
        """
        n = x.shape[0]
        weight = self.modulated_weight(w, style_offset)
        if n == 1 or not _cpu_inference(x):
            return self._conv(x, weight)
        first = self._conv(x[:1], weight[:1])
        out = first.new_empty(n, *first.shape[1:])
        out[:1] = first
        for i in range(1, n):
            out[i:i + 1] = self._conv(x[i:i + 1], weight[i:i + 1])
        return out

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        """x [N,I,H,W] with per-sample weights [N,O,I,k,k] as one grouped convolution (groups = N) ->
        [N,O,H',W'] (transposed stride-2 conv and blur when upsampling)."""
        n, _, h, wd = x.shape
        k = self.kernel_size
        x = x.reshape(1, n * self.in_channel, h, wd)
        if self.upsample:
            # conv_transpose2d weights are [in, out/groups, k, k] per group.
            weight = weight.transpose(1, 2).reshape(n * self.in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=n)
            return self.blur(out.view(n, self.out_channel, out.shape[2], out.shape[3]))
        weight = weight.reshape(n * self.out_channel, self.in_channel, k, k)
        return F.conv2d(x, weight, padding=self.padding, groups=n).view(n, self.out_channel, h, wd)

    def extra_repr(self) -> str:
        return (f"{self.in_channel} -> {self.out_channel}, k={self.kernel_size}, upsample={self.upsample}, "
                f"demodulate={self.demodulate}")


class NoiseInjection(nn.Module):
    """``x + weight * noise``; ``weight`` is one learned scalar per layer, noise is [N,1,H,W]."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor, inplace: bool = False) -> Tensor:
        return x.add_(self.weight * noise) if inplace else x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """Per-channel bias followed by lrelu(0.2)*sqrt(2). ``bias`` [C] is the checkpoint's ``activate.bias``."""

    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        return fused_leaky_relu(x, self.bias, inplace=inplace)


class ConstantInput(nn.Module):
    """The learned 4x4 start tensor ``input`` [1,C,4,4], repeated over the batch."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, n: int) -> Tensor:
        return self.input.repeat(n, 1, 1, 1)


class StyledConv(nn.Module):
    """ModulatedConv2d -> (feature hook) -> noise -> bias + lrelu."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor, hook: Callable[[Tensor], Tensor] | None = None,
                shared: bool = False, style_offset: Tensor | None = None) -> Tensor:
        """x: [N,in,H,W], w: [N,D], noise: [N or 1,1,H',W'] -> [N,out,H',W'].
        ``shared``: use the conv's shared-weight form (:meth:`ModulatedConv2d.forward_shared`).
        ``style_offset``: [N or 1, in] StyleSpace offset of the conv."""
        out = self.conv.forward_shared(x, w, style_offset) if shared else self.conv(x, w, style_offset)
        if hook is not None:
            out = hook(out)
        # Without autograd, noise and activation overwrite tensors this call owns (the conv's output; a hook may
        # have kept its input, so not after a hook): each out-of-place step costs 134 MB more at 1024 px.
        inplace = not torch.is_grad_enabled()
        out = self.noise(out, noise, inplace=inplace and hook is None)
        return self.activate(out, inplace=inplace)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB, plus the up-sampled RGB of the previous level (skip path)."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None, shared: bool = False,
                style_offset: Tensor | None = None) -> Tensor:
        """x: [N,C,H,W], w: [N,D], skip: [N,3,H/2,W/2] or None -> [N,3,H,W]. ``shared``, ``style_offset`` as in
        StyledConv."""
        out = (self.conv.forward_shared(x, w, style_offset) if shared else self.conv(x, w, style_offset)) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class StyleLayer(NamedTuple):
    """One StyleSpace layer: its modulated conv, the W+ row that feeds it, and whether it is a ToRGB."""

    name: str           # module path: conv1, to_rgb1, convs.K, to_rgbs.K
    conv: ModulatedConv2d
    row: int            # W+ row
    torgb: bool

    @property
    def channels(self) -> int:
        """Style size = the conv's input channels."""
        return self.conv.in_channel


def n_latent_for(size: int) -> int:
    """W+ rows L of a ``size`` px generator, ``2 * log2(size) - 2`` (18 at 1024, 10 at 64): two per level, each
    ToRGB reading the row of the next level's first conv."""
    return 2 * int(math.log2(size)) - 2


def channels_for(channel_multiplier: int, channel_max: int = 512) -> dict[int, int]:
    """Feature channels per resolution (config-f at channel_multiplier=2), each capped at ``channel_max``.

    ``channel_max`` < 512 gives small generators (the tests' and the synthetic benchmark's 64 px, 32-channel one);
    512 is every official StyleGAN2 config.
    """
    cm = channel_multiplier
    full = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
            1024: 16 * cm}
    return {r: min(c, channel_max) for r, c in full.items()}


class Generator(nn.Module):
    """rosinality's StyleGAN2 generator (skip architecture), state dict = the official ``g_ema``.

    Args:
        size: output resolution in px (power of two, 64 for tests, 1024 for FFHQ config-f).
        style_dim: D, size of z and w (512).
        n_mlp: mapping-network depth (8).
        channel_multiplier: 2 for config-f.
        channel_max: cap on every level's channels (512 in the official configs; smaller for cheap test models).
        lr_mlp: mapping learning-rate multiplier (0.01); affects how weights are stored.

    Attributes read by callers: ``size``, ``log_size``, ``num_layers`` (noise inputs, 17 at 1024), ``n_latent``
    (W+ rows, 18 at 1024), ``channels``, ``has_fixed_noise``.
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 lr_mlp: float = 0.01, channel_max: int = 512):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        self.size, self.style_dim = size, style_dim
        self.n_mlp, self.channel_multiplier, self.channel_max = n_mlp, channel_multiplier, channel_max
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])
        self.channels = channels_for(channel_multiplier, channel_max)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty, kept because the reference has it (no keys)
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel
        self.n_latent = n_latent_for(size)
        # False when a checkpoint without noise buffers was loaded: the buffers then hold init values, not data.
        self.has_fixed_noise = True

    # -- latent space ---------------------------------------------------------------------------------------
    def mapping(self, z: Tensor) -> Tensor:
        """z: [N,D] Gaussian -> w: [N,D] (PixelNorm + n_mlp EqualLinear layers)."""
        return self.style(z)

    @staticmethod
    def truncate(w: Tensor, psi: float, w_avg: Tensor) -> Tensor:
        """Truncation trick ``w_avg + psi * (w - w_avg)``; w: [N,D] or [N,L,D], w_avg broadcastable ([1,D])."""
        return w_avg + psi * (w - w_avg)

    def broadcast(self, w: Tensor) -> Tensor:
        """w: [N,D] -> W+ [N,L,D] (the same w on every row); a [N,L,D] input is returned as is."""
        return w if w.ndim == 3 else w.unsqueeze(1).repeat(1, self.n_latent, 1)

    def mix(self, w1: Tensor, w2: Tensor, inject_index: int) -> Tensor:
        """Style mixing: rows [0, inject_index) from w1 [N,D], the rest from w2 [N,D] -> W+ [N,L,D]."""
        if not 0 < inject_index < self.n_latent:
            raise ValueError(f"inject_index must be in 1..{self.n_latent - 1}, got {inject_index}")
        return torch.cat([w1.unsqueeze(1).repeat(1, inject_index, 1),
                          w2.unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], dim=1)

    # -- StyleSpace -----------------------------------------------------------------------------------------
    def style_layers(self) -> list[StyleLayer]:
        """The StyleSpace layers in synthesis order: conv1, to_rgb1, then per level its up-sampling conv, conv and
        ToRGB (26 at 1024, 14 at 64). W+ rows: 0, 1, then 2k+1, 2k+2, 2k+3 for level k = 0, 1, ..."""
        layers = [StyleLayer("conv1", self.conv1.conv, 0, False), StyleLayer("to_rgb1", self.to_rgb1.conv, 1, True)]
        for k, to_rgb in enumerate(self.to_rgbs):
            layers += [StyleLayer(f"convs.{2 * k}", self.convs[2 * k].conv, 2 * k + 1, False),
                       StyleLayer(f"convs.{2 * k + 1}", self.convs[2 * k + 1].conv, 2 * k + 2, False),
                       StyleLayer(f"to_rgbs.{k}", to_rgb.conv, 2 * k + 3, True)]
        return layers

    def styles(self, w_plus: Tensor) -> list[Tensor]:
        """W+ [N,L,D] (or w [N,D]) -> the StyleSpace vectors, one [N,C] per :meth:`style_layers` entry."""
        w_plus = self.broadcast(w_plus)
        return [layer.conv.style(w_plus[:, layer.row]) for layer in self.style_layers()]

    # -- synthesis ------------------------------------------------------------------------------------------
    def fixed_noise(self) -> list[Tensor]:
        """The checkpoint's noise buffers, [1,1,r,r] for r = 4, 8, 8, 16, 16, ..., size, size."""
        if not self.has_fixed_noise:
            raise RuntimeError("this generator's checkpoint has no noise buffers: pass explicit noise or a "
                               "torch.Generator for seeded random noise")
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def random_noise(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Fresh N(0,1) noise [N,1,r,r] per layer, drawn from ``generator`` (CPU generators are portable)."""
        dev = self.input.input.device
        gen_dev = generator.device if generator is not None else dev
        shapes = [getattr(self.noises, f"noise_{i}").shape for i in range(self.num_layers)]
        return [torch.randn(n, 1, s[2], s[3], generator=generator, device=gen_dev).to(dev) for s in shapes]

    def synthesis(self, w_plus: Tensor, noise: Sequence[Tensor] | None = None,
                  generator: torch.Generator | None = None, out_res: int | None = None,
                  feature_hook: FeatureHook | None = None, style_offsets: StyleOffsets | None = None) -> Tensor:
        """W+ (and optional StyleSpace offsets) -> image.

        Args:
            w_plus: [N,L,D] (a [N,D] w is broadcast to all rows).
            noise: explicit per-layer noise ([N or 1,1,r,r] each, ``num_layers`` of them). Default: the
                checkpoint's fixed buffers, or random noise from ``generator`` when one is given.
            generator: RNG for random noise (``--seed``); ignored when ``noise`` is given.
            out_res: stop at this resolution (power of two, 4..size); the RGB skip image of that level is returned.
            feature_hook: ``hook(res, y) -> y'`` applied to each up-sampling conv output [N,C,res,res] before noise
                and bias (res = 8..size). Return ``y`` unchanged to only read it.
            style_offsets: one entry per :meth:`style_layers` layer, None or [N or 1, C] added to that layer's
                style (StyleSpace edit). Default: no offsets (the W+ code alone).
        Returns:
            image [N,3,out_res,out_res], float, roughly in [-1,1] (not clamped).
        """
        w_plus = self.broadcast(w_plus)
        n, rows, _ = w_plus.shape
        if rows != self.n_latent:
            raise ValueError(f"w_plus has {rows} rows, this {self.size}px generator needs {self.n_latent}")
        out_res = self.size if out_res is None else out_res
        if out_res < 4 or out_res > self.size or out_res & (out_res - 1):
            raise ValueError(f"out_res must be a power of two in 4..{self.size}, got {out_res}")
        if noise is None:
            noise = self.random_noise(n, generator) if generator is not None else self.fixed_noise()
        if len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise tensors, got {len(noise)}")
        ds = self._check_offsets(style_offsets, n)

        # A CPU inference batch shares the small levels' weights, then goes on one sample at a time (see
        # CPU_BATCH_SHARED_RES); anything else (batch 1, autograd, GPUs, a feature hook) runs as the reference.
        split = n > 1 and feature_hook is None and _cpu_inference(w_plus)
        shared_res = min(out_res, CPU_BATCH_SHARED_RES) if split else out_res
        out = self.conv1(self.input(n), w_plus[:, 0], noise[0], shared=split, style_offset=ds[0])
        skip = self.to_rgb1(out, w_plus[:, 1], shared=split, style_offset=ds[1])
        out, skip = self._levels(out, skip, w_plus, noise, shared_res, feature_hook, shared=split, ds=ds)
        if shared_res == out_res:
            return skip

        def one(t: Tensor | None, k: int) -> Tensor | None:  # sample k of a per-sample tensor; shared ones as is
            return t[k:k + 1] if t is not None and t.shape[0] > 1 else t

        return torch.cat([self._levels(out[k:k + 1], skip[k:k + 1], w_plus[k:k + 1], [one(nz, k) for nz in noise],
                                       out_res, ds=[one(d, k) for d in ds])[1]
                          for k in range(n)])

    def _check_offsets(self, style_offsets: StyleOffsets | None, n: int) -> list[Tensor | None]:
        """Validate StyleSpace offsets for a batch of n -> one entry (None or [N or 1, C]) per style layer."""
        layers = self.style_layers()
        if style_offsets is None:
            return [None] * len(layers)
        if len(style_offsets) != len(layers):
            raise ValueError(f"expected {len(layers)} style offsets (one per StyleSpace layer), "
                             f"got {len(style_offsets)}")
        for layer, d in zip(layers, style_offsets, strict=True):
            if d is not None and (d.ndim != 2 or d.shape[0] not in (1, n) or d.shape[1] != layer.channels):
                raise ValueError(f"style offset for {layer.name} has shape {list(d.shape)}, expected "
                                 f"[1 or {n}, {layer.channels}]")
        return list(style_offsets)

    def _levels(self, out: Tensor, skip: Tensor, w_plus: Tensor, noise: Sequence[Tensor], out_res: int,
                feature_hook: FeatureHook | None = None, shared: bool = False,
                ds: Sequence[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
        """Run the levels from the input's resolution r up to ``out_res``: features out [N,C,r,r] and RGB skip
        [N,3,r,r] in, the same two at ``out_res`` out. ``shared``: the convs' shared-weight form. ``ds``: the
        StyleSpace offsets of every style layer (None entries: no offset)."""
        res = out.shape[-1]
        while res < out_res:
            level = int(math.log2(res)) - 2  # 4 px -> the first up-sampling level (8 px)
            res *= 2
            i = 1 + 2 * level  # W+ row of this level's up-sampling conv
            j = 2 + 3 * level  # its StyleSpace layer (conv1 and to_rgb1 come first)
            up, conv = self.convs[2 * level], self.convs[2 * level + 1]
            d_up, d_conv, d_rgb = (None, None, None) if ds is None else ds[j:j + 3]
            hook = None if feature_hook is None else (lambda y, r=res: feature_hook(r, y))
            out = up(out, w_plus[:, i], noise[i], hook, shared=shared, style_offset=d_up)
            out = conv(out, w_plus[:, i + 1], noise[i + 1], shared=shared, style_offset=d_conv)
            skip = self.to_rgbs[level](out, w_plus[:, i + 2], skip, shared=shared, style_offset=d_rgb)
        return out, skip

    def forward(self, w_plus: Tensor, noise: Sequence[Tensor] | None = None,
                generator: torch.Generator | None = None, out_res: int | None = None) -> Tensor:
        """Same as :meth:`synthesis` (W+ in, image out)."""
        return self.synthesis(w_plus, noise=noise, generator=generator, out_res=out_res)

    def extra_repr(self) -> str:
        return (f"size={self.size}, style_dim={self.style_dim}, n_mlp={self.n_mlp}, "
                f"channel_multiplier={self.channel_multiplier}, channel_max={self.channel_max}, "
                f"n_latent={self.n_latent}")
