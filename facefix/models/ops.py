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
                     scale: float = LRELU_GAIN, inplace: bool = False) -> Tensor:
    """``leaky_relu(x + bias) * scale`` with the bias broadcast on dim 1.

    Args:
        x: [N, C, ...] float.
        bias: [C].
        inplace: overwrite ``x`` (same arithmetic, no temporaries; not for tensors autograd needs).
    Returns:
        [N, C, ...], same dtype as ``x``.
    """
    b = bias.view(1, -1, *[1] * (x.ndim - 2))
    if inplace:
        return F.leaky_relu_(x.add_(b), negative_slope).mul_(scale)
    return F.leaky_relu(x + b, negative_slope) * scale


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
    # Equal non-negative pads (the up-sampling convs' blur) are left to the conv: no padded copy of x (134 MB at
    # 1024 px in the generator's last level).
    conv_pad = p0 if p0 == p1 and p0 >= 0 else 0
    if not conv_pad:
        out = F.pad(out, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        hh, ww = out.shape[2:]
        out = out[:, :, max(-p0, 0): hh - max(-p1, 0), max(-p0, 0): ww - max(-p1, 0)]
    # One depthwise conv (groups = C) instead of the reference's [N*C,1,H,W] single-channel conv: the same
    # arithmetic per output pixel (bit-identical here), ~8x faster on CPU because oneDNN vectorises over channels.
    weight = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).expand(c, 1, kh, kw)
    out = F.conv2d(out, weight, padding=conv_pad, groups=c)
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



# -- Winograd F(2x2, 3x3) ---------------------------------------------------------------------------------------
# A 3x3 "same" convolution computed on 4x4 input tiles with 16 multiplies per 2x2 outputs instead of 36 (Lavin &
# Gray 2016): 2.25x fewer FLOPs in the channel GEMMs, which dominate for SAMM's wide AlignNet convs (2C = 256-1024
# channels). The transforms are exact small integer/half matrices, so the result differs from a direct conv only
# by float32 rounding (relative ~3e-6 here).
_WINO_BT = ((1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 1.0, 0.0, -1.0))
_WINO_AT = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))
_WINO_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# Input-tile elements per chunk (4 MB in float32): bounds the extra memory, and stays below the 8 MB threshold
# of facefix.runtime.mmap_large_blocks so the chunks' buffers are heap pages reused chunk after chunk instead of
# fresh mappings faulted in again each time (64 MB chunks cost ~1 s more per SAMM pass on 2 cores).
WINOGRAD_CHUNK_ELEMS = 1 << 20


def winograd_weight(weight: Tensor) -> Tensor:
    """3x3 conv weight [Co,Ci,3,3] -> transformed weight U [16,Co,Ci] (``G g G^T`` per filter)."""
    co, ci = weight.shape[:2]
    g = torch.tensor(_WINO_G, dtype=weight.dtype, device=weight.device)
    # vec(G g G^T) = (G kron G) vec(g): one [16,9] x [9,Co*Ci] GEMM (~30 ms at 1024x1024, 4x faster than einsum)
    return (torch.kron(g, g) @ weight.reshape(co * ci, 9).t()).view(16, co, ci)


def winograd_conv3x3(x: Tensor, u: Tensor) -> Tensor:
    """``F.conv2d(x, w, padding=1)`` (stride 1, no bias) via Winograd F(2x2, 3x3).

    Args:
        x: [N,Ci,H,W] float (any H, W >= 1).
        u: :func:`winograd_weight` of w, [16,Co,Ci].
    Returns:
        [N,Co,H,W].
    """
    n, c, h, w = x.shape
    co = u.shape[1]
    hp, wp = h + (h & 1), w + (w & 1)
    th, tw = hp // 2, wp // 2
    bt = torch.tensor(_WINO_BT, dtype=x.dtype, device=x.device)
    at = torch.tensor(_WINO_AT, dtype=x.dtype, device=x.device)
    k_in, k_out = torch.kron(bt, bt), torch.kron(at, at)  # [16,16], [4,16]
    xp = F.pad(x, [1, 1 + wp - w, 1, 1 + hp - h])
    out = x.new_empty(n, co, hp, wp)
    rows = max(1, WINOGRAD_CHUNK_ELEMS // max(1, 16 * c * n * tw))  # tile rows per chunk
    for r0 in range(0, th, rows):
        r1 = min(th, r0 + rows)
        # 4x4 tiles with stride 2 -> [16, Ci * N * T] (T tiles in this chunk), transformed by B^T d B
        d = xp[:, :, 2 * r0: 2 * r1 + 2].unfold(2, 4, 2).unfold(3, 4, 2)
        d = d.permute(4, 5, 1, 0, 2, 3).reshape(16, -1)
        v = (k_in @ d).view(16, c, -1)
        m = torch.bmm(u, v).view(16, -1)  # the channel GEMMs: [16,Co,Ci] x [16,Ci,N*T]
        y = (k_out @ m).view(2, 2, co, n, r1 - r0, tw)  # A^T m A: 2x2 outputs per tile
        out[:, :, 2 * r0: 2 * r1] = y.permute(3, 2, 4, 0, 5, 1).reshape(n, co, 2 * (r1 - r0), wp)
    return out[:, :, :h, :w]
