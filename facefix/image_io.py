"""Image files in and out: decoding, EXIF orientation, colour modes, 16-bit, alpha, atomic writes, tensors.

Everything here works on plain arrays: ``rgb`` is uint8 [H,W,3] in [0,255], upright (EXIF orientation
applied), ``alpha`` is uint8 [H,W] or None. Tensors are float32 [N,3,H,W] in [-1,1]. This module knows nothing
about faces.
Foreign errors (PIL, OS) are wrapped in :class:`~facefix.errors.InputError` / :class:`FacefixError` whose
``str()`` is one line naming the file.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from facefix.errors import FacefixError, InputError

if TYPE_CHECKING:
    import torch

# Default decompression-bomb cap: 150 MP is above any camera (a 100 MP medium-format frame fits) but stops a
# 30-byte PNG from asking for gigabytes. PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS) still applies on
# top.
DEFAULT_MAX_PIXELS = 150_000_000

# Format family (PIL's ``Image.format``) -> canonical file suffix. MPO is a multi-picture JPEG (many phones).
_FAMILY_ALIASES = {"MPO": "JPEG", "JPG": "JPEG", "TIF": "TIFF"}
_SUFFIX_FAMILY = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".webp": "WEBP",
    ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}
FAMILY_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
_ALPHA_FAMILIES = {"PNG", "WEBP", "TIFF"}


@dataclass
class Photo:
    """A decoded photo.

    rgb: uint8 [H,W,3] in [0,255], EXIF-upright, sRGB-ish (CMYK converted, 16-bit scaled to 8-bit).
    alpha: uint8 [H,W] or None when the file had no transparency.
    format: PIL format family, e.g. "JPEG", "PNG", "WEBP", "TIFF", "BMP" (MPO is reported as JPEG).
    icc_profile: the embedded ICC profile bytes (None if absent or no longer valid after a colour conversion).
    path: where it was read from (None for in-memory photos).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    format: str = "PNG"
    icc_profile: bytes | None = None
    path: Path | None = None

    @property
    def name(self) -> str:
        """Name used in user-facing messages."""
        return str(self.path) if self.path is not None else "<image>"


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 1..8 -> upright. arr: [H,W] or [H,W,C]; returns a (possibly strided) view."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:  # transpose
        return arr.swapaxes(0, 1)
    if orientation == 6:  # rotate 90 clockwise
        return arr.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:  # transverse
        return arr.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:  # rotate 90 counter-clockwise
        return arr.swapaxes(0, 1)[::-1]
    return arr


def _u16_to_u8(a: np.ndarray) -> np.ndarray:
    """Full-range 16-bit -> 8-bit by rounding v / 257 (65535 -> 255 exactly; a plain convert would clip)."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _decode_16bit_rgb(data: bytes) -> np.ndarray | None:
    """16-bit RGB(A) PNG/TIFF via OpenCV (PIL keeps only the high byte).

    Returns uint16 [H,W,3|4] RGB(A), or None when OpenCV cannot decode it.
    """
    try:
        import cv2
    except ImportError:  # PIL's high-byte decode is within 1 level; acceptable fallback
        return None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    # OpenCV applies EXIF orientation only without IMREAD_UNCHANGED, so this is still the stored orientation.
    return arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]


def _to_rgb_alpha(img: Image.Image, data: bytes) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Decoded PIL image (any mode) -> (rgb uint8 [H,W,3], alpha uint8 [H,W] | None, icc_still_valid)."""
    mode = img.mode
    args = img.tile[0][3] if img.tile else ""  # PNG: "RGBA;16B"; libtiff: ("RGB;16N", ...)
    rawmode = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")
    if mode in ("RGB", "RGBA") and "16" in rawmode:
        wide = _decode_16bit_rgb(data)
        if wide is not None and wide.shape[:2] == (img.height, img.width):
            rgb = _u16_to_u8(wide[..., :3])
            return rgb, (_u16_to_u8(wide[..., 3]) if wide.shape[2] == 4 else None), True
    img.load()
    if mode.startswith("I;16") or mode == "I":
        # "I;16*" is unsigned 16-bit; "I" is 32-bit but in practice holds 16-bit samples (old PNG path).
        a = np.asarray(img).astype(np.int64)
        g = _u16_to_u8(np.clip(a, 0, 65535).astype(np.uint16)) if (mode != "I" or a.max() > 255) \
            else a.astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), None, True
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        a = a * 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else a  # float images are usually [0,1]
        g = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), None, True
    if mode == "CMYK":
        icc = img.info.get("icc_profile")
        if icc:
            try:  # honour the embedded press profile when there is one
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                srgb = ImageCms.createProfile("sRGB")
                rgb_img = ImageCms.profileToProfile(img, src, srgb, outputMode="RGB")
                return np.asarray(rgb_img, dtype=np.uint8).copy(), None, False
            except (ImageCms.PyCMSError, OSError, ValueError):
                pass
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy(), None, False
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("P", "L", "RGB") and
                                                               "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        return rgba[..., :3].copy(), rgba[..., 3].copy(), True
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy(), None, mode in ("RGB", "L", "P")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def read_regular_file(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file (its first ``limit`` bytes if given).

    Anything else is refused before it is read: a named pipe would block forever, a device could stream without
    end. The path is checked with ``stat`` first, so non-regular files are never opened, and opened non-blocking
    and checked again with ``fstat``, so one swapped in between cannot block either.

    Raises:
        InputError: one line naming the file: not found, broken symbolic link, a folder, a FIFO, socket or
        device, a NUL byte in the name, or a read error.
    """
    p = Path(path)
    if "\0" in str(p):  # only a path list read from stdin can carry one; the OS cannot open such a name
        raise InputError(f"{p}: the file name contains a NUL byte")
    try:
        mode = os.stat(p).st_mode
        if stat.S_ISREG(mode):
            nonblock = getattr(os, "O_NONBLOCK", 0)  # POSIX: opening a pipe this way returns at once
            fd = os.open(p, os.O_RDONLY | nonblock | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as f:
                mode = os.fstat(fd).st_mode
                if stat.S_ISREG(mode):
                    if nonblock:
                        os.set_blocking(fd, True)
                    return f.read() if limit is None else f.read(limit)
    except FileNotFoundError as err:
        what = "broken symbolic link (its target does not exist)" if p.is_symlink() else "file not found"
        raise InputError(f"{p}: {what}") from err
    except OSError as err:
        raise InputError(f"{p}: cannot read file ({err.strerror or err})") from err
    if stat.S_ISDIR(mode):
        raise InputError(f"{p}: is a folder, not an image")
    raise InputError(f"{p}: {_file_kind(mode)}, not an image file")


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Photo:
    """Read an image file into an upright 8-bit RGB :class:`Photo` (alpha kept separately).

    Handles JPEG (incl. CMYK and MPO), PNG (palette, grayscale, 16-bit, alpha), WebP, TIFF, BMP; the first
    frame of multi-frame files. EXIF orientation is applied to pixels (and alpha).

    Args:
        path: file to read.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard); None = PIL's default.
    Returns:
        Photo with rgb uint8 [H,W,3], alpha uint8 [H,W] or None.
    Raises:
        InputError: missing/unreadable file, not an image, corrupt or truncated data, or too many pixels.
    """
    p = Path(path)
    data = read_regular_file(p)
    try:
        with warnings.catch_warnings():
            # PIL warns about defects it recovers from (a corrupt EXIF block; the decompression-bomb size, which our
            # own cap below replaces) as raw warnings with its source paths on stderr. facefix either reads the
            # pixels (a broken EXIF block means no orientation) or reports one line, so they are noise here.
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise InputError(f"{p}: image too large ({w}x{h} = {w * h / 1e6:.0f} MP > limit "
                                 f"{max_pixels / 1e6:.0f} MP; possible decompression bomb)")
            family = _FAMILY_ALIASES.get(img.format or "", img.format or "PNG")
            icc = img.info.get("icc_profile") or None
            # Decode before getexif(): PNG's getexif() loads the image, which drops the tile info (16-bit
            # check).
            rgb, alpha, icc_ok = _to_rgb_alpha(img, data)
            try:
                orientation = int(img.getexif().get(0x0112, 1))
            except Exception:  # a broken EXIF block must not make the photo unreadable
                orientation = 1
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(f"{p}: image too large (possible decompression bomb): {err}") from err
    except UnidentifiedImageError as err:
        raise InputError(f"{p}: not an image file or unsupported format") from err
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{p}: corrupt or truncated image ({detail})") from err
    rgb = np.ascontiguousarray(_apply_orientation(rgb, orientation))
    if alpha is not None:
        alpha = np.ascontiguousarray(_apply_orientation(alpha, orientation))
    return Photo(rgb=rgb, alpha=alpha, format=family, icc_profile=icc if icc_ok else None, path=p)


def suffix_for(photo: Photo) -> str:
    """Output suffix keeping the photo's format family (".jpg", ".png", ...); ".png" for others (GIF)."""
    return FAMILY_SUFFIX.get(photo.format, ".png")


def _family_for(path: Path, like: Photo | None) -> str:
    fam = _SUFFIX_FAMILY.get(path.suffix.lower())
    if fam is None and like is not None:
        fam = like.format if like.format in FAMILY_SUFFIX else None
    if fam is None:
        raise InputError(f"{path}: unknown image file type '{path.suffix}' "
                         "(use .jpg, .png, .webp, .tif or .bmp)")
    return fam


def save_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None,
               like: Photo | None = None, quality: int = 95, compress_level: int = 4) -> Path:
    """Write rgb (uint8 [H,W,3]) atomically: temp file in the same folder, fsync, ``os.replace``.

    The format follows the path's suffix (or ``like.format`` when the suffix is unknown). JPEG/WebP use
    ``quality``, PNG ``compress_level`` (zlib 0-9: 1 writes a 1024 px crop ~2x faster than 4, ~10% larger);
    the ICC profile of ``like`` is embedded; alpha (uint8 [H,W], default ``like.alpha`` when the
    size matches) is re-attached for PNG, WebP and TIFF. On any failure no partial file is left behind.

    Returns:
        The written path.
    Raises:
        InputError: unknown file type.
        FacefixError: the file could not be written (folder missing, disk full...).
    """
    path = Path(path)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, f"need uint8 [H,W,3], {rgb.shape}"
    family = _family_for(path, like)
    if alpha is None and like is not None and like.alpha is not None and like.alpha.shape == rgb.shape[:2]:
        alpha = like.alpha
    if alpha is not None:
        assert alpha.dtype == np.uint8 and alpha.shape == rgb.shape[:2], "alpha must be uint8 [H,W] like rgb"
    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if alpha is not None and family in _ALPHA_FAMILIES:
        img.putalpha(Image.fromarray(np.ascontiguousarray(alpha), "L"))
    kwargs: dict = {}
    icc = like.icc_profile if like is not None else None
    if icc:
        kwargs["icc_profile"] = icc
    if family == "JPEG":
        kwargs.update(quality=quality)
    elif family == "WEBP":
        kwargs.update(quality=quality, exact=alpha is not None)
    elif family == "TIFF":
        kwargs.update(compression="tiff_deflate")
    elif family == "PNG":
        kwargs.update(compress_level=compress_level)  # 4: ~2x faster than 6 on 12 MP for a few % size
    elif family == "BMP":
        kwargs.pop("icc_profile", None)

    atomic_write(path, lambda f: img.save(f, format=family, **kwargs), what="image")
    return path


def atomic_write(path: Path, write: Callable[[BinaryIO], object], what: str = "file") -> None:
    """Write a file so that it is either complete or absent: temp file in the same folder, fsync, ``os.replace``.

    ``write(f)`` fills the open binary file. Any failure (including Ctrl-C) removes the temp file and leaves an
    existing file at ``path`` untouched; an OSError becomes a one-line ``FacefixError``.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        # os.open (not mkstemp) so the final file gets normal umask permissions, not 0600.
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # left by a killed run that had this PID (containers reuse PIDs): stale
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(err, OSError):
            raise FacefixError(f"{path}: cannot write {what} ({err.strerror or err})") from err
        raise
    try:  # make the rename itself durable; best effort (not possible on every platform)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_gif(path: str | os.PathLike, frames: Sequence[np.ndarray], ms: int = 250) -> None:
    """An animated GIF that loops: frames uint8 [H,W,3], ``ms`` each; written atomically."""
    ims = [Image.fromarray(f) for f in frames]
    atomic_write(Path(path), lambda f: ims[0].save(f, format="GIF", save_all=True, append_images=ims[1:],
                                                   duration=ms, loop=0), what="animation")


_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.tmp", re.DOTALL)


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():  # a killed run's PID, reused by this one: none of its own writes has started yet
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # it does, another user's
        return False
    except (OSError, OverflowError):  # no such process, or not a valid PID
        return True
    return False


def stale_temp_files(folder: Path) -> list[tuple[Path, str]]:
    """Temp files that :func:`atomic_write` left in ``folder`` (not recursive) when its process was killed mid-write
    (SIGKILL, power loss), as ``(temp path, name of the file it was writing)``. Files of running processes are not
    listed. Call it before this process writes into ``folder``."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for e in entries:
        m = _TEMP_NAME.fullmatch(e.name)
        if m and e.is_file(follow_symlinks=False) and _process_gone(int(m["pid"])):
            out.append((Path(e.path), m["target"]))
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write` of a bytes payload (reports, latents, JSON)."""
    atomic_write(Path(path), lambda f: f.write(data))


def image_batch(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """uint8 RGB images (one [H,W,3], a list of same-size ones, or a stack [N,H,W,3]) -> uint8 [N,H,W,3]."""
    if isinstance(images, np.ndarray):
        arr = images.reshape(1, *images.shape) if images.ndim == 3 else images
    else:
        arr = np.stack([np.asarray(im) for im in images])
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise InputError(f"expected uint8 RGB images [H,W,3], got {arr.dtype} {list(arr.shape[1:])}")
    return arr


def to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB in [0,255] (see :func:`image_batch`) -> float32 [N,3,H,W] in [-1,1]: x / 127.5 - 1.

    For all 256 levels this is bit-identical to the official SAMM script's ``(u8 / 255 - 0.5) * 2`` (float64,
    then float32), so blended input pixels equal the reference's.
    """
    import torch

    arr = np.ascontiguousarray(image_batch(images))
    if not arr.flags.writeable:  # torch warns about read-only arrays (e.g. np.asarray of a PIL image); copy uint8
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)  # [N,3,H,W] uint8
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [3,H,W] or [1,3,H,W] in [-1,1] -> uint8 [H,W,3]: (x + 1) * 127.5, rounded, clamped to [0,255]."""
    import torch

    if x.ndim == 4:
        assert x.shape[0] == 1, f"to_uint8 takes one image, got batch {x.shape[0]}"
        x = x[0]
    assert x.ndim == 3 and x.shape[0] == 3, f"expected [3,H,W], got {tuple(x.shape)}"
    y = (x.detach().float().cpu() + 1.0) * 127.5
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
