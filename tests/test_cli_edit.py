"""`facefix edit` and `facefix directions list` end to end, over the tiny e4e checkpoint (64 px generator)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_cli import ALIGNED, grace_path, run


@pytest.fixture
def crop(tmp_path):
    p = tmp_path / "in" / "face.png"
    p.parent.mkdir()
    shutil.copy(ALIGNED, p)
    return p


@pytest.fixture(scope="module")
def pipe(e4e64_file):
    from facefix.pipeline import FacefixPipeline

    return FacefixPipeline.from_pretrained(encoder=e4e64_file, device="cpu")


def test_edit_applies_the_direction_to_the_inversion(tmp_path, crop, e4e64_file, pipe):
    from facefix.edits import apply_edits, build_edits
    from facefix.image_io import load_image, to_uint8

    r = run("edit", crop, "--aligned", "--age", "+3", "--smile", "-1.5", "--mask", "none", "--encoder", e4e64_file,
            "--save", "latent", "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    out = np.asarray(Image.open(tmp_path / "out" / "face.png"))
    x, x256 = pipe.prepare(load_image(ALIGNED).rgb)
    inv = pipe.encode(x256)
    (variant,) = build_edits(age=3, smile=-1.5, n_latent=10)
    expected = to_uint8(pipe.synthesize(apply_edits(inv.w_plus, variant.edits))[0])
    assert np.array_equal(out, expected)
    # the saved latent is the unedited inversion (reusable with --latent)
    assert torch.allclose(torch.load(tmp_path / "out" / "face.latent.pt", weights_only=True), inv.w_plus, atol=1e-5)
    assert not np.array_equal(out, to_uint8(pipe.synthesize(inv.w_plus)[0]))


def test_sweep_writes_frames_strip_and_animation(tmp_path, crop, e4e64_file):
    r = run("edit", crop, "--aligned", "--age", "-2:2:3", "--encoder", e4e64_file, "--mask", "none", "-o",
            tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    frames = [np.asarray(Image.open(tmp_path / "out" / f"face_age{v}.png")) for v in ("-2", "+0", "+2")]
    assert len({f.tobytes() for f in frames}) == 3
    strip = np.asarray(Image.open(tmp_path / "out" / "face.sweep.png"))
    assert strip.shape == (256, 3 * 256, 3)
    gif = Image.open(tmp_path / "out" / "face.sweep.gif")
    assert gif.n_frames == 4  # ping-pong: -2, 0, +2, 0


def test_latent_reuse_equals_encoding(tmp_path, crop, e4e64_file):
    r = run("invert", crop, "--aligned", "--encoder", e4e64_file, "--save", "latent", "-o", tmp_path / "inv", "-q")
    assert r.exit_code == 0, r.output
    common = ("--aligned", "--smile", "2", "--encoder", e4e64_file, "--mask", "error", "-q")
    assert run("edit", crop, *common, "-o", tmp_path / "a").exit_code == 0
    assert run("edit", crop, *common, "--latent", tmp_path / "inv", "-o", tmp_path / "b").exit_code == 0
    a = np.asarray(Image.open(tmp_path / "a" / "face.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "b" / "face.png")).astype(int)
    assert np.abs(a - b).max() <= 1  # the saved code is float32-identical; rounding only
    r = run("edit", crop, *common, "--latent", tmp_path / "nowhere", "-o", tmp_path / "c")
    assert r.exit_code == 2 and "--latent" in r.output


def test_error_mask_is_taken_from_the_unedited_inversion(tmp_path, crop, e4e64_file):
    """--mask error: the mask PNG is the same whatever the edit (an edit must not mark itself out-of-domain),
    and the output keeps the input wherever the mask is 1."""
    for age in ("0", "4"):
        r = run("edit", crop, "--aligned", "--age", age, "--mask", "error", "--save", "mask,grid", "--encoder",
                e4e64_file, "-o", tmp_path / age, "-q")
        assert r.exit_code == 0, r.output
    m0 = np.asarray(Image.open(tmp_path / "0" / "face.mask.png"))
    m4 = np.asarray(Image.open(tmp_path / "4" / "face.mask.png"))
    assert np.array_equal(m0, m4) and m0.shape == (64, 64, 3)
    assert 0 < (m0[..., 0] > 250).mean() < 1  # a random-weight GAN misses much of the photo, not all of it
    grid = np.asarray(Image.open(tmp_path / "4" / "face.grid.png"))
    assert grid.shape == (256, 4 * 256, 3)  # input | inversion | mask | edit


def test_face_mask_keeps_the_photo_outside_the_face(tmp_path, e4e64_file):
    r = run("edit", grace_path(), "--age", "3", "--encoder", e4e64_file, "--save", "mask", "-o", tmp_path, "-q")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "facefix-report.json").read_text())
    assert report["options"]["mask"] == "face"
    src = np.asarray(Image.open(grace_path()).convert("RGB")).astype(int)
    out = np.asarray(Image.open(tmp_path / "grace_hopper.jpg").convert("RGB")).astype(int)
    # hair/uniform above and below the face: unchanged up to JPEG re-encoding; the face itself: re-synthesised
    assert np.abs(out[:80] - src[:80]).mean() < 2
    assert np.abs(out[230:290, 240:300] - src[230:290, 240:300]).mean() > 10


@pytest.mark.parametrize("args,msg", [
    ([], "no edit given"),
    (["--age", "1:2"], "--age"),
    (["--age", "1:2:3", "--smile", "0:1:2"], "only one edit can be swept"),
    (["--ganspace", "no_such_edit"], "unknown edit"),
    (["--direction", "missing.pt"], "missing.pt"),
    (["--alpha", "2"], "--alpha needs --text"),
    (["--age", "1", "--mask-from", "later"], "--mask-from"),
])
def test_edit_usage_errors(tmp_path, crop, e4e64_file, args, msg):
    r = run("edit", crop, "--aligned", "--encoder", e4e64_file, "-o", tmp_path, *args)
    assert r.exit_code == 2, r.output  # nothing was tried: a usage error, never "some inputs failed" (1)
    assert msg.lower() in r.output.lower() and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("facefix:")]) >= 1


def test_directions_list():
    r = run("directions", "list")
    assert r.exit_code == 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 3 + 42 + 14 + 1
    assert any(ln.startswith("interfacegan") and " age " in ln for ln in lines)
    rows = json.loads(run("directions", "list", "--json").output)
    assert {r["kind"] for r in rows} == {"interfacegan", "ganspace", "styleclip", "styleclip-text"}
