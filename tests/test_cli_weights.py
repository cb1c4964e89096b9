"""`facefix weights download`: what it fetches without names, and its progress bar for URL downloads."""

from __future__ import annotations

import hashlib

from facefix import cli, weights
from tests.test_cli import run


def test_url_download_shows_a_bar_on_a_terminal_only(tmp_path, monkeypatch):
    data = bytes(range(256)) * 1200
    src = tmp_path / "src" / "age.pt"
    src.parent.mkdir()
    src.write_bytes(data)
    entry = weights.WeightEntry(name="fakeage", filename="age.pt", status="full", licence="test",
                                purpose="edit: test", url=src.as_uri(), sha256=hashlib.sha256(data).hexdigest(),
                                size=len(data))
    train = weights.WeightEntry(name="fakevgg", filename="vgg.pt", status="full", licence="test",
                                purpose="training: test", url=(tmp_path / "nowhere.pt").as_uri(), sha256="0" * 64,
                                size=1)
    monkeypatch.setattr(weights, "load_manifest", lambda path=None: weights.Manifest((entry, train), "test"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    r = run("weights", "download")  # not a terminal: no bar; the training-only entry is not fetched
    cached = weights.cache_dir() / "files" / "age.pt"
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"fakeage: {cached}" and cached.read_bytes() == data

    cached.unlink()
    monkeypatch.setattr(cli.core, "_terminal", lambda: True)
    r = run("weights", "download", "fakeage")
    assert r.exit_code == 0, r.output
    assert "fakeage" in r.output and "━" in r.output and "307.2" in r.output  # bar, bytes done (307.2 kB)
