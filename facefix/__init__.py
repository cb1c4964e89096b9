"""facefix: edit faces in real photos with StyleGAN2 inversion (e4e / ReStyle) and SAMM out-of-domain blending.

    import facefix

    pipe = facefix.FacefixPipeline.from_pretrained()              # or encoder="e4e_ffhq_encode.pt", samm=...
    result = facefix.edit_photo(pipe, "photo.jpg", age=3)          # find, align, invert, edit, paste back
    facefix.save_image("photo_age+3.jpg", result.image, like=result.photo)

The public names below are imported on first use, so ``import facefix`` (and ``facefix --version``) does not load
torch; models are built explicitly (see ``facefix.pipeline`` and ``facefix.photo``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from facefix.errors import FacefixError, InputError, NoFaceError, UsageError, WeightsError

__version__ = "0.3.1"

# public name -> the module that defines it
_LAZY = {
    "FacefixPipeline": "facefix.pipeline",
    "edit_photo": "facefix.photo",
    "PhotoOptions": "facefix.photo",
    "PhotoResult": "facefix.photo",
    "FaceResult": "facefix.photo",
    "build_edits": "facefix.edits",
    "load_image": "facefix.image_io",
    "save_image": "facefix.image_io",
    "Photo": "facefix.image_io",
    "FaceDetector": "facefix.align",
    "detect_faces": "facefix.align",
    "align_face": "facefix.align",
    "MaskMode": "facefix.config",
    "MaskFrom": "facefix.config",
    "EncoderType": "facefix.config",
}

__all__ = ["FacefixError", "InputError", "NoFaceError", "UsageError", "WeightsError", "__version__", *_LAZY]

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports them (re-exports: F401)
    from facefix.align import FaceDetector, align_face, detect_faces  # noqa: F401
    from facefix.config import EncoderType, MaskFrom, MaskMode  # noqa: F401
    from facefix.edits import build_edits  # noqa: F401
    from facefix.image_io import Photo, load_image, save_image  # noqa: F401
    from facefix.photo import FaceResult, PhotoOptions, PhotoResult, edit_photo  # noqa: F401
    from facefix.pipeline import FacefixPipeline  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'facefix' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
