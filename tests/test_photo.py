"""The photo-level Python API (facefix.edit_photo and its stages) against the command line, over the tiny e4e
checkpoint (64 px generator, recipe weights)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import facefix
from facefix.errors import InputError, UsageError
from facefix.photo import PhotoOptions, find_faces
from tests.test_cli import ALIGNED, grace_path, run


@pytest.fixture(scope="module")
def pipe(e4e64_file):
    return facefix.FacefixPipeline.from_pretrained(encoder=e4e64_file, device="cpu")


def test_edit_photo_gives_the_bytes_the_cli_writes(tmp_path, e4e64_file, pipe):
    r = run("edit", grace_path(), "--age", "3", "--encoder", e4e64_file, "--save", "latent", "-o", tmp_path / "cli",
            "-q")
    assert r.exit_code == 0, r.output

    result = facefix.edit_photo(pipe, grace_path(), age=3)
    facefix.save_image(tmp_path / "py.jpg", result.image, like=result.photo)
    assert (tmp_path / "py.jpg").read_bytes() == (tmp_path / "cli" / "grace_hopper.jpg").read_bytes()
    saved = torch.load(tmp_path / "cli" / "grace_hopper.latent.pt", weights_only=True)
    assert torch.equal(result.faces[0].w_plus, saved)
    assert result.mask_mode == "face" and result.labels == ["age+3"]
    assert result.image.shape == result.photo.rgb.shape and len(result.images) == 1
    face = result.faces[0]
    assert face.images[0].shape == (64, 64, 3) and face.masks[0].shape == (64, 64)
    assert 0 < face.masks[0].mean() < 1  # the face mask keeps the photo around the face
    assert result.alignments[0].photo_size == result.photo.rgb.shape[:2] and result.crops[0].shape == (1024, 1024, 3)


def test_aligned_sweep_matches_the_cli_frames_and_mask(tmp_path, e4e64_file, pipe):
    crop = tmp_path / "face.png"
    crop.write_bytes(ALIGNED.read_bytes())
    r = run("edit", crop, "--aligned", "--age", "-2:2:3", "--mask", "error", "--save", "mask", "--encoder",
            e4e64_file, "-o", tmp_path / "cli", "-q")
    assert r.exit_code == 0, r.output

    options = PhotoOptions(aligned=True, mask=facefix.MaskMode.error)
    result = facefix.edit_photo(pipe, crop, age="-2:2:3", options=options, with_inversion=True)
    assert result.labels == ["age-2", "age+0", "age+2"] and result.images == [] and result.alignments == [None]
    (face,) = result.faces
    for label, image in zip(result.labels, face.images, strict=True):
        assert np.array_equal(image, np.asarray(Image.open(tmp_path / "cli" / f"face_{label}.png")))
    # the error mask comes from the unedited inversion, the same for every edit (what --save mask writes)
    assert all(np.array_equal(m, face.inversion_mask) for m in face.masks)
    mask_png = np.asarray(Image.open(tmp_path / "cli" / "face.mask.png"))[..., 0]
    assert np.array_equal(np.clip(np.round(face.inversion_mask * 255), 0, 255).astype(np.uint8), mask_png)
    # a plain inversion from the saved code renders what encoding renders
    again = facefix.edit_photo(pipe, crop, options=options, w_plus=face.w_plus)
    assert np.array_equal(again.image, face.inversion) and again.labels == [""]


def test_options_are_resolved_against_the_pipeline(pipe):
    photo = PhotoOptions().for_pipeline(pipe)
    assert (photo.mask, photo.out_res, photo.batch_size) == ("face", 64, 1)  # 64 px generator, CPU
    assert PhotoOptions(aligned=True).for_pipeline(pipe).mask == "error"
    assert PhotoOptions(aligned=True, mask="none", out_res=1024).for_pipeline(pipe).out_res == 64
    with pytest.raises(UsageError, match="needs SAMM weights"):
        PhotoOptions(mask="samm").for_pipeline(pipe)
    with pytest.raises(UsageError, match="mask_from 'later'"):
        PhotoOptions(mask_from="later").for_pipeline(pipe)


def test_bad_inputs_are_one_line_errors(tmp_path, pipe):
    rect = facefix.Photo(np.zeros((30, 40, 3), np.uint8), path=tmp_path / "rect.png")
    with pytest.raises(InputError, match="rect.png: aligned inputs must be square"):
        find_faces(rect, PhotoOptions(aligned=True, mask="error"))
    with pytest.raises(UsageError, match="not both"):
        facefix.edit_photo(pipe, ALIGNED, facefix.build_edits(smile=1), age=1)
    with pytest.raises(InputError, match="2 saved code"):
        facefix.edit_photo(pipe, ALIGNED, options=PhotoOptions(aligned=True, mask="none"),
                           w_plus=torch.zeros(2, 10, 512))


def test_saved_codes_with_samm_need_e4e():
    from types import SimpleNamespace

    from facefix.photo import check_saved_codes

    restyle = SimpleNamespace(encoder_type="restyle")
    check_saved_codes(restyle, PhotoOptions(mask="error"))
    with pytest.raises(UsageError, match="needs the e4e encoder"):
        check_saved_codes(restyle, PhotoOptions(mask="samm"))


def test_import_facefix_does_not_load_torch():
    root = Path(__file__).resolve().parents[1]
    light = "import sys, facefix; assert facefix.MaskMode.face == 'face'; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", light], check=True, cwd=root)
    full = "import sys, facefix; assert callable(facefix.edit_photo) and 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", full], check=True, cwd=root)
