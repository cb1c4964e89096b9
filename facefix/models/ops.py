"""Low-level StyleGAN2 ops in plain PyTorch (no compiled extension): FIR resampling and fused bias + leaky ReLU.

Both ops reproduce the CUDA kernels of rosinality/stylegan2-pytorch and encoder4editing bit-for-bit on CPU (the
golden README checks the reference's stand-ins against a port of ``upfirdn2d_kernel.cu``). Unlike those repositories,
nothing here compiles at import time, so a CPU-only machine can import and run every model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps activation variance roughly constant through lrelu(0.2)


def fused_leaky_relu(x: Tensor, bias: Tensor, negative_slope: float = LRELU_SLOPE,
                     scale: float = LRELU_GAIN) -> Tensor:
    """``leaky_relu(x + bias) * scale`` with the bias broadcast on dim 1.

    Args:
        x: [N, C, ...] float.
        bias: [C].
    Returns:
        [N, C, ...], same dtype as ``x``.
    """
    rest = [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(1, -1, *rest), negative_slope) * scale


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample, pad, FIR-filter and downsample a batch of images (the StyleGAN2 resampling op).

    Steps, in order (the CUDA kernel's definition):
      1. upsample by inserting ``up - 1`` zeros after every pixel along x and y;
      2. pad with zeros, ``pad = (p0, p1)`` before/after on both axes (negative values crop);
      3. correlate with ``flip(kernel)``, i.e. true convolution with ``kernel`` (valid region only);
      4. keep every ``down``-th pixel.

    Args:
        x: [N, C, H, W] float.
        kernel: [kh, kw] float FIR (on the same device and dtype as ``x``).
        up, down: integer factors, same on both axes.
        pad: (p0, p1) padding in upsampled pixels, same on both axes.
    Returns:
        [N, C, (H*up + p0 + p1 - kh) // down + 1, (W*up + p0 + p1 - kw) // down + 1].
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    p0, p1 = pad
    out = x
    if up > 1:
        # Zero insertion as a view: [N,C,H,1,W,1] padded to [N,C,H,up,W,up].
        out = F.pad(out.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    out = F.pad(out, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        hh, ww = out.shape[2:]
        out = out[:, :, max(-p0, 0): hh - max(-p1, 0), max(-p0, 0): ww - max(-p1, 0)]
    # One depthwise conv (groups = C) instead of the reference's [N*C,1,H,W] single-channel conv: the same
    # arithmetic per output pixel (bit-identical here), ~8x faster on CPU because oneDNN vectorises over channels.
    weight = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).expand(c, 1, kh, kw)
    out = F.conv2d(out, weight, groups=c)
    if down > 1:
        out = out[:, :, ::down, ::down]
    return out


def make_kernel(k: list[float] | tuple[float, ...]) -> Tensor:
    """Separable FIR from a 1-D tap list: outer(k, k) normalised to sum 1. float32 [len(k), len(k)]."""
    # Always on the CPU, even under a ``torch.device("meta")`` context (checkpoint loading builds modules there):
    # a constant needs real values, and meta arithmetic would pull in torch's slow-importing Python decompositions.
    t = torch.tensor(k, dtype=torch.float32, device="cpu")
    t = t[None, :] * t[:, None] if t.ndim == 1 else t
    return t / t.sum()

