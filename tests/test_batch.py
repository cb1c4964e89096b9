"""Input collection, output names and shards (facefix.batch): pure functions, no models."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

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


def test_folder_entries_that_cannot_be_read_are_inputs_not_dropped(tree, tmp_path):
    (tree / "dangling.png").symlink_to(tree / "gone.png")
    names = {"dangling"}
    if Path("/proc/self/mem").exists():  # a regular file that even root cannot read (EIO)
        (tree / "mem").symlink_to("/proc/self/mem")
        names.add("mem")
    keys = {i.key for i in collect_inputs([str(tree)])}
    assert names <= keys and "notes" not in keys  # readable and not an image: left out, as before


def test_the_output_folder_is_not_searched_when_inside_an_input_folder(tree):
    out = tree / "a" / "out"
    out.mkdir()
    Image.new("RGB", (8, 8)).save(out / "photo.png")
    assert "a/out/photo" not in {i.key for i in collect_inputs([str(tree)], exclude=[out])}
    assert "a/out/photo" in {i.key for i in collect_inputs([str(tree)])}
    # -o above the input folder excludes nothing; a file named directly is always an input
    assert len(collect_inputs([str(tree)], exclude=[tree.parent])) == 5
    assert [i.key for i in collect_inputs([str(out / "photo.png")], exclude=[out])] == ["photo"]


def _keys(names: list[str], tmp_path, labels=()) -> list[str]:
    return [i.key for i in collect_inputs([str(tmp_path / n) for n in names], labels=labels)]


def test_keys_never_name_another_inputs_output(tmp_path):
    (tmp_path / "y").mkdir()
    (tmp_path / "z").mkdir()
    (tmp_path / "x").mkdir()
    # "b-2" is taken by z/b-2.png, so the second b is b-3; names differing only in case would be one file on macOS
    assert _keys(["y/b.png", "z/b-2.png", "x/b.png", "x/B.png"], tmp_path) == ["b", "b-2", "b-3", "B-4"]
    # a.mask.png would be a's --save mask output, a_face1.png its second face, a_age+3.png its sweep image
    assert _keys(["a.mask.png", "a_face1.png", "a_age+3.png", "a.png", "a.b.png"], tmp_path, ["age+3"]) == \
        ["a.mask-2", "a_face1-2", "a_age+3-2", "a", "a.b"]
    assert _keys(["a_age+3.png", "a.png"], tmp_path) == ["a_age+3", "a"]  # not a sweep: no such output
    # leading dots: never a hidden output, never "." (which would write -o's sibling "-o.png")
    assert _keys(["..png", "...png", ".x.png"], tmp_path) == ["image", "image-2", "x"]


def test_long_names_are_shortened_deterministically_and_stay_distinct(tmp_path):
    from facefix.batch import KEY_BYTES, LABEL_BYTES

    stems = ["é" * 120, "é" * 119 + "e", "x" * 250]
    keys = _keys([s + ".png" for s in stems], tmp_path)
    assert len(set(keys)) == 3 and all(len(k.encode()) <= KEY_BYTES for k in keys)
    assert keys == _keys([s + ".png" for s in stems], tmp_path)
    assert keys[2].startswith("x" * 100) and "~" in keys[2]
    assert len(safe_label("age+" + "1" * 300).encode()) <= LABEL_BYTES


def test_a_nul_byte_from_stdin_is_an_input(tmp_path):
    items = collect_inputs(["-"], stdin=io.StringIO(f"{tmp_path}/a\0b.png\n"))
    assert [i.key for i in items] == ["a_b"] and "\0" in str(items[0].path)


def test_stale_temp_files_of_this_runs_outputs_are_removed(tmp_path):
    from facefix.batch import InputFile, remove_stale_temps

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    dead = 99_999_999  # above any pid_max: no process has it
    mine = [out / f".a.png.{dead}.tmp", out / f".a_face1.mask.png.{dead}.tmp", out / "sub" / f".b.latent.pt.{dead}.tmp",
            out / f".facefix-report.json.{dead}.tmp"]
    keep = [out / f".ab.png.{dead}.tmp",  # another file's
            out / f".a.png.{os.getppid()}.tmp",  # a live process's
            out / f".notes.txt.{dead}.tmp"]
    for p in mine + keep:
        p.write_bytes(b"x")
    items = [InputFile(Path("a.jpg"), "a"), InputFile(Path("b.jpg"), "sub/b")]
    assert sorted(remove_stale_temps(out, items)) == sorted(mine)
    assert all(p.exists() for p in keep)
