"""FacefixPipeline: encoder -> W+ -> generator, as named stages callable one by one.

As in diffusers, the constructor takes ready models and resolves nothing; :meth:`FacefixPipeline.from_pretrained`
finds the files (paths, manifest, Hugging Face cache) and loads them. ``__call__`` runs the stages in order, and
each intermediate (``w_plus``) can be passed in to skip the stage that would produce it.

Data flow (N faces, L = 18 W+ rows, D = 512):
    crop uint8 [1024,1024,3] --encoder_input--> x256 [N,3,256,256] in [-1,1]
    --encode--> Inversion(w_plus [N,L,D], features of the last encoder call)
    --synthesize--> image [N,3,R,R], R = out_res (1024 by default), roughly in [-1,1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facefix.errors import UsageError
from facefix.models.encoders import Encoder4Editing, ReStyleEncoder, face_pool, restyle_invert
from facefix.models.stylegan2 import Generator

ENCODER_RES = 256
ENCODER_TYPES = ("e4e", "restyle")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU; otherwise ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {spec}: MPS is not available on this machine (use --device cpu)")
    return device


def encoder_input(crops: list[np.ndarray] | np.ndarray) -> Tensor:
    """Aligned 1024 crops -> encoder input, resized with PIL's bilinear filter as e4e's training data was.

    Args:
        crops: uint8 [H,W,3] RGB (one) or a list of them, typically 1024x1024 FFHQ crops.
    Returns:
        float32 [N,3,256,256] in [-1,1] (``ToTensor`` + ``Normalize(0.5, 0.5)``).
    """
    from PIL import Image

    if isinstance(crops, np.ndarray) and crops.ndim == 3:
        crops = [crops]
    out = []
    for crop in crops:
        small = Image.fromarray(np.ascontiguousarray(crop)).resize((ENCODER_RES, ENCODER_RES), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(small, dtype=np.float32)).permute(2, 0, 1))
    return torch.stack(out) / 127.5 - 1.0


@dataclass
class Inversion:
    """Result of :meth:`FacefixPipeline.encode`.

    w_plus: [N,L,D] absolute W+ code (``latent_avg`` included).
    features: encoder taps of the last encoder call (see ``Encoder4Editing``), for SAMM; empty if not requested.
    """

    w_plus: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class PipelineOutput:
    """image: [N,3,R,R] float32 roughly in [-1,1] (not clamped); w_plus: [N,L,D] the code that made it."""

    image: Tensor
    w_plus: Tensor


class FacefixPipeline:
    """Encoder + generator with their ``latent_avg``, on one device.

    Args:
        generator: StyleGAN2 generator (eval mode).
        encoder: ``Encoder4Editing`` (e4e) or ``ReStyleEncoder``.
        latent_avg: [L,D] W+ mean added to the encoder's codes (the encoder checkpoint's ``latent_avg``).
        restyle_iters: ReStyle refinement steps (5 as in the paper); ignored for e4e.
    """

    def __init__(self, generator: Generator, encoder: Encoder4Editing | ReStyleEncoder, latent_avg: Tensor,
                 restyle_iters: int = 5):
        if latent_avg.shape != (generator.n_latent, generator.style_dim):
            raise UsageError(f"latent_avg has shape {list(latent_avg.shape)}, the generator needs "
                             f"[{generator.n_latent}, {generator.style_dim}]")
        if restyle_iters < 1:
            raise UsageError(f"--restyle-iters must be >= 1, got {restyle_iters}")
        self.generator = generator.eval()
        self.encoder = encoder.eval()
        self.latent_avg = latent_avg
        self.restyle_iters = restyle_iters
        self._avg_image: Tensor | None = None

    @property
    def encoder_type(self) -> str:
        return "restyle" if isinstance(self.encoder, ReStyleEncoder) else "e4e"

    @property
    def device(self) -> torch.device:
        return self.latent_avg.device

    def to(self, device: torch.device | str) -> FacefixPipeline:
        self.generator.to(device)
        self.encoder.to(device)
        self.latent_avg = self.latent_avg.to(device)
        self._avg_image = None
        return self

    @classmethod
    def from_pretrained(cls, generator: str | Path | None = None, encoder: str | Path | None = None,
                        encoder_type: str = "e4e", restyle_iters: int = 5, device: str = "auto",
                        offline: bool | None = None) -> FacefixPipeline:
        """Load the models from paths, or from the manifest's files (downloaded to the Hugging Face cache).

        Args:
            generator: a rosinality StyleGAN2 ``.pt``; default: the encoder file's own decoder (e4e and ReStyle
                checkpoints contain the generator they were trained with, so no second 381 MB download is needed).
            encoder: an e4e or ReStyle-e4e checkpoint; default: the manifest's file for ``encoder_type``.
            encoder_type: ``e4e`` or ``restyle``; must match the file when a path is given.
            device: see :func:`resolve_device`.
            offline: never touch the network (default: ``HF_HUB_OFFLINE``).
        """
        from facefix import checkpoints, weights

        if encoder_type not in ENCODER_TYPES:
            raise UsageError(f"--encoder-type {encoder_type!r}: expected one of {', '.join(ENCODER_TYPES)}")
        dev = resolve_device(device)
        enc_name = "e4e" if encoder_type == "e4e" else "restyle_e4e"
        enc_path = weights.resolve(enc_name, override=encoder, offline=offline)
        # Files from the manifest (downloaded pickles) get a safetensors copy: later runs memory-map it.
        loaded = checkpoints.load_encoder(enc_path, cache=encoder is None)
        if loaded.kind != encoder_type:
            raise UsageError(f"{enc_path}: this file holds a {loaded.kind} encoder, "
                             f"but --encoder-type is {encoder_type}")
        gen = loaded.generator
        if generator is not None:
            gen_path = weights.resolve("stylegan2", override=generator, offline=offline)
            gen = checkpoints.load_generator(gen_path).generator
            if gen.n_latent != loaded.generator.n_latent:
                raise UsageError(f"{generator}: a {gen.size}px generator does not fit the encoder's "
                                 f"{loaded.generator.size}px codes")
        return cls(gen, loaded.encoder, loaded.latent_avg, restyle_iters).to(dev)

    # -- stages -----------------------------------------------------------------------------------------------
    def average_image(self) -> Tensor:
        """ReStyle's iteration-0 feedback: face_pool(G(latent_avg)) with fixed noise, [1,3,256,256]; cached."""
        if self._avg_image is None:
            self._avg_image = face_pool(self.generator.synthesis(self.latent_avg[None]))
        return self._avg_image

    @torch.no_grad()
    def encode(self, x: Tensor, return_features: bool = False) -> Inversion:
        """Faces -> W+.

        Args:
            x: [N,3,256,256] in [-1,1] (see :func:`encoder_input`); a larger aligned batch [N,3,S,S] is resized
               with antialiased bilinear, which is close to, but not bit-equal with, PIL's.
            return_features: also keep the encoder taps of the last encoder call (for SAMM).
        Returns:
            :class:`Inversion` with ``w_plus`` [N,L,D] (``latent_avg`` included).
        """
        x = x.to(self.device, torch.float32)
        if x.shape[-1] != ENCODER_RES:
            x = F.interpolate(x, size=(ENCODER_RES, ENCODER_RES), mode="bilinear", antialias=True, align_corners=False)
        if isinstance(self.encoder, ReStyleEncoder):
            result = restyle_invert(self.encoder, self.generator.synthesis, x, self.latent_avg,
                                    self.average_image(), n_iters=self.restyle_iters,
                                    return_features=return_features)
        else:
            result = self.encoder.encode(x, return_features=return_features)
            result = type(result)(result.codes + self.latent_avg[None], result.features)
        return Inversion(result.codes, dict(result.features or {}))

    @torch.no_grad()
    def synthesize(self, w_plus: Tensor, generator: torch.Generator | None = None,
                   out_res: int | None = None) -> Tensor:
        """W+ [N,L,D] -> image [N,3,R,R]; fixed noise unless ``generator`` (a seeded RNG) is given."""
        return self.generator.synthesis(w_plus.to(self.device), generator=generator, out_res=out_res)

    @torch.no_grad()
    def __call__(self, x: Tensor | None = None, w_plus: Tensor | None = None,
                 generator: torch.Generator | None = None, out_res: int | None = None) -> PipelineOutput:
        """Invert and re-synthesise.

        1. Encode ``x`` ([N,3,256,256] in [-1,1]) unless ``w_plus`` is given.
        2. Synthesise the image from W+.
        """
        if w_plus is None:
            if x is None:
                raise UsageError("pass an image batch x or a W+ code w_plus")
            w_plus = self.encode(x).w_plus
        return PipelineOutput(self.synthesize(w_plus, generator=generator, out_res=out_res), w_plus)
