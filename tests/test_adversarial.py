"""Hostile and careless inputs through the whole command line.

Each case builds its inputs in a temp folder, runs facefix and goes through :func:`_check`: the exit code, every
stderr line a single ``facefix: ...`` line and no traceback, every failed input listed in the report with a one-line
error, no file created outside ``-o``, no temp file left, and every image, latent and report written complete.

In-process runs swap the manifest's models for the tiny SmallEncoder pair of ``conftest`` (ms per image), keeping
the real device check and, for ``--generator``, the real checkpoint loader. Cases that need a real process (a named
pipe that would block, SIGTERM) run ``python -m facefix align``, which needs no weights, under timeouts, so a
regression fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facefix.cli import app

runner = CliRunner()
COMMON = ("--aligned", "--mask", "none", "--resolution", "256", "-q")


@pytest.fixture(scope="module")
def tiny_models(small64_file):
    from facefix import checkpoints

    return checkpoints.load_encoder(small64_file)


@pytest.fixture
def tiny(monkeypatch, tiny_models):
    """FacefixPipeline.from_pretrained -> the SmallEncoder + 64 px generator file (or ``--generator``'s file)."""
    from facefix import checkpoints
    from facefix.pipeline import FacefixPipeline, resolve_device

    loaded = tiny_models

    def from_pretrained(cls, generator=None, device="auto", **_):
        dev = resolve_device(device)
        gen = checkpoints.load_generator(generator).generator if generator is not None else loaded.generator
        return cls(gen, loaded.encoder, loaded.latent_avg).to(dev)

    monkeypatch.setattr(FacefixPipeline, "from_pretrained", classmethod(from_pretrained))
    return loaded


def _face(path: Path, seed: int = 0) -> Path:
    """A small square RGB PNG (an --aligned input is resized to 1024)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


def _run(root: Path, out: Path, *args, code: int, failed: tuple = (), stdin: str | None = None):
    """Run facefix and check what every case must satisfy; returns (result, report or None)."""
    before = _files(root)
    r = runner.invoke(app, [str(a) for a in args] + ["-o", str(out)], input=stdin)
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    lines = r.stderr.splitlines()
    assert all(ln.startswith("facefix: ") for ln in lines), lines
    if code:
        assert lines, "a failure must say why"
    new = _files(root) - before
    outside = [p for p in new if out.resolve() not in p.resolve().parents]
    assert outside == [], outside
    assert [p for p in root.rglob("*") if p.name.endswith((".tmp", ".part"))] == []
    for p in new:
        if p.suffix in (".png", ".jpg", ".gif"):
            with Image.open(p) as im:
                im.load()  # a truncated file fails here
        elif p.suffix == ".pt":
            torch.load(p, weights_only=True)
    report = None
    if (out / "facefix-report.json").exists():
        report = json.loads((out / "facefix-report.json").read_text())
        errors = {row["input"]: row["error"] for row in report["inputs"] if row["status"] == "failed"}
        assert set(map(str, failed)) <= set(errors), (failed, errors)
        for name, msg in errors.items():
            assert msg and "\n" not in msg.replace(name, ""), msg  # the report keeps a name as it is
    else:  # stopped before any input was tried (options, models)
        assert not failed
    if code == 2:
        assert not out.exists() or not any(out.iterdir()), "a usage error writes nothing"
    return r, report


def _tiny_generator_file(path: Path, loaded, poison: str | None = None) -> Path:
    """The tiny pair's generator as a rosinality file; ``poison``: a key whose values become NaN."""
    sd = {k: v.clone() for k, v in loaded.generator.state_dict().items()}
    if poison:
        sd[poison].fill_(float("nan"))
    torch.save({"g_ema": sd, "latent_avg": loaded.latent_avg[0]}, path)
    return path


# -------------------------------------------------------------------------------- silent wrong results


@pytest.mark.parametrize("edit", [["--age", "1e30"], ["--smile", "-1e9:0:3"], ["--pose", "150"],
                                  ["--ganspace", "bald=1e6"], ["--ganspace", "bald+=-500"],
                                  ["--styleclip", "mohawk=1e9"], ["--direction", "DIR:1e30"], ["--direction", "BIG"]])
def test_absurd_edit_values_are_usage_errors_quoting_the_useful_range(tmp_path, tiny, edit):
    d = tmp_path / "unit.pt"
    torch.save(torch.nn.functional.normalize(torch.randn(512), dim=0), d)
    big = tmp_path / "big.pt"
    torch.save(torch.randn(512) * 1e6, big)  # a raw, unnormalised vector: even factor 1 moves W+ by 2e7
    edit = [e.replace("DIR", str(d)).replace("BIG", str(big)) for e in edit]
    r, _ = _run(tmp_path, tmp_path / "out", "edit", _face(tmp_path / "in" / "a.png"), *edit, *COMMON, code=2)
    assert "useful range" in r.stderr and "too large" in r.stderr


def test_generator_with_nan_weights_is_refused_at_load(tmp_path, tiny):
    bad = _tiny_generator_file(tmp_path / "nan.pt", tiny, poison="convs.0.conv.weight")
    r, _ = _run(tmp_path, tmp_path / "out", "invert", _face(tmp_path / "in" / "a.png"), "--generator", bad, *COMMON,
                code=1)
    assert "convs.0.conv.weight contains NaN or inf" in r.stderr
    assert not list((tmp_path / "out").glob("*.png"))


def test_nan_pixels_fail_each_input_with_one_line_and_write_nothing(tmp_path, tiny, monkeypatch):
    """Defence behind the load check: whatever makes the models produce NaN, no black image is written as a result."""
    from facefix import checkpoints

    monkeypatch.setattr(checkpoints, "_check_finite", lambda *a: None)
    bad = _tiny_generator_file(tmp_path / "nan.pt", tiny, poison="input.input")
    faces = [_face(tmp_path / "in" / f"{k}.png", k) for k in range(2)]
    r, report = _run(tmp_path, tmp_path / "out", "invert", *faces, "--generator", bad, *COMMON, code=1, failed=faces)
    assert all(f"{f}: the models produced NaN or inf pixels" in r.stderr for f in faces), r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["facefix-report.json"]


# -------------------------------------------------------------------------------- inputs skipped silently


def test_unreadable_entries_of_a_folder_are_reported_not_dropped(tmp_path, tiny, monkeypatch):
    src = tmp_path / "in"
    good = _face(src / "good.png")
    locked = _face(src / "locked.png", 1)
    (src / "dangling.png").symlink_to(src / "gone.png")
    if os.geteuid() == 0:
        # root reads any file whatever its mode: make opening it fail as chmod 000 does for a user (EACCES)
        real_open = os.open

        def deny(path, *args, **kwargs):
            if str(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    else:
        locked.chmod(0)
    failed = [src / "dangling.png", locked]
    if Path("/proc/self/mem").exists():  # Linux: a file even root cannot read (EIO)
        (src / "mem.png").symlink_to("/proc/self/mem")
        failed.append(src / "mem.png")
    try:
        r, report = _run(tmp_path, tmp_path / "out", "invert", src, *COMMON, code=1, failed=failed)
    finally:
        locked.chmod(0o644)
    rows = {Path(row["input"]).name: row for row in report["inputs"]}
    assert rows["good.png"]["status"] == "ok" and (tmp_path / "out" / "good.png").exists()
    assert "Permission denied" in rows["locked.png"]["error"]
    assert "broken symbolic link" in rows["dangling.png"]["error"]
    assert good.exists()


def test_nul_byte_and_newline_in_names_are_reported_on_one_line(tmp_path, tiny):
    good = _face(tmp_path / "in" / "good.png")
    odd = tmp_path / "in" / "two\nlines.png"
    odd.write_text("not an image")
    r, report = _run(tmp_path, tmp_path / "out", "invert", "-", odd, *COMMON, code=1,
                     failed=[odd, f"{tmp_path}/in/nul\0byte.png"], stdin=f"{good}\n{tmp_path}/in/nul\0byte.png\n")
    assert "\0" not in r.stderr and "nul\\x00byte.png: the file name contains a NUL byte" in r.stderr
    assert "two\\nlines.png" in r.stderr
    assert report["summary"] == {"inputs": 3, "ok": 1, "skipped": 0, "failed": 2}


# -------------------------------------------------------------------------------- outputs that collide or escape


def test_output_names_stay_inside_fit_and_never_collide(tmp_path, tiny):
    src = tmp_path / "in"
    long_stem = "x" * 246
    names = ["..png", ".hidden.png", "y/b.png", "z/b-2.png", "x/b.png", "a.png", "a.mask.png", "a_face1.png", "A.png",
             f"{long_stem}.png"]
    files = [_face(src / n, k) for k, n in enumerate(names)]
    out = src / "out"  # -o inside the input tree
    written = {out / "facefix-report.json"}
    for args, per_input in [(("invert", *files, "--save", "mask,latent"), 3),
                            # a sweep's labels are part of the names: a_age+1.png would be a's first sweep image
                            (("edit", files[5], _face(src / "a_age+1.png"), files[-1], "--age", "-1:1:2",
                              "--save", "mask"), 5)]:
        r, report = _run(tmp_path, out, *args, *COMMON, code=0)
        n = report["summary"]["inputs"]
        assert report["summary"] == {"inputs": n, "ok": n, "skipped": 0, "failed": 0}
        outputs = [o for row in report["inputs"] for o in row["outputs"]]
        assert len(outputs) == len(set(outputs)) == n * per_input
        assert all(Path(o).is_file() and Path(o).parent == out for o in outputs)
        for o in outputs:
            assert len(Path(o).name.encode()) <= 242, o  # + "." and ".PID.tmp" of the atomic writer: <= 255
            assert not Path(o).name.startswith(".")
        written |= set(map(Path, outputs))
        # a re-run finds every output under the same name: nothing is redone
        r, report = _run(tmp_path, out, *args, *COMMON, code=0)
        assert report["summary"]["skipped"] == n
    assert set(out.iterdir()) == written


def test_output_folder_inside_the_input_folder_is_not_searched(tmp_path, tiny):
    src = tmp_path / "photos"
    for k in range(2):
        _face(src / f"p{k}.png", k)
    for _ in range(2):
        r, report = _run(tmp_path, src / "edited", "invert", src, "--save", "mask,grid", *COMMON, code=0)
        assert report["summary"]["inputs"] == 2
    assert report["summary"]["skipped"] == 2


# -------------------------------------------------------------------------------- checkpoints and devices


DEVICES = ["meta", "xpu", "cuda:x", "cuda:99", "gpu"] + ([] if torch.cuda.is_available() else ["cuda"]) + \
    ([] if torch.backends.mps.is_available() else ["mps"])


@pytest.mark.parametrize("device", DEVICES)
def test_bad_or_absent_devices_are_usage_errors(tmp_path, tiny, device):
    r, _ = _run(tmp_path, tmp_path / "out", "invert", _face(tmp_path / "a.png"), "--device", device, *COMMON, code=2)
    assert f"--device {device}" in r.stderr or f"--device {device!r}" in r.stderr


@pytest.mark.parametrize("content", [struct.pack("<Q", 10 ** 12) + b"{}",  # header length past the end
                                     struct.pack("<Q", 8) + b"{not js}",  # header not JSON
                                     b"\x00\x01"])  # shorter than the length field
def test_corrupt_safetensors_checkpoint_is_one_line(tmp_path, tiny, content):
    bad = tmp_path / "gen.safetensors"
    bad.write_bytes(content)
    r, _ = _run(tmp_path, tmp_path / "out", "invert", _face(tmp_path / "a.png"), "--generator", bad, *COMMON, code=1)
    assert f"{bad}: corrupt safetensors file" in r.stderr and "internal error" not in r.stderr


def test_a_bug_exits_3_and_the_other_inputs_still_run(tmp_path, tiny, monkeypatch):
    from facefix.pipeline import FacefixPipeline

    encode, calls = FacefixPipeline.encode, []

    def flaky(self, x, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("simulated bug")
        return encode(self, x, **kw)

    monkeypatch.setattr(FacefixPipeline, "encode", flaky)
    faces = [_face(tmp_path / "in" / f"{k}.png", k) for k in range(2)]
    r, report = _run(tmp_path, tmp_path / "out", "invert", *faces, *COMMON, code=3, failed=faces[:1])
    assert "internal error: ZeroDivisionError" in r.stderr
    assert (tmp_path / "out" / "1.png").exists() and not (tmp_path / "out" / "0.png").exists()


# -------------------------------------------------------------------------------- real processes


def _facefix(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facefix", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, list[str]]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"facefix {proc.args[3:]} still running after {timeout} s")
    lines = err.decode(errors="replace").splitlines()
    assert "Traceback" not in err.decode(errors="replace") and all(ln.startswith("facefix: ") for ln in lines), lines
    return proc.returncode, lines


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipes_are_refused_never_opened(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    os.mkfifo(src / "inside.png")
    os.mkfifo(tmp_path / "named.jpg")
    code, lines = _finish(_facefix("align", tmp_path / "named.jpg", src, "-o", tmp_path / "out", "-q"))
    assert code == 1
    report = json.loads((tmp_path / "out" / "facefix-report.json").read_text())
    errors = {Path(r["input"]).name: r["error"] for r in report["inputs"]}
    assert errors == {"named.jpg": f"{tmp_path / 'named.jpg'}: a named pipe (FIFO), not an image file",
                      "inside.png": f"{src / 'inside.png'}: a named pipe (FIFO), not an image file"}


def test_sigterm_while_writing_removes_the_temp_file_and_a_resumed_run_cleans_up(tmp_path):
    from tests.test_cli import grace_path

    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        shutil.copy(grace_path(), src / f"g{k}.jpg")
    out = tmp_path / "out"
    args = ("align", src, "--size", "2048", "-q")  # a 2048 px PNG takes long enough to encode to be caught
    proc = _facefix(*args, "-o", out)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(out.glob(".*.tmp")):
            time.sleep(0.01)
        assert list(out.glob(".*.tmp")), "no write was caught in progress"
        proc.send_signal(signal.SIGTERM)
        code, lines = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 143 and lines == ["facefix: terminated"]
    assert list(out.glob(".*.tmp")) == []
    for p in out.glob("*.png"):
        with Image.open(p) as im:
            im.load()
    # a run killed outright (SIGKILL) leaves its temp file: the next run removes those of its own outputs only
    stale, foreign = out / ".g1_face0.png.99999999.tmp", out / ".notes.txt.99999999.tmp"
    stale.write_bytes(b"partial")
    foreign.write_bytes(b"someone else's")
    code, _ = _finish(_facefix(*args, "-o", out))
    assert code == 0 and not stale.exists() and foreign.exists()
    assert sorted(p.name for p in out.glob("*.png")) == ["g0_face0.png", "g1_face0.png"]
