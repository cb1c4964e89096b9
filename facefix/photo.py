"""Photo in, photo out: what ``facefix invert`` and ``facefix edit`` do to one photo, callable from Python.

    pipe = facefix.FacefixPipeline.from_pretrained(encoder="e4e_ffhq_encode.pt")
    result = facefix.edit_photo(pipe, "photo.jpg", age=3)
    facefix.save_image("photo_age+3.jpg", result.image, like=result.photo)

:func:`edit_photo` runs the stages below in order; each is public, so ``facefix.batch`` runs the same stages over
many photos, with the faces of several photos in one model batch (N faces, L = 18 W+ rows, D = 512, S = 1024 crop
size, R = output size):

    Photo --find_faces--> PhotoFaces(alignments, crops uint8 [S,S,3], landmarks [n,68,2] crop px)
          --invert_faces--> x [N,3,S,S] in [-1,1], Inversion(w_plus [N,L,D])
          --render_faces--> per face FaceResult(images uint8 [R,R,3] and masks [R,R] per edit, w_plus [1,L,D])
          --paste_faces--> the photo with the edited faces pasted back, uint8 [H,W,3]

Masks follow the pipeline's convention: 1 = out-of-domain, the input pixel is kept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from facefix.align import Alignment, FaceDetector, align_face, detect_faces, paste_back
from facefix.config import MaskFrom, MaskMode
from facefix.edits import Variant, apply_edits, build_edits
from facefix.errors import InputError, UsageError
from facefix.image_io import Photo, load_image, to_uint8
from facefix.pipeline import FacefixPipeline, Inversion, PipelineOutput

ALIGNED_SIZE = 1024  # FFHQ crop size: aligned inputs of another size are resized to it


@dataclass(frozen=True)
class PhotoOptions:
    """How faces are found, rendered and put back (the command line's model and output options).

    face: which detected face(s): ``"best"`` (the largest), ``"all"``, or N (0-based, left to right).
    aligned: the photo is already an FFHQ-aligned square crop (resized to 1024 if needed): no detection, and the
        result is the crop (no paste-back).
    paste_back: paste the edited faces back into the photo (else only the aligned results are made).
    mask: a :class:`~facefix.config.MaskMode`; ``auto`` is resolved by :meth:`for_pipeline`.
    mask_from: a :class:`~facefix.config.MaskFrom`: SAMM's flow and mask per edited pass, or the inversion's.
    out_res: R, the aligned result's size in px (None: the generator's; larger values are capped to it).
    seed: random generator noise from this seed (None: the checkpoint's fixed noise, deterministic).
    cycle_align: SAMM alignment cycles (None: the checkpoint's).
    batch_size: faces per model call (None: 1 on the CPU, 4 on a GPU). Results depend on it in the last bits.
    """

    face: str | int = "best"
    aligned: bool = False
    paste_back: bool = True
    mask: str = MaskMode.auto
    mask_from: str = MaskFrom.edited
    out_res: int | None = None
    seed: int | None = None
    cycle_align: int | None = None
    batch_size: int | None = None

    @property
    def pastes(self) -> bool:
        """Whether results are pasted back into the photo (never for aligned inputs)."""
        return self.paste_back and not self.aligned

    @property
    def needs_detector(self) -> bool:
        """Whether :func:`find_faces` runs the face detector (photos, or aligned crops under the face mask)."""
        return not self.aligned or self.mask == MaskMode.face

    def for_pipeline(self, pipe: FacefixPipeline) -> PhotoOptions:
        """These options with everything that depends on the pipeline filled in: ``mask="auto"`` becomes samm
        (SAMM weights loaded), face (photos) or error (aligned crops); ``out_res`` and ``batch_size`` get their
        defaults. Raises :class:`UsageError` for a mask the pipeline cannot make (samm without SAMM weights)."""
        if self.mask_from not in MaskFrom.values():
            raise UsageError(f"mask_from {self.mask_from!r}: expected one of {', '.join(MaskFrom)}")
        # Landmarks exist for every non-aligned face; aligned crops get them by detection only when asked.
        mask = pipe.resolve_mask(self.mask, have_landmarks=not self.aligned or self.mask != MaskMode.auto)
        size = pipe.generator.size
        return replace(self, mask=mask, out_res=min(self.out_res or size, size),
                       batch_size=self.batch_size or (1 if pipe.device.type == "cpu" else 4))


@dataclass
class PhotoFaces:
    """The faces of one photo, ready for the models.

    photo: the decoded photo. alignments: per face, the FFHQ :class:`~facefix.align.Alignment` (None for an aligned
    input). crops: per face uint8 [S,S,3]. landmarks: float32 [n,68,2] in crop px when the face mask needs them,
    else None.
    """

    photo: Photo
    alignments: list[Alignment | None]
    crops: list[np.ndarray]
    landmarks: np.ndarray | None = None


@dataclass
class FaceResult:
    """What the models made of one face. j indexes the edits (one, or each value of a sweep).

    images: per edit, the edited face uint8 [R,R,3] (for a plain inversion: the reconstruction).
    masks: per edit, float32 [R,R] in [0,1] (1 = input pixel kept), or None with ``mask="none"``.
    w_plus: float32 [1,L,D] on the CPU, the unedited inversion (what ``--save latent`` writes).
    inversion, inversion_mask: the unedited rendering uint8 [R,R,3] and its mask, when it was made (no edits,
        an error mask, ``mask_from="original"``, or asked for with ``with_inversion``), else None.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray | None]
    w_plus: Tensor
    inversion: np.ndarray | None = None
    inversion_mask: np.ndarray | None = None


@dataclass
class PhotoResult:
    """What :func:`edit_photo` returns. j indexes the edits (one, or each value of a sweep), k the faces.

    photo: the input; save with ``save_image(path, result.image, like=result.photo)`` to keep its format, ICC
        profile and alpha.
    images: per edit, the photo with every face's edit pasted back, uint8 [H,W,3] (EXIF-upright); empty for
        aligned inputs or ``paste_back=False``.
    labels: per edit, its label (``"age+3"``; ``""`` when only inverting).
    alignments, crops: per face, as in :class:`PhotoFaces`.
    faces: per face, its :class:`FaceResult` (edited crops, masks, W+ code).
    mask_mode: the mask used: samm, error, face or none.
    """

    photo: Photo
    images: list[np.ndarray]
    labels: list[str]
    alignments: list[Alignment | None]
    crops: list[np.ndarray]
    faces: list[FaceResult]
    mask_mode: str

    @property
    def image(self) -> np.ndarray:
        """The first edit: the whole photo uint8 [H,W,3] when pasted back, else the first face uint8 [R,R,3]."""
        return self.images[0] if self.images else self.faces[0].images[0]


def aligned_crop(photo: Photo) -> np.ndarray:
    """An already-aligned input as a 1024 crop uint8 [1024,1024,3]: square required; other sizes LANCZOS-resized."""
    from PIL import Image

    h, w = photo.rgb.shape[:2]
    if h != w:
        raise InputError(f"{photo.name}: aligned inputs must be square FFHQ crops, got {w}x{h}")
    if h == ALIGNED_SIZE:
        return photo.rgb
    return np.asarray(Image.fromarray(photo.rgb).resize((ALIGNED_SIZE, ALIGNED_SIZE), Image.LANCZOS))


def find_faces(photo: Photo, options: PhotoOptions, detector: FaceDetector | None = None) -> PhotoFaces:
    """Detect and FFHQ-align the faces ``options.face`` selects (an aligned input is its own single face).

    ``options.mask`` must be resolved (:meth:`PhotoOptions.for_pipeline`): the face mask needs landmarks.
    ``detector`` is built when needed and not given (about 0.7 s; pass one to reuse it over many photos).
    Raises :class:`~facefix.errors.NoFaceError` / :class:`InputError` naming the photo.
    """
    if detector is None and options.needs_detector:
        detector = FaceDetector()
    landmarks = None
    if options.aligned:
        alignments: list[Alignment | None] = [None]
        crops = [aligned_crop(photo)]
        if options.mask == MaskMode.face:
            landmarks = np.stack([detect_faces(c, detector, "best", f"{photo.name} (aligned crop)")[0].landmarks
                                  for c in crops])
    else:
        found = detect_faces(photo.rgb, detector, options.face, photo.name)
        aligned = [align_face(photo.rgb, f) for f in found]
        alignments, crops = list(aligned), [a.crop for a in aligned]
        if options.mask == MaskMode.face:
            landmarks = np.stack([a.crop_landmarks() for a in aligned])
    return PhotoFaces(photo, alignments, crops, landmarks)


def check_saved_codes(pipe: FacefixPipeline, options: PhotoOptions) -> None:
    """Saved W+ codes can replace the encoder except for ReStyle under SAMM: raises :class:`UsageError` then."""
    if options.mask == MaskMode.samm and pipe.encoder_type != "e4e":
        raise UsageError("a saved W+ code with the SAMM mask needs the e4e encoder (ReStyle's SAMM features depend "
                         "on its iterations, which a saved code does not record)")


def invert_faces(pipe: FacefixPipeline, crops: Sequence[np.ndarray], options: PhotoOptions,
                 w_plus: Tensor | None = None) -> tuple[Tensor, Inversion]:
    """Aligned crops (uint8 [S,S,3]) -> (x [N,3,S,S] in [-1,1] on the pipeline's device, their Inversion).

    ``w_plus`` [N,L,D]: saved codes to use instead of the encoder's; the encoder then runs only for SAMM's
    features (``options.mask == "samm"``, see :func:`check_saved_codes`).
    """
    x, x256 = pipe.prepare(crops)
    if w_plus is None:
        return x, pipe.encode(x256)
    check_saved_codes(pipe, options)
    feats = pipe.encode(x256, return_features=True).features if options.mask == MaskMode.samm else {}
    return x, Inversion(w_plus.to(pipe.device), feats)


def _mask_np(out: PipelineOutput, i: int) -> np.ndarray | None:
    """Face i's mask as float32 [R,R] (1 = input pixel), or None without a mask."""
    return None if out.mask is None else out.mask[i, 0].float().cpu().numpy()


def render_faces(pipe: FacefixPipeline, x: Tensor, inversion: Inversion, edits: Sequence[Variant],
                 options: PhotoOptions, landmarks: np.ndarray | None = None,
                 with_inversion: bool = False) -> list[FaceResult]:
    """Render every edit of the faces in one batch, with the mask of ``options`` (resolved).

    Args:
        x, inversion: from :func:`invert_faces` (N faces).
        edits: the edits to render, one image each (a sweep gives several); empty: the inversion itself.
        landmarks: float32 [N,68,2] crop px, for the face mask.
        with_inversion: also render the unedited inversion (it is rendered anyway when there is no edit, for the
            error mask, and with ``mask_from="original"``, whose edits reuse its SAMM flow and mask).
    Returns:
        per face, a :class:`FaceResult`.
    """
    rng = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
    reuse_mask = options.mask_from == MaskFrom.original or options.mask == MaskMode.error
    ref = pipe.render(x, inversion, mask=options.mask, landmarks=landmarks, generator=rng, out_res=options.out_res,
                      cycle_align=options.cycle_align) if not edits or reuse_mask or with_inversion else None
    outs = [] if edits else [ref]
    for v in edits:
        if rng is not None:
            rng.manual_seed(options.seed)  # the same noise for every edit: only the edit differs
        outs.append(pipe.render(x, inversion, w_plus=apply_edits(inversion.w_plus, v.edits), mask=options.mask,
                                reference=ref if reuse_mask else None, landmarks=landmarks, generator=rng,
                                out_res=options.out_res, cycle_align=options.cycle_align, style_edits=v.edits))
    return [FaceResult([to_uint8(o.image[i].cpu()) for o in outs], [_mask_np(o, i) for o in outs],
                       inversion.w_plus[i:i + 1].cpu(),
                       None if ref is None else to_uint8(ref.image[i].cpu()),
                       None if ref is None else _mask_np(ref, i))
            for i in range(x.shape[0])]


def paste_faces(faces: PhotoFaces, results: Sequence[FaceResult], j: int = 0) -> np.ndarray:
    """The photo with edit j of every face pasted back, uint8 [H,W,3]: the face is taken from the generator only
    where its mask says so, the photo keeps its own pixels everywhere else."""
    keep = [None if r.masks[j] is None else 1.0 - r.masks[j] for r in results]
    return paste_back(faces.photo.rgb, [r.images[j] for r in results], faces.alignments, keep)


def edit_photo(pipe: FacefixPipeline, image: Photo | np.ndarray | str | os.PathLike, edits: Sequence[Variant] = (),
               *, age: float | str | None = None, smile: float | str | None = None, pose: float | str | None = None,
               options: PhotoOptions | None = None, w_plus: Tensor | None = None, detector: FaceDetector | None = None,
               with_inversion: bool = False) -> PhotoResult:
    """Edit the faces of a photo: find, align, invert, edit, render, paste back (``facefix edit`` for one photo).

    Args:
        pipe: the loaded models (:meth:`FacefixPipeline.from_pretrained`).
        image: a :class:`~facefix.image_io.Photo` (:func:`~facefix.image_io.load_image`), a path, or uint8 RGB
            [H,W,3].
        edits: edits from :func:`facefix.edits.build_edits` (``--direction``, ``--ganspace``, ``--styleclip``,
            sweeps), rendered after ``age``/``smile``/``pose``; none at all: the photo is only inverted.
        age, smile, pose: InterFaceGAN factors (useful range about -5..5), or a sweep ``"FROM:TO:N"``.
        options: see :class:`PhotoOptions` (default: the largest face, auto mask, paste-back).
        w_plus: [n,L,D] saved codes of the n faces (e.g. from ``--save latent``), used instead of encoding.
        detector: a :class:`~facefix.align.FaceDetector` to reuse (built when needed otherwise).
        with_inversion: also render each face's unedited inversion (``FaceResult.inversion``).
    Returns:
        :class:`PhotoResult`; ``result.image`` is the edited photo uint8 [H,W,3].
    """
    photo = image if isinstance(image, Photo) else Photo(image) if isinstance(image, np.ndarray) else \
        load_image(image)
    variants = list(edits)
    if (age, smile, pose) != (None, None, None):
        if variants:
            raise UsageError("pass edits, or age/smile/pose, not both: build_edits(age=..., ganspace=...) "
                             "combines them")
        variants = build_edits(age=age, smile=smile, pose=pose, n_latent=pipe.generator.n_latent)
    opts = (options or PhotoOptions()).for_pipeline(pipe)
    faces = find_faces(photo, opts, detector)
    if w_plus is not None and w_plus.shape[0] != len(faces.crops):
        raise InputError(f"{photo.name}: {w_plus.shape[0]} saved code(s) for {len(faces.crops)} face(s)")
    results: list[FaceResult] = []
    size = opts.batch_size or 1
    for lo in range(0, len(faces.crops), size):  # faces per model call, as the command line batches them
        x, inversion = invert_faces(pipe, faces.crops[lo:lo + size], opts,
                                    None if w_plus is None else w_plus[lo:lo + size])
        lms = None if faces.landmarks is None else faces.landmarks[lo:lo + size]
        results += render_faces(pipe, x, inversion, variants, opts, lms, with_inversion)
    images = [paste_faces(faces, results, j) for j in range(len(results[0].images))] if opts.pastes else []
    return PhotoResult(photo, images, [v.label for v in variants] or [""], faces.alignments, faces.crops, results,
                       opts.mask)
