"""Input collection, output names and shards (facefix.batch): pure functions, no models."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from facefix.batch import collect_inputs, looks_like_image, parse_shard, safe_label, select_shard
from facefix.errors import UsageError


@pytest.fixture
def tree(tmp_path):
    """in/a/photo.jpg, in/b/photo.png, in/ü ñ/файл с пробелом.png, in/noext (a PNG without suffix),
    in/notes.jpg (text), in/.hidden/x.png."""
    root = tmp_path / "in"
    for rel, fmt in [("a/photo.jpg", "JPEG"), ("b/photo.png", "PNG"), ("ü ñ/файл с пробелом.png", "PNG"),
                     ("noext", "PNG"), (".hidden/x.png", "PNG")]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(p, format=fmt)
    (root / "notes.jpg").write_text("not an image")
    return root


def test_folder_is_scanned_by_content_with_relative_keys(tree):
    got = {i.key: i.path.relative_to(tree).as_posix() for i in collect_inputs([str(tree)])}
    assert got == {"a/photo": "a/photo.jpg", "b/photo": "b/photo.png", "noext": "noext",
                   "ü ñ/файл с пробелом": "ü ñ/файл с пробелом.png"}


def test_same_names_from_different_places_never_collide(tree, tmp_path):
    other = tmp_path / "other" / "photo.jpg"
    other.parent.mkdir()
    shutil.copy(tree / "a" / "photo.jpg", other)
    items = collect_inputs([str(tree / "a" / "photo.jpg"), str(other), str(tree / "b" / "photo.png")])
    assert [i.key for i in items] == ["photo", "photo-2", "photo-3"]
    # the same file twice is one input
    assert len(collect_inputs([str(other), str(other)])) == 1


def test_globs_stdin_and_missing_files(tree):
    items = collect_inputs([str(tree / "*" / "photo.*")])
    assert sorted(i.path.name for i in items) == ["photo.jpg", "photo.png"]
    stdin = io.StringIO(f"{tree / 'a' / 'photo.jpg'}\n\n{tree / 'noext'}\n")
    assert [i.key for i in collect_inputs(["-"], stdin=stdin)] == ["photo", "noext"]
    # a named file is always an input (its error is reported per file), even if missing or not an image
    assert [i.key for i in collect_inputs([str(tree / "missing.jpg"), str(tree / "notes.jpg")])] == \
        ["missing", "notes"]


def test_keys_stay_inside_the_output_folder(tree):
    for item in collect_inputs([str(tree), str(tree / ".." / "in" / "a" / "photo.jpg"), "-"],
                               stdin=io.StringIO("../../../etc/passwd\n")):
        assert not item.key.startswith("/") and ".." not in item.key.split("/")


def test_shards_partition_the_inputs_exactly(tmp_path):
    for k in range(23):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{k:02d}.png")
    full = collect_inputs([str(tmp_path)])
    for n in (1, 2, 3, 7, 30):
        parts = [select_shard(full, parse_shard(f"{i}/{n}")) for i in range(n)]
        keys = [i.key for part in parts for i in part]
        assert sorted(keys) == sorted(i.key for i in full) and len(keys) == len(set(keys))
    # names do not depend on the shard
    assert {i.key: i.path for i in select_shard(full, (1, 3))}.items() <= {i.key: i.path for i in full}.items()


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "a/b", "1", "0/0", "1/2/3"])
def test_bad_shard_specs(spec):
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(spec)


def test_magic_bytes(tmp_path):
    p = tmp_path / "x"
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"):
        Image.new("RGB", (4, 4)).save(p, format=fmt)
        assert looks_like_image(p), fmt
    p.write_bytes(b"%PDF-1.4")
    assert not looks_like_image(p)
    assert not looks_like_image(tmp_path / "missing")


def test_safe_label():
    assert safe_label("age+3,eye_openness=20") == "age+3_eye_openness=20"
    assert safe_label("../x y") == "x_y"
    assert safe_label("") == "edit"
