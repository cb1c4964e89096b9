"""image_io: decoding (EXIF, colour modes, 16-bit, alpha), error one-liners, atomic writes, tensors."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from facefix import image_io
from facefix.errors import FacefixError, InputError
from facefix.image_io import Photo, load_image, save_image, to_tensor, to_uint8


@pytest.fixture(scope="module")
def grace() -> np.ndarray:
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_jpeg_round_trip_keeps_format_quality_and_icc(tmp_path, grace):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "in.jpg"
    Image.fromarray(grace).save(src, quality=90, icc_profile=icc)
    photo = load_image(src)
    assert photo.format == "JPEG" and photo.rgb.dtype == np.uint8 and photo.rgb.shape == grace.shape
    assert photo.alpha is None and photo.icc_profile == icc and photo.path == src
    out = save_image(tmp_path / "out.jpg", photo.rgb, like=photo)
    back = load_image(out)
    assert back.icc_profile == icc
    assert psnr(back.rgb, photo.rgb) > 38  # quality 95: a re-encode loses little
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, grace, orientation):
    small = grace[::4, ::4]  # non-square, so a missed transpose changes the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(small).save(path, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    got = load_image(path).rgb
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_exif_rotated_jpeg_is_upright(tmp_path, grace):
    # A camera held sideways stores the pixels rotated and tags orientation 6 ("rotate 90 CW to view").
    stored = Image.fromarray(grace).transpose(Image.Transpose.ROTATE_90)  # 90 deg counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    photo = load_image(path)
    assert photo.rgb.shape == grace.shape
    assert psnr(photo.rgb, grace) > 30


def test_cmyk_jpeg_becomes_rgb(tmp_path, grace):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(grace).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    photo = load_image(path)
    assert photo.rgb.shape == grace.shape and photo.rgb.dtype == np.uint8
    assert psnr(photo.rgb, grace) > 28  # colours survive (an inverted-CMYK bug would give ~5 dB)


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    v = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    path = tmp_path / "g16.png"
    Image.fromarray(v).save(path)
    assert Image.open(path).mode.startswith("I")
    photo = load_image(path)
    expected = np.round(v / 257.0).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(photo.rgb[..., c], expected)
    assert photo.rgb.max() == 255 and 100 < photo.rgb[32, 0, 0] < 160  # mid-grey stays mid-grey


def test_16bit_rgba_png_is_scaled(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    rgba16 = rng.integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    path = tmp_path / "c16.png"
    assert cv2.imwrite(str(path), rgba16[..., [2, 1, 0, 3]])  # OpenCV writes BGRA
    photo = load_image(path)
    np.testing.assert_array_equal(photo.rgb, np.round(rgba16[..., :3] / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(photo.alpha, np.round(rgba16[..., 3] / 257.0).astype(np.uint8))


def test_rgba_png_alpha_is_kept_through_save(tmp_path, grace):
    alpha = np.zeros(grace.shape[:2], np.uint8)
    alpha[100:400, 50:300] = 255
    alpha[0:50] = 77
    path = tmp_path / "a.png"
    Image.fromarray(np.dstack([grace, alpha]), "RGBA").save(path)
    photo = load_image(path)
    np.testing.assert_array_equal(photo.alpha, alpha)
    np.testing.assert_array_equal(photo.rgb, grace)
    for suffix in (".png", ".webp", ".tif"):
        out = save_image(tmp_path / f"out{suffix}", photo.rgb, like=photo)  # alpha comes from `like`
        back = load_image(out)
        assert back.alpha is not None, suffix
        np.testing.assert_array_equal(back.alpha, alpha)
    back = load_image(save_image(tmp_path / "out.jpg", photo.rgb, like=photo))
    assert back.alpha is None and back.format == "JPEG"


def test_palette_and_grayscale(tmp_path, grace):
    pal = Image.fromarray(grace).quantize(16)
    pal.save(tmp_path / "p.png")
    photo = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(photo.rgb, np.asarray(pal.convert("RGB")))
    Image.fromarray(grace[..., 1]).save(tmp_path / "l.png")
    gray = load_image(tmp_path / "l.png").rgb
    assert gray.shape == grace.shape
    np.testing.assert_array_equal(gray[..., 0], grace[..., 1])
    np.testing.assert_array_equal(gray[..., 2], grace[..., 1])


@pytest.mark.parametrize("suffix,family",
                         [(".webp", "WEBP"), (".tif", "TIFF"), (".bmp", "BMP"), (".png", "PNG")])
def test_formats_round_trip(tmp_path, grace, suffix, family):
    out = save_image(tmp_path / f"x{suffix}", grace)
    photo = load_image(out)
    assert photo.format == family
    assert psnr(photo.rgb, grace) > (38 if family == "WEBP" else 1e9)


def test_unknown_suffix_uses_like_format(tmp_path, grace):
    like = Photo(rgb=grace, format="PNG")
    out = save_image(tmp_path / "noext", grace, like=like)
    assert Image.open(out).format == "PNG"
    with pytest.raises(InputError, match="unknown image file type"):
        save_image(tmp_path / "x.xyz", grace)


def test_non_image_missing_and_folder(tmp_path):
    txt = tmp_path / "notes.jpg"
    txt.write_text("hello, not a picture\n")
    with pytest.raises(InputError, match=r"notes\.jpg: not an image file") as e:
        load_image(txt)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_special_files_are_refused_without_blocking(tmp_path):
    """A named pipe with no writer blocks a plain open() forever: the read runs in a thread, so a regression fails
    the test instead of hanging it."""
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    got: dict[str, str] = {}

    def read_all() -> None:
        for name in ("pipe.png", "link.png"):
            with pytest.raises(InputError) as e:
                image_io.read_regular_file(tmp_path / name)
            got[name] = str(e.value)

    worker = threading.Thread(target=read_all, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "reading a named pipe blocked"
    assert got == {"pipe.png": f"{tmp_path / 'pipe.png'}: a named pipe (FIFO), not an image file",
                   "link.png": f"{tmp_path / 'link.png'}: broken symbolic link (its target does not exist)"}
    with pytest.raises(InputError, match="contains a NUL byte"):
        load_image(tmp_path / "a\0b.png")
    if Path("/dev/zero").exists():  # a device: would stream zeros without end
        with pytest.raises(InputError, match="a character device"):
            load_image("/dev/zero")
    (tmp_path / "x.png").write_bytes(b"0123456789abcdef")
    assert image_io.read_regular_file(tmp_path / "x.png", 4) == b"0123"


def test_truncated_jpeg(tmp_path, grace):
    buf = io.BytesIO()
    Image.fromarray(grace).save(buf, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match=r"cut\.jpg: corrupt or truncated") as e:
        load_image(path)
    assert "\n" not in str(e.value)


def test_corrupt_exif_loads_upright_and_silently(tmp_path, grace):
    import warnings

    path = tmp_path / "bad_exif.jpg"
    Image.fromarray(grace[:64, :48]).save(path, "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00")
    header_only = tmp_path / "header_only.tiff"
    header_only.write_bytes(b"II*\x00\x08\x00\x00\x00")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(path).rgb.shape == (64, 48, 3)  # the pixels, as stored (no orientation to apply)
        with pytest.raises(InputError, match="not an image file"):
            load_image(header_only)
    assert [str(w.message) for w in caught] == []  # PIL's "Corrupt EXIF data" stays out of the CLI's stderr


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a few bytes of data: a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb(tmp_path, grace):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(40000, 40000))  # 1600 MP
    with pytest.raises(InputError, match=r"bomb\.png: image too large"):
        load_image(bomb)
    mid = tmp_path / "mid.png"
    mid.write_bytes(_png_claiming(12000, 12000))  # 144 MP: under PIL's limit, over ours when lowered
    with pytest.raises(InputError, match="too large"):
        load_image(mid, max_pixels=100_000_000)
    Image.fromarray(grace).save(tmp_path / "g.png")
    with pytest.raises(InputError, match="too large"):
        load_image(tmp_path / "g.png", max_pixels=1000)  # the cap is configurable
    assert load_image(tmp_path / "g.png").rgb.shape == grace.shape


def test_save_is_atomic_on_failure(tmp_path, grace, monkeypatch):
    target = tmp_path / "keep.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(target)
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(FacefixError, match=r"keep\.png: cannot write image \(No space left on device\)"):
        save_image(target, grace)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]  # no temp file left


def test_temp_files_of_killed_writers(tmp_path, grace):
    dead = 99_999_999  # above any pid_max
    stale, live = tmp_path / f".a.png.{dead}.tmp", tmp_path / f".b.png.{os.getppid()}.tmp"
    own = tmp_path / f".c.png.{os.getpid()}.tmp"  # a killed run that had this PID (containers reuse PIDs)
    for p in (stale, live, own, tmp_path / "d.png", tmp_path / ".e.tmp"):
        p.write_bytes(b"partial")
    assert sorted(image_io.stale_temp_files(tmp_path)) == [(stale, "a.png"), (own, "c.png")]
    save_image(tmp_path / "c.png", grace)  # the leftover with this PID does not stop the write
    assert load_image(tmp_path / "c.png").rgb.shape == grace.shape and not own.exists()


def test_save_into_missing_folder(tmp_path, grace):
    with pytest.raises(FacefixError, match="cannot write image"):
        save_image(tmp_path / "nope" / "x.png", grace)
    assert not (tmp_path / "nope").exists()


def test_tensor_round_trip_and_ranges():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    rgb[0, 0] = [0, 255, 128]
    t = to_tensor(rgb)
    assert t.shape == (1, 3, 7, 5) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert t[0, 0, 0, 0] == -1 and t[0, 1, 0, 0] == 1
    np.testing.assert_array_equal(to_uint8(t), rgb)
    np.testing.assert_array_equal(to_uint8(t[0]), rgb)
    x = torch.tensor([-3.0, 2.0, 0.0, 0.002, -0.002]).view(1, 5, 1).expand(3, 5, 1)
    out = to_uint8(x)
    assert out.shape == (5, 1, 3) and out.dtype == np.uint8
    assert out[:, 0, 0].tolist() == [0, 255, 128, 128, 127]  # clamped and rounded, not truncated


def test_module_defaults():
    assert image_io.DEFAULT_MAX_PIXELS >= 100_000_000  # a 100 MP camera frame must load


def test_16bit_rgb_tiff_is_scaled(tmp_path):
    import cv2

    rgb16 = np.random.default_rng(2).integers(0, 65536, (12, 16, 3), dtype=np.uint16)
    path = tmp_path / "c16.tif"
    assert cv2.imwrite(str(path), rgb16[..., ::-1])
    photo = load_image(path)
    assert photo.format == "TIFF"
    np.testing.assert_array_equal(photo.rgb, np.round(rgb16 / 257.0).astype(np.uint8))


def test_suffix_for_keeps_family(tmp_path, grace):
    Image.fromarray(grace).save(tmp_path / "a.jpeg")
    assert image_io.suffix_for(load_image(tmp_path / "a.jpeg")) == ".jpg"
    Image.fromarray(grace).save(tmp_path / "a.gif")
    gif = load_image(tmp_path / "a.gif")
    assert gif.format == "GIF" and image_io.suffix_for(gif) == ".png"  # no GIF writer: fall back to PNG
