"""End-to-end CLI tests over a tiny e4e checkpoint (64 px generator, recipe weights) and real photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facefix import __version__
from facefix.cli import app
from tests.conftest import GOLDEN, write_generator_checkpoint

runner = CliRunner()
ALIGNED = GOLDEN / "align" / "grace_hopper_aligned1024.png"


def grace_path():
    from matplotlib import cbook

    return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_invert_aligned_matches_python_api(tmp_path, e4e64_file):
    crop = tmp_path / "in" / "face.png"
    crop.parent.mkdir()
    shutil.copy(ALIGNED, crop)
    r = run("invert", crop, "--aligned", "--encoder", e4e64_file, "--save", "latent", "--device", "cpu",
            "--mask", "none", "-o", tmp_path / "out", "--quiet")
    assert r.exit_code == 0, r.output
    out_png, out_lat = tmp_path / "out" / "face.png", tmp_path / "out" / "face.latent.pt"
    w = torch.load(out_lat, weights_only=True)
    assert w.dtype == torch.float32 and w.shape == (1, 10, 512)
    img = np.asarray(Image.open(out_png))
    assert img.shape == (64, 64, 3)  # the 64 px test generator's output size

    from facefix.image_io import load_image, to_uint8
    from facefix.pipeline import FacefixPipeline, encoder_input

    pipe = FacefixPipeline.from_pretrained(encoder=e4e64_file, device="cpu")
    inv = pipe.encode(encoder_input(load_image(ALIGNED).rgb))
    assert torch.allclose(inv.w_plus, w, atol=1e-5)
    assert np.array_equal(to_uint8(pipe.synthesize(inv.w_plus)[0]), img)
    report = json.loads((tmp_path / "out" / "facefix-report.json").read_text())
    assert report["summary"] == {"inputs": 1, "ok": 1, "skipped": 0, "failed": 0}

    # A second run skips what exists; --overwrite redoes it.
    r = run("invert", crop, "--aligned", "--encoder", e4e64_file, "--save", "latent", "--mask", "none",
            "-o", tmp_path / "out")
    assert r.exit_code == 0
    assert json.loads((tmp_path / "out" / "facefix-report.json").read_text())["summary"]["skipped"] == 1


def test_invert_photo_pastes_back_into_the_original(tmp_path, e4e64_file):
    r = run("invert", grace_path(), "--encoder", e4e64_file, "--save", "aligned,latent", "-o", tmp_path, "-q")
    assert r.exit_code == 0, r.output
    src = np.asarray(Image.open(grace_path()).convert("RGB"))
    out = np.asarray(Image.open(tmp_path / "grace_hopper.jpg").convert("RGB"))
    assert out.shape == src.shape
    # Far from the face (bottom-left corner) the photo is unchanged up to JPEG re-encoding at quality 95.
    assert np.abs(out[-60:, :60].astype(int) - src[-60:, :60]).mean() < 3
    # The face region was re-synthesised (a random-weight generator does not reproduce the face).
    assert np.abs(out[220:300, 220:300].astype(int) - src[220:300, 220:300]).mean() > 10
    assert (tmp_path / "grace_hopper.aligned.png").exists() and (tmp_path / "grace_hopper.latent.pt").exists()


def test_bad_inputs_do_not_stop_the_good_ones(tmp_path, e4e64_file):
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    shutil.copy(ALIGNED, good)
    (tmp_path / "in" / "notes.png").write_text("not an image")
    (tmp_path / "in" / "wide.png").write_bytes(b"")
    Image.new("RGB", (300, 200)).save(tmp_path / "in" / "rect.png")
    # the folder is scanned by content (notes.png and wide.png are not images); named files are always tried
    r = run("invert", tmp_path / "in", *[tmp_path / "in" / n for n in ("notes.png", "wide.png")], "--aligned",
            "--encoder", e4e64_file, "-o", tmp_path / "out", "-q")
    assert r.exit_code == 1
    assert (tmp_path / "out" / "good.png").exists()
    rep = json.loads((tmp_path / "out" / "facefix-report.json").read_text())
    failed = {p["input"].split("/")[-1]: p["error"] for p in rep["inputs"] if p["status"] == "failed"}
    assert set(failed) == {"notes.png", "wide.png", "rect.png"}
    assert "must be square" in failed["rect.png"]
    assert all("\n" not in e for e in failed.values())
    assert "Traceback" not in r.output
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("args,msg", [
    (["--mask", "samm"], "--mask samm needs SAMM weights"),
    (["--mask-from", "later"], "No such option"),
    (["--shard", "3/3"], "--shard 3/3"),
    (["--mask", "bogus"], "--mask 'bogus'"),
    (["--resolution", "300"], "--resolution 300"),
    (["--face", "second"], "--face 'second'"),
    (["--save", "latent,everything"], "--save"),
    (["--encoder-type", "pSp"], "--encoder-type 'pSp'"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, e4e64_file, args, msg):
    r = run("invert", ALIGNED, "--aligned", "--encoder", e4e64_file, "-o", tmp_path, *args)
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output


def test_missing_weights_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for var in ("FACEFIX_ENCODER", "FACEFIX_E4E", "FACEFIX_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    r = run("invert", ALIGNED, "--aligned", "--offline", "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert "facefix weights download e4e" in r.output and "Traceback" not in r.output


def test_encoder_type_must_match_the_file(tmp_path, e4e64_file):
    r = run("invert", ALIGNED, "--aligned", "--encoder", e4e64_file, "--encoder-type", "restyle", "-o", tmp_path)
    assert r.exit_code == 2 and "this file holds a e4e encoder" in r.output


def test_generator_must_fit_the_encoder(tmp_path, e4e64_file):
    g32 = write_generator_checkpoint(tmp_path / "g32.pt", size=32)  # 8 W+ rows; the e4e file's codes have 10
    r = run("invert", ALIGNED, "--aligned", "--encoder", e4e64_file, "--generator", g32, "-o", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert "a 32px generator does not fit the encoder's 64px codes" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.png"))


def test_align_writes_crop_and_transform(tmp_path):
    from facefix.align import FaceDetector, align_face, detect_faces
    from facefix.image_io import load_image

    r = run("align", grace_path(), "/nonexistent.jpg", "-o", tmp_path, "-q")
    assert r.exit_code == 1  # the missing file fails, the photo is still aligned
    crop = np.asarray(Image.open(tmp_path / "grace_hopper_face0.png"))
    meta = json.loads((tmp_path / "grace_hopper_face0.json").read_text())
    rgb = load_image(grace_path()).rgb
    expected = align_face(rgb, detect_faces(rgb, FaceDetector())[0])
    assert np.array_equal(crop, expected.crop)
    assert np.allclose(meta["quad"], expected.quad)


@pytest.mark.parametrize("command", [[], ["invert"], ["edit"], ["align"], ["directions", "list"],
                                     ["weights", "download"], ["train", "samm"]])
def test_help_renders_the_option_syntax_verbatim(command):
    """--help goes through Rich markup: "A:B:N" became an emoji ("🅱") and "[@A-B]" vanished as a tag."""
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    box = set("─│╭╮╰╯")
    assert not [c for c in r.output if ord(c) > 127 and c not in box], r.output
    if command == ["edit"]:
        assert "FROM:TO:N" in r.output and "FILE[:F][@A-B]" in r.output


def test_every_help_text_survives_rich_markup():
    """Each command's and option's help is shown through Rich markup; none may lose or change text there (an
    escaped ``\\[`` is how a literal bracket is written)."""
    import typer
    from rich.text import Text

    def texts(cmd, path):
        yield path, cmd.help or ""
        for p in cmd.params:
            yield f"{path} {p.name}", getattr(p, "help", None) or ""
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from texts(sub, f"{path} {name}")

    seen = list(texts(typer.main.get_command(app), "facefix"))
    assert len(seen) > 50  # every command and option was visited
    changed = [(where, h) for where, h in seen if Text.from_markup(h).plain != h.replace("\\[", "[")]
    assert changed == []
