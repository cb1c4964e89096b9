"""W+ code files: ``.pt`` holding one float32 tensor [N,18,512] (the e4e / GAN Inverter convention).

Saved atomically (temp file + rename) and loaded with ``torch.load(weights_only=True)``, so a latent file from
someone else can never run code. Accepted on load: [18,512], [1,18,512], [N,18,512], or a dict with one of the
keys ``w_plus``/``latent``/``latents`` (some tools save dicts).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

from facefix.errors import InputError, WeightsError
from facefix.image_io import atomic_write_bytes
from facefix.weights import safe_torch_load


def save_latent(path: str | Path, w_plus: Tensor) -> None:
    """Write W+ [N,L,D] (or [L,D]) as a float32 CPU tensor, atomically."""
    if w_plus.ndim == 2:
        w_plus = w_plus[None]
    buf = io.BytesIO()
    torch.save(w_plus.detach().to("cpu", torch.float32).contiguous(), buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_latent(path: str | Path, n_latent: int = 18, style_dim: int = 512) -> Tensor:
    """Read a W+ file -> float32 [N,n_latent,style_dim]; one-line InputError for anything else."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such latent file")
    try:
        obj = safe_torch_load(path)
    except WeightsError as err:  # same one-line message, but a latent file is an input, not a checkpoint
        raise InputError(str(err).replace("checkpoint", "latent file")) from err
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("w_plus", "latent", "latents") if k in obj), None)
    if not isinstance(obj, Tensor):
        raise InputError(f"{path}: expected a W+ tensor [1,{n_latent},{style_dim}]")
    w = obj.float()
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or tuple(w.shape[1:]) != (n_latent, style_dim):
        raise InputError(f"{path}: W+ code has shape {list(obj.shape)}, expected [1,{n_latent},{style_dim}]")
    if not torch.isfinite(w).all():
        raise InputError(f"{path}: W+ code contains NaN or inf")
    return w
