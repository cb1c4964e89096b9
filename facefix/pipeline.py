"""FacefixPipeline: encoder -> W+ -> generator (with SAMM) -> mask and blend, as named stages callable one by one.

As in diffusers, the constructor takes ready models and resolves nothing; :meth:`FacefixPipeline.from_pretrained`
finds the files (paths, manifest, Hugging Face cache) and loads them. ``__call__`` runs the stages in order; each
stage can also be called alone, so an edit of k attributes costs one :meth:`encode` and k :meth:`render` calls.

Data flow (N faces, L = 18 W+ rows, D = 512, S = 1024 aligned crops, R = output size):
    crops uint8 [N][S,S,3] --prepare--> x [N,3,S,S] in [-1,1] and x256 [N,3,256,256] (the encoder's resize)
    --encode--> Inversion(w_plus [N,L,D], encoder taps of the last encoder call)
    --render(w_plus + edits, style_edits)--> generator (StyleSpace offsets of text edits; SAMM hooks at 32..256 px)
                               -> G [N,3,R,R]
                               -> mask A [N,1,R,R] (SAMM, error, face or none) -> A * x + (1 - A) * G

Masks: alpha = 1 means out-of-domain, taken from the input (spec convention). ``mask="auto"`` is SAMM when the
pipeline has SAMM weights, else the landmark face mask when landmarks are given, else the error mask.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facefix import edits, styleclip
from facefix.config import EncoderType, MaskMode
from facefix.errors import FacefixError, UsageError
from facefix.image_io import image_batch, to_tensor
from facefix.masks import error_mask, face_mask
from facefix.models.encoders import Encoder4Editing, ReStyleEncoder, face_pool, restyle_invert
from facefix.models.samm import ENCODER_MODES, SAMM, SAMMTrace, blend, compose_mask
from facefix.models.stylegan2 import Generator
from facefix.runtime import mmap_large_blocks

ENCODER_RES = 256
OFFICIAL_SAMM_RES = 1024
"""The official SAMM script resizes every crop to this size (bilinear, no antialias) before its model."""


_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(?::(\d+))?")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU; otherwise ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Anything else (``meta``, ``xpu``, ``cuda:x``) is a :class:`UsageError`, and so is a device this machine does
    not have, before any weights are loaded."""
    m = _DEVICE_RE.fullmatch(str(spec).strip().lower())
    if m is None:
        raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")
    name = m[0]
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if m[1] is not None and int(m[1]) >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    if name == "mps" and not _mps_available():
        raise UsageError(f"--device {spec}: MPS is not available on this machine (use --device cpu)")
    return torch.device(name)


def _bilinear_256(x: Tensor) -> Tensor:
    """[N,3,S,S] -> [N,3,256,256], bilinear without antialias (the official SAMM code's encoder input)."""
    return F.interpolate(x, size=(ENCODER_RES, ENCODER_RES), mode="bilinear", align_corners=False)


def encoder_input(crops: Sequence[np.ndarray] | np.ndarray, resize: str = "pil") -> Tensor:
    """Aligned crops -> encoder input [N,3,256,256] in [-1,1].

    Args:
        crops: uint8 [H,W,3] RGB (one) or a list of them, typically 1024x1024 FFHQ crops.
        resize: ``pil`` (PIL bilinear on the uint8 image, as e4e's training data was made) or ``bilinear``
            (``F.interpolate`` without antialias on the [-1,1] tensor, as the official SAMM code feeds its encoder).
    """
    from PIL import Image

    if resize == "bilinear":
        return _bilinear_256(to_tensor(crops))
    if resize != "pil":
        raise ValueError(f"resize must be pil or bilinear, got {resize!r}")
    small = [np.asarray(Image.fromarray(crop).resize((ENCODER_RES, ENCODER_RES), Image.BILINEAR))
             for crop in np.ascontiguousarray(image_batch(crops))]
    # contiguous NCHW: the layout this path has always fed the encoder, whose convolutions round by layout
    return to_tensor(small).contiguous()


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
    """One rendering.

    image: [N,3,R,R] float32 roughly in [-1,1] (not clamped): the blend when a mask is used, else ``generated``.
    w_plus: [N,L,D] the code that made it.
    generated: [N,3,R,R] the generator output (with SAMM's aligned features when SAMM ran).
    mask: [N,1,R,R] in [0,1] (1 = input pixel) or None for ``mask="none"``.
    mask_mode: which mask was used (``samm``, ``error``, ``face`` or ``none``).
    aligns: SAMM align tensors, resolution -> [N,3,r,r] (dx, dy, alpha); empty without SAMM.
    """

    image: Tensor
    w_plus: Tensor
    generated: Tensor | None = None
    mask: Tensor | None = None
    mask_mode: str = "none"
    aligns: dict[int, Tensor] = field(default_factory=dict)


class FacefixPipeline:
    """Encoder + generator (+ SAMM) with their ``latent_avg``, on one device.

    Args:
        generator: StyleGAN2 generator (eval mode).
        encoder: ``Encoder4Editing`` (e4e) or ``ReStyleEncoder``.
        latent_avg: [L,D] W+ mean added to the encoder's codes.
        restyle_iters: ReStyle refinement steps (5 as in the paper); ignored for e4e.
        samm: SAMM weights, or None. SAMM was trained with one encoder set-up (``samm.encoder_mode``); the
            pipeline switches the e4e FPN resize and the encoder-input resize to it, because the official weights
            see different codes and features otherwise (W+ rows 3-17 change).
    """

    def __init__(self, generator: Generator, encoder: Encoder4Editing | ReStyleEncoder, latent_avg: Tensor,
                 restyle_iters: int = 5, samm: SAMM | None = None):
        if latent_avg.shape != (generator.n_latent, generator.style_dim):
            raise UsageError(f"latent_avg has shape {list(latent_avg.shape)}, the generator needs "
                             f"[{generator.n_latent}, {generator.style_dim}]")
        if restyle_iters < 1:
            raise UsageError(f"--restyle-iters must be >= 1, got {restyle_iters}")
        self.generator = generator.eval()
        self.encoder = encoder.eval()
        self.latent_avg = latent_avg
        self.restyle_iters = restyle_iters
        self.samm = None if samm is None else samm.eval()
        self.input_resize = "pil"
        if samm is not None:
            mode = ENCODER_MODES[samm.encoder_mode]
            self.input_resize = mode["input_resize"]
            if isinstance(encoder, Encoder4Editing):
                encoder.fpn_upsample = mode["fpn_upsample"]
        self._avg_image: Tensor | None = None
        self._style_stats: styleclip.StyleStats | None = None

    @property
    def encoder_type(self) -> str:
        return "restyle" if isinstance(self.encoder, ReStyleEncoder) else "e4e"

    @property
    def device(self) -> torch.device:
        return self.latent_avg.device

    def to(self, device: torch.device | str) -> FacefixPipeline:
        self.generator.to(device)
        self.encoder.to(device)
        if self.samm is not None:
            self.samm.to(device)
        self.latent_avg = self.latent_avg.to(device)
        self._avg_image = None
        return self

    @classmethod
    def from_pretrained(cls, generator: str | Path | None = None, encoder: str | Path | None = None,
                        encoder_type: str = "e4e", restyle_iters: int = 5, device: str = "auto",
                        offline: bool | None = None, samm: str | Path | None = None,
                        cycle_align: int | None = None) -> FacefixPipeline:
        """Load the models from paths, or from the manifest's files (downloaded to the Hugging Face cache).

        Args:
            generator: a rosinality StyleGAN2 ``.pt``; default: the encoder file's own decoder (e4e and ReStyle
                checkpoints contain the generator they were trained with, so no second 381 MB download is needed).
            encoder: an e4e or ReStyle-e4e checkpoint; default: the manifest's file for ``encoder_type``.
            encoder_type: ``e4e`` or ``restyle``; must match the file when a path is given.
            device: see :func:`resolve_device`.
            offline: never touch the network (default: ``HF_HUB_OFFLINE``).
            samm: SAMM weights (official ``net_g_*.pth`` or facefix's format); None: no SAMM.
            cycle_align: SAMM alignment cycles (default: the file's).
        """
        from facefix import checkpoints, weights

        if encoder_type not in EncoderType.values():
            raise UsageError(f"--encoder-type {encoder_type!r}: expected one of {', '.join(EncoderType)}")
        dev = resolve_device(device)
        enc_name = "e4e" if encoder_type == "e4e" else "restyle_e4e"
        enc_path = weights.resolve(enc_name, override=encoder, offline=offline)
        # Files from the manifest (downloaded pickles) get a safetensors copy: later runs memory-map it.
        loaded = checkpoints.load_encoder(enc_path, cache=encoder is None, with_generator=generator is None)
        if loaded.kind != encoder_type:
            raise UsageError(f"{enc_path}: this file holds a {loaded.kind} encoder, "
                             f"but --encoder-type is {encoder_type}")
        gen, gen_avg = loaded.generator, None
        if generator is not None:
            gen_path = weights.resolve("stylegan2", override=generator, offline=offline)
            lg = checkpoints.load_generator(gen_path)
            gen, gen_avg = lg.generator, lg.latent_avg
            loaded.check_generator(gen, generator)
        assert gen is not None
        latent_avg, samm_model = loaded.latent_avg, None
        if samm is not None:
            samm_model = checkpoints.load_samm(weights.resolve("samm", override=samm, offline=offline), gen,
                                               cycle_align=cycle_align)
            if samm_model.encoder_mode == "official" and encoder_type == "e4e" and gen_avg is not None:
                # The official SAMM code adds the generator file's [512] latent_avg to the e4e codes.
                # For the published files it equals e4e's; when a --generator is given, follow the official code.
                latent_avg = gen_avg.reshape(1, -1).expand(gen.n_latent, -1).clone()
        return cls(gen, loaded.encoder, latent_avg, restyle_iters, samm_model).to(dev)

    # -- stages -----------------------------------------------------------------------------------------------
    def _official_resize(self, x: Tensor) -> Tensor:
        """With official SAMM weights and a 1024 generator, faces [N,3,S,S] resized to 1024 as the official script
        resizes any crop before its model (bilinear, no antialias); else ``x`` as is. The encoder input and the
        blend both start from this image, as in the official code."""
        size = self.generator.size
        if self.input_resize != "bilinear" or size != OFFICIAL_SAMM_RES or x.shape[-1] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def prepare(self, crops: Sequence[np.ndarray] | np.ndarray) -> tuple[Tensor, Tensor]:
        """uint8 crops -> (x [N,3,S,S] in [-1,1] for blending, x256 [N,3,256,256] for the encoder), on device."""
        x = to_tensor(crops)
        x256 = _bilinear_256(self._official_resize(x)) if self.input_resize == "bilinear" else \
            encoder_input(crops, "pil")
        return x.to(self.device), x256.to(self.device)

    def style_stats(self) -> styleclip.StyleStats:
        """The generator's StyleSpace mean/std (for text edits): computed once per generator, cached on disk."""
        if self._style_stats is None:
            self._style_stats = styleclip.cached_style_statistics(self.generator)
        return self._style_stats

    def style_offsets(self, style_edits: Sequence[edits.Edit]) -> list[Tensor | None] | None:
        """The StyleSpace offsets of the text edits among ``style_edits`` (others ignored), one [1,C] or None per
        style layer; None without text edits. :class:`~facefix.errors.InputError` when fs3 does not fit."""
        pairs = edits.style_edits(style_edits)
        return styleclip.style_offsets(self.generator, pairs, self.style_stats()) if pairs else None

    def average_image(self) -> Tensor:
        """ReStyle's iteration-0 feedback: face_pool(G(latent_avg)) with fixed noise, [1,3,256,256]; cached."""
        if self._avg_image is None:
            self._avg_image = face_pool(self.generator.synthesis(self.latent_avg[None]))
        return self._avg_image

    @torch.no_grad()
    def encode(self, x: Tensor, return_features: bool | None = None) -> Inversion:
        """Faces -> W+.

        Args:
            x: [N,3,256,256] in [-1,1] (see :meth:`prepare`); a larger aligned batch [N,3,S,S] is resized
               with antialiased bilinear, which is close to, but not bit-equal with, PIL's.
            return_features: keep the encoder taps of the last encoder call (default: when SAMM is loaded).
        Returns:
            :class:`Inversion` with ``w_plus`` [N,L,D] (``latent_avg`` included).
        """
        if return_features is None:
            return_features = self.samm is not None
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
        """W+ [N,L,D] -> image [N,3,R,R] without SAMM; fixed noise unless ``generator`` (a seeded RNG) is given."""
        return self.generator.synthesis(w_plus.to(self.device), generator=generator, out_res=out_res)

    def resolve_mask(self, mask: str, have_landmarks: bool) -> str:
        """``auto`` -> ``samm`` with SAMM weights, else ``face`` with landmarks, else ``error``; checks the others."""
        if mask not in MaskMode.values():
            raise UsageError(f"--mask {mask!r}: expected one of {', '.join(MaskMode)}")
        if mask == "auto":
            return "samm" if self.samm is not None else "face" if have_landmarks else "error"
        if mask == "samm" and self.samm is None:
            raise UsageError("--mask samm needs SAMM weights (--samm FILE); none are published yet: "
                             "use --mask error or --mask face")
        if mask == "face" and not have_landmarks:
            raise UsageError("--mask face needs the face's landmarks")
        return mask

    @torch.no_grad()
    def render(self, x: Tensor, inversion: Inversion, w_plus: Tensor | None = None, mask: str = "auto",
               reference: PipelineOutput | None = None, landmarks: np.ndarray | None = None,
               generator: torch.Generator | None = None, out_res: int | None = None,
               cycle_align: int | None = None, style_edits: Sequence[edits.Edit] = ()) -> PipelineOutput:
        """Generate from a (possibly edited) code and blend the out-of-domain regions of the input back.

        Args:
            x: input faces [N,3,S,S] in [-1,1] (resized to R if needed).
            inversion: the unedited :meth:`encode` result (its taps drive SAMM).
            w_plus: the code to render [N,L,D] (default: ``inversion.w_plus``); edits are applied by the caller.
            mask: see :meth:`resolve_mask`.
            reference: the unedited rendering, to reuse its mask (``--mask-from original``): SAMM replays its
                flows and masks (no AlignNet pass), the error mask is taken as is. Ignored for ``face``/``none``.
            landmarks: [N,68,2] px in the S x S crops, for ``mask="face"``.
            generator: seeded RNG for random noise (``--seed``); default: the checkpoint's fixed noise.
            out_res: output size R (default the generator's).
            cycle_align: SAMM cycles for this call (default: SAMM's config).
            style_edits: a variant's edits; its text edits (StyleCLIP global directions) become StyleSpace offsets
                of the generator (see :meth:`style_offsets`), the others are ignored here (they are in ``w_plus``).

        Raises:
            FacefixError: the result holds NaN or inf (it would be written as a plausible-looking black image).
        """
        w = (inversion.w_plus if w_plus is None else w_plus).to(self.device)
        offsets = self.style_offsets(style_edits)
        mode = self.resolve_mask(mask, landmarks is not None)
        size = out_res or self.generator.size
        noise = self.generator.random_noise(w.shape[0], generator) if generator is not None else None
        aligns: dict[int, Tensor] = {}
        reused = reference.mask if reference is not None else None
        alpha: Tensor | None = None
        if mode == "samm":
            assert self.samm is not None
            if reference is not None and reference.aligns:
                aligns = reference.aligns
                hook = SAMM.replay_hook(aligns)
            else:
                trace = SAMMTrace()
                hook = self.samm.feature_hook(self.samm.project(inversion.features), trace, cycle_align)
                aligns = trace.aligns
            # SAMM passes (and the replays between them) allocate ever larger temporaries per level, which
            # fragment a heap that never maps: see runtime.mmap_large_blocks
            with mmap_large_blocks():
                gen = self.generator.synthesis(w, noise=noise, out_res=out_res, feature_hook=hook,
                                               style_offsets=offsets)
            alpha = reused if reused is not None else compose_mask(aligns, size)
        else:
            gen = self.generator.synthesis(w, noise=noise, out_res=out_res, style_offsets=offsets)
        x = x.to(self.device, gen.dtype)
        crop_size = x.shape[-1]  # landmarks are in the input crop's px
        if size == self.generator.size:
            x = self._official_resize(x)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if mode == "error":
            if reused is not None:
                alpha = reused
            else:
                unedited = gen if w_plus is None and offsets is None else self.generator.synthesis(
                    inversion.w_plus.to(self.device), noise=noise, out_res=out_res)
                alpha = error_mask(x, unedited)
        elif mode == "face":
            assert landmarks is not None
            lms = np.asarray(landmarks, dtype=np.float32).reshape(-1, 68, 2) * (size / crop_size)
            alpha = face_mask(lms, size).to(self.device)
        image = gen if alpha is None else blend(x, gen, alpha)
        if not bool(torch.isfinite(image).all()):
            # would be written as a black or noise image that looks like a result
            raise FacefixError("the models produced NaN or inf pixels (corrupt weights, or an edit far outside its "
                               "useful range)")
        return PipelineOutput(image, w, gen, alpha, mode, aligns)

    @torch.no_grad()
    def __call__(self, crops: Sequence[np.ndarray] | np.ndarray, w_plus: Tensor | None = None,
                 mask: str = "auto", landmarks: np.ndarray | None = None,
                 generator: torch.Generator | None = None, out_res: int | None = None) -> PipelineOutput:
        """Invert aligned crops (uint8 [S,S,3], one or a list) and re-synthesise them with the chosen mask.

        ``w_plus`` [N,L,D] renders that code instead of the inversion's (e.g. an edited one); the input is still
        encoded, because SAMM needs its features and the masks need the unedited reconstruction.
        """
        x, x256 = self.prepare(crops)
        inversion = self.encode(x256)
        return self.render(x, inversion, w_plus=w_plus, mask=mask, landmarks=landmarks, generator=generator,
                           out_res=out_res)
