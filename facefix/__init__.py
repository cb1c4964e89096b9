"""facefix: edit faces in real photos with StyleGAN2 inversion (e4e / ReStyle) and SAMM out-of-domain blending.

The public API is importable without heavy side effects; models are built explicitly (see ``facefix.pipeline``).
"""

from facefix.errors import FacefixError, InputError, NoFaceError, UsageError, WeightsError

__version__ = "0.1.0"

__all__ = ["FacefixError", "InputError", "NoFaceError", "UsageError", "WeightsError", "__version__"]
