"""Folder runs as scripts use them: 30+ bad inputs next to good ones, resume after a kill, names, read-only output."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import ALIGNED, grace_path, run


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 px (10 Gpx): must be refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bad_inputs(folder) -> dict[str, bytes | None]:
    """name -> file content (None: do not create). Every one must fail with a one-line error."""
    grace = Image.open(grace_path()).convert("RGB")
    jpg, png = _encoded(grace, "JPEG"), _encoded(grace, "PNG")
    gray = Image.new("RGB", (400, 300), (128, 128, 128))
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    return {
        "text.jpg": b"hello, not an image\n",
        "empty.png": b"",
        "empty.jpg": b"",
        "empty.tiff": b"",
        "truncated.jpg": jpg[:600],
        "truncated.png": png[:600],
        "half.jpg": jpg[: len(jpg) // 2],
        "header_only.bmp": b"BM" + b"\x00" * 12,
        "header_only.tiff": b"II*\x00\x08\x00\x00\x00",
        "riff_only.webp": b"RIFF\x00\x00\x00\x00WEBP",
        "random.webp": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "page.html.jpg": b"<html><body>404</body></html>",
        "doc.pdf.png": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        "model.pt.jpg": b"PK\x03\x04" + b"\x00" * 100,
        "data.json.png": b'{"a": 1}',
        "bomb.png": _bomb_png(),
        "bad_crc.png": png[:33] + b"\x00\x00\x00\x00" + png[37:200],
        "gray.png": _encoded(gray, "PNG"),
        "noise.png": _encoded(noise, "PNG"),
        "white.jpg": _encoded(Image.new("RGB", (300, 300), "white"), "JPEG"),
        "black.webp": _encoded(Image.new("RGB", (300, 300)), "WEBP"),
        "one_px.png": _encoded(Image.new("RGB", (1, 1)), "PNG"),
        "tiny.png": _encoded(grace.resize((8, 9)), "PNG"),
        "small_face.jpg": _encoded(grace.resize((30, 35)), "JPEG"),
        "line.png": _encoded(Image.new("RGB", (4000, 1)), "PNG"),
        "gray16.png": _encoded(Image.new("I;16", (200, 200)), "PNG"),
        "cmyk_blank.jpg": _encoded(Image.new("CMYK", (200, 200)), "JPEG"),
        "palette_blank.gif": _encoded(Image.new("P", (200, 200)), "GIF"),
        "alpha_blank.png": _encoded(Image.new("RGBA", (200, 200)), "PNG"),
        "missing.jpg": None,
        "script.sh.png": b"#!/bin/sh\necho hi\n",
        "broken_link.png": None,  # a dangling symlink
    }


def test_thirty_bad_inputs_fail_one_line_each_and_the_good_ones_come_out_right(tmp_path, e4e64_file):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    named = []
    for name, content in _bad_inputs(bad_dir).items():
        p = bad_dir / name
        if name == "broken_link.png":
            p.symlink_to(bad_dir / "nowhere.png")
        elif content is not None:
            p.write_bytes(content)
        named.append(p)
    assert len(named) >= 30
    good = tmp_path / "good" / "grace.jpg"
    good.parent.mkdir()
    shutil.copy(grace_path(), good)
    common = ("--encoder", e4e64_file, "--resolution", "256", "--mask", "face", "-q")
    r = run("invert", *named[:15], good, *named[15:], *common, "-o", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    report = json.loads((tmp_path / "out" / "facefix-report.json").read_text())
    status = {os.path.basename(p["input"]): p for p in report["inputs"]}
    failed = {k: v["error"] for k, v in status.items() if v["status"] == "failed"}
    assert set(failed) == {p.name for p in named}, set(status) - set(failed)
    for name, err in failed.items():
        assert err and "\n" not in err and len(err) < 400 and "internal error" not in err, (name, err)
    assert "too large" in failed["bomb.png"].lower() or "pixels" in failed["bomb.png"]
    assert "no face" in failed["gray.png"].lower()
    # each failure is one stderr line, plus the summary lines
    assert sum(ln.startswith("facefix: ") for ln in r.output.splitlines()) == len(named) + 1
    # the good photo came out exactly as in a run on its own
    alone = run("invert", good, *common, "-o", tmp_path / "alone")
    assert alone.exit_code == 0, alone.output
    assert (tmp_path / "out" / "grace.jpg").read_bytes() == (tmp_path / "alone" / "grace.jpg").read_bytes()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]


def test_names_follow_the_input_tree_with_unicode_and_collisions(tmp_path, e4e64_file):
    src = tmp_path / "in"
    for rel in ("a/photo.png", "b/photo.png", "ü ñ/файл с пробелом.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ALIGNED, src / rel)
    other = tmp_path / "elsewhere" / "photo.png"
    other.parent.mkdir()
    shutil.copy(ALIGNED, other)
    r = run("invert", src, other, "--aligned", "--encoder", e4e64_file, "--mask", "none", "--resolution", "256",
            "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert outs == ["a/photo.png", "b/photo.png", "photo.png", "ü ñ/файл с пробелом.png"]


def test_never_overwrites_an_input(tmp_path, e4e64_file):
    img = tmp_path / "face.png"
    shutil.copy(ALIGNED, img)
    before = img.read_bytes()
    r = run("invert", img, "--aligned", "--encoder", e4e64_file, "--overwrite", "-o", tmp_path, "-q")
    assert r.exit_code == 1 and "would overwrite the input" in r.output
    assert img.read_bytes() == before


def test_read_only_output_folder(tmp_path, e4e64_file, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:
        # root ignores permission bits: make the write itself fail as it would for a user (EACCES from open)
        real_open = os.open

        def deny(path, flags, *a, **k):
            if str(path).startswith(str(out)) and flags & os.O_CREAT:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(os, "open", deny)
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: (
            not (mode & os.W_OK and str(p).startswith(str(out))) and real_access(p, mode, *a, **k)))
    try:
        r = run("invert", ALIGNED, "--aligned", "--encoder", e4e64_file, "-o", out)
    finally:
        out.chmod(0o755)
    assert r.exit_code == 2 and "not writable" in r.output and "Traceback" not in r.output, r.output
    assert list(out.iterdir()) == []


def _cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "facefix", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, **kw)


@pytest.mark.slow
def test_resume_after_kill_gives_identical_outputs(tmp_path, e4e64_file):
    src = tmp_path / "in"
    src.mkdir()
    base = np.asarray(Image.open(ALIGNED))
    for k in range(4):  # four different crops
        Image.fromarray(np.roll(base, 40 * k, axis=1)).save(src / f"f{k}.png")
    args = ("invert", src, "--aligned", "--encoder", e4e64_file, "--save", "latent", "--mask", "error",
            "--resolution", "256")
    # 1. interrupted run: killed as soon as the first photo's outputs are all written (its PNG comes before its
    # latent, so a kill between the two leaves f0 incomplete and the resume would redo it rather than skip it)
    proc = _cli(*args, "-o", tmp_path / "out")
    first = [tmp_path / "out" / "f0.png", tmp_path / "out" / "f0.latent.pt"]
    deadline = time.time() + 240
    while time.time() < deadline and not all(f.exists() for f in first):
        time.sleep(0.05)
    assert all(f.exists() for f in first), proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in (tmp_path / "out").glob("f*.png")}
    assert len(done_before) < 4
    # 2. resume: finishes the rest, skips what is complete
    resumed = _cli(*args, "-o", tmp_path / "out", "--json")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()[-2000:]
    summary = json.loads(stdout)["summary"]
    assert summary["ok"] + summary["skipped"] == 4 and summary["skipped"] >= 1
    # 3. a clean run gives byte-identical files, and nothing half-written is left anywhere
    clean = _cli(*args, "-o", tmp_path / "clean", "-q")
    assert clean.wait(timeout=300) == 0
    for k in range(4):
        for suffix in (".png", ".latent.pt"):
            a, b = tmp_path / "out" / f"f{k}{suffix}", tmp_path / "clean" / f"f{k}{suffix}"
            if suffix == ".png":
                assert a.read_bytes() == b.read_bytes(), a.name
            else:
                import torch

                assert torch.equal(torch.load(a, weights_only=True), torch.load(b, weights_only=True))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_batch_size_groups_photos_and_a_resumed_run_writes_the_same_bytes(tmp_path, e4e64_file, monkeypatch):
    from facefix.pipeline import FacefixPipeline

    src = tmp_path / "in"
    src.mkdir()
    grace = Image.open(ALIGNED).convert("RGB")
    grace.save(src / "a.png")
    grace.transpose(Image.FLIP_LEFT_RIGHT).save(src / "b.png")
    (src / "c.png").write_bytes(b"not an image")
    grace.rotate(5).save(src / "d.png")
    files = [src / n for n in ("a.png", "b.png", "c.png", "d.png")]
    batches: list[int] = []
    encode = FacefixPipeline.encode
    monkeypatch.setattr(FacefixPipeline, "encode", lambda self, x, **kw: batches.append(x.shape[0]) or
                        encode(self, x, **kw))
    common = ("--aligned", "--encoder", e4e64_file, "--mask", "error", "--save", "latent", "--device", "cpu", "-q")

    r = run("invert", *files, *common, "--batch-size", "3", "-o", tmp_path / "b3")
    assert r.exit_code == 1 and "c.png" in r.output
    assert batches == [2, 1]  # groups [a b c] (c fails, a and b share one batch) and [d]
    batches.clear()
    r = run("invert", *files, *common, "-o", tmp_path / "b1")  # CPU default: batch 1
    assert r.exit_code == 1 and batches == [1, 1, 1]
    for name in ("a.png", "b.png", "d.png"):  # batching changes float rounding only
        diff = np.abs(np.asarray(Image.open(tmp_path / "b3" / name), dtype=int) -
                      np.asarray(Image.open(tmp_path / "b1" / name), dtype=int))
        assert diff.max() <= 1, name

    # resume: b's outputs are gone; its group is recomputed whole so b gets the same bytes, a is not rewritten
    before = {p.name: p.read_bytes() for p in (tmp_path / "b3").iterdir() if p.name != "facefix-report.json"}
    (tmp_path / "b3" / "b.png").unlink()
    (tmp_path / "b3" / "b.latent.pt").unlink()
    a_mtime = (tmp_path / "b3" / "a.png").stat().st_mtime_ns
    batches.clear()
    r = run("invert", *files, *common, "--batch-size", "3", "-o", tmp_path / "b3")
    assert r.exit_code == 1 and batches == [2]  # group [d] is complete: not computed
    after = {p.name: p.read_bytes() for p in (tmp_path / "b3").iterdir() if p.name != "facefix-report.json"}
    assert after == before
    assert (tmp_path / "b3" / "a.png").stat().st_mtime_ns == a_mtime
    report = json.loads((tmp_path / "b3" / "facefix-report.json").read_text())
    assert [p["status"] for p in report["inputs"]] == ["skipped", "ok", "failed", "skipped"]
