"""Training-free invertibility masks, for when no SAMM weights are available (none are published).

Both follow the SAMM convention: alpha = 1 marks an out-of-domain pixel, taken from the input; alpha = 0 takes the
generator. They are the baselines SAMM is compared with, and what ``facefix`` falls back to:

- :func:`error_mask` ("error"): the prior-work recipe (e.g. HFGI-style consultation / "spatially adaptive" masks):
  smooth the per-pixel reconstruction error of the *unedited* inversion and threshold it softly. Regions the GAN
  reproduces badly (background, accessories, occluders) are kept from the input. It is computed on the unedited
  reconstruction on purpose: the error of an edited image would mark the edit itself as out-of-domain.
- :func:`face_mask` ("face"): everything outside a feathered hull of the 68 landmarks (plus the forehead, which the
  landmarks do not reach) is kept from the input; the face itself comes from the generator.

Masks are float32 tensors [N,1,S,S] in [0,1] on the images' device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

JAW = slice(0, 17)  # iBUG 68: jaw line 0-16, eyebrows 17-26, nose 27-35, eyes 36-47, mouth 48-67
BROWS = slice(17, 27)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding. x [N,C,H,W] float; sigma in px (<= 0: unchanged)."""
    if sigma <= 0:
        return x
    radius = max(int(math.ceil(3 * sigma)), 1)
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, [radius, radius, radius, radius], mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def error_mask(x: Tensor, reconstruction: Tensor, low: float = 0.12, high: float = 0.30,
               sigma_frac: float = 1 / 128) -> Tensor:
    """Out-of-domain mask from the reconstruction error of the unedited inversion.

    Args:
        x: input faces [N,3,S,S] in [-1,1].
        reconstruction: the generator's unedited output [N,3,S,S] in [-1,1].
        low, high: the error (mean |x - G| over RGB, in [-1,1] units, i.e. 2x the [0,1] error) below which alpha is 0
            and above which it is 1; linear in between. 0.12 / 0.30 ~ 15 / 38 grey levels.
        sigma_frac: Gaussian sigma as a fraction of S (8 px at 1024) for the error and again for the feather.
    Returns:
        alpha [N,1,S,S] in [0,1].
    """
    if x.shape != reconstruction.shape:
        raise ValueError(f"x {list(x.shape)} and reconstruction {list(reconstruction.shape)} differ")
    sigma = sigma_frac * x.shape[-1]
    err = gaussian_blur((x - reconstruction).abs().mean(dim=1, keepdim=True), sigma)
    alpha = ((err - low) / (high - low)).clamp(0, 1)
    return gaussian_blur(alpha, sigma).clamp(0, 1)


def face_polygon(landmarks: np.ndarray) -> np.ndarray:
    """Convex hull of the 68 landmarks plus a forehead arc, float32 [K,2] (x, y) in the same px as the input.

    The forehead points mirror the jaw line about the eyebrow line, scaled to 60% of the brow-to-chin height,
    because dlib's landmarks stop at the eyebrows and the hairline varies.
    """
    import cv2

    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.shape != (68, 2):
        raise ValueError(f"expected [68,2] landmarks, got {list(lm.shape)}")
    jaw, brows = lm[JAW], lm[BROWS]
    brow_y = brows[:, 1].mean()
    chin_y = jaw[:, 1].max()
    lift = 0.6 * (chin_y - brow_y)
    # jaw point -> same x, mirrored height above the brows, scaled so the arc tops out at brow_y - lift
    rel = (jaw[:, 1] - brow_y) / max(chin_y - brow_y, 1e-6)
    forehead = np.stack([jaw[:, 0], brow_y - rel.clip(0, 1) * lift], axis=1)
    pts = np.concatenate([lm, forehead]).astype(np.float32)
    return cv2.convexHull(pts).reshape(-1, 2)


def face_mask(landmarks: np.ndarray, size: int, feather_frac: float = 0.03) -> Tensor:
    """Out-of-domain mask: 1 outside the (feathered) face hull, 0 inside.

    Args:
        landmarks: [N,68,2] or [68,2] (x, y) in px of an ``size`` x ``size`` aligned crop.
        size: S.
        feather_frac: width of the 0 -> 1 ramp as a fraction of S (the hull is shrunk by half of it first so the
            ramp sits inside the face and no background leaks into the generated region).
    Returns:
        alpha [N,1,S,S] float32 in [0,1].
    """
    import cv2

    lms = np.asarray(landmarks, dtype=np.float32)
    if lms.ndim == 2:
        lms = lms[None]
    sigma = feather_frac * size / 2
    out = []
    for lm in lms:
        poly = face_polygon(lm)
        inside = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(inside, np.round(poly).astype(np.int32), 1)
        shrink = max(int(round(feather_frac * size / 2)), 1)
        inside = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * shrink + 1, 2 * shrink + 1)))
        out.append(1.0 - inside.astype(np.float32))
    alpha = torch.from_numpy(np.stack(out))[:, None]
    return gaussian_blur(alpha, sigma).clamp(0, 1)
