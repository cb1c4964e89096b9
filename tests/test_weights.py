"""Tests for facefix.weights against a loopback fake Hugging Face Hub (127.0.0.1 only, never the network).

The fake hub is a ThreadingHTTPServer answering what ``huggingface_hub.hf_hub_download`` needs: HEAD and GET
on ``/{repo_id}/resolve/{revision}/{filename}`` with ``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``,
``X-Linked-Size``, ``Content-Length`` and ``Range`` (206) support. It records every request, can serve wrong
bytes, and can drop the connection half-way through a body. ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_CACHE``
point at it and at a tmp dir.

It also answers ``HfApi.get_paths_info``: ``POST /api/{repo_type}s/{repo_id}/paths-info/{revision}`` with a
form body ``paths=...&expand=...``, replying as the Hub does with a JSON list of
``{"type": "file", "path", "size", "oid" (git blob id), "lfs": {"oid" (sha256), "size", "pointerSize"}}``
for the paths it knows (unknown paths are left out, as on the Hub).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest
import torch

from facefix import weights
from facefix.errors import WeightsError

ROOT = Path(__file__).resolve().parents[1]
REV = "0123456789abcdef0123456789abcdef01234567"
REPO = "fake-org/fake-weights"


@dataclass
class FakeHub:
    """State shared with the request handler."""

    files: dict[str, bytes] = field(default_factory=dict)  # "repo/rev/filename" -> bytes served
    etags: dict[str, str] = field(default_factory=dict)  # same key -> sha256 used as the LFS etag
    lfs: dict[str, tuple[str, int]] = field(default_factory=dict)  # same key -> (sha256, size) in paths-info
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    drop_next_get_after: int | None = None  # bytes to send before closing the socket, once
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def add(
        self, filename: str, data: bytes, *, repo: str = REPO, rev: str = REV, etag: str | None = None
    ) -> None:
        key = f"{repo}/{rev}/{filename}"
        self.files[key] = data
        self.etags[key] = etag or hashlib.sha256(data).hexdigest()
        self.lfs[key] = (hashlib.sha256(data).hexdigest(), len(data))

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for m, _, _ in self.requests if m == method)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _lookup(self) -> tuple[str, bytes] | None:
            path = unquote(self.path.split("?", 1)[0]).lstrip("/")
            if "/resolve/" not in path:
                return None
            repo, rest = path.split("/resolve/", 1)
            rev, _, filename = rest.partition("/")
            key = f"{repo}/{rev}/{filename}"
            return (key, hub.files[key]) if key in hub.files else None

        def _serve(self, head: bool) -> None:
            with hub.lock:
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
            found = self._lookup()
            if found is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.send_header("X-Error-Code", "EntryNotFound")
                self.end_headers()
                return
            key, data = found
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and not head:
                start = int(rng[6:].split("-", 1)[0] or 0)
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", key.split("/")[2])
            self.send_header("ETag", f'"{hub.etags[key]}"')
            self.send_header("X-Linked-Etag", f'"{hub.etags[key]}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            with hub.lock:
                cut, hub.drop_next_get_after = hub.drop_next_get_after, None
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # drop mid-body
                return
            self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
            self._serve(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(head=False)

        def do_POST(self) -> None:  # noqa: N802 - the paths-info API
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            with hub.lock:
                hub.requests.append((self.command, self.path, None))
            path = unquote(self.path.split("?", 1)[0]).lstrip("/")
            if not path.startswith("api/") or "/paths-info/" not in path:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            repo, rev = path.split("/", 2)[2].split("/paths-info/", 1)
            infos = []
            for name in parse_qs(body).get("paths", []):
                key = f"{repo}/{rev}/{name}"
                if key in hub.lfs:
                    sha, size = hub.lfs[key]
                    infos.append({"type": "file", "path": name, "size": size, "oid": hashlib.sha1(name.encode())
                                  .hexdigest(), "lfs": {"oid": sha, "size": size, "pointerSize": 134}})
            out = json.dumps(infos).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    return Handler


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> Path:
    """Isolated HF home pointing at the fake hub; no facefix overrides, online, no real token."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("FACEFIX_")]:
        monkeypatch.delenv(var)
    return home


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def _entry(data: bytes, **kw: object) -> weights.WeightEntry:
    base = weights.WeightEntry(
        name="fakegen",
        filename="gen.pt",
        status="full",
        licence="test",
        purpose="test",
        repo_id=REPO,
        revision=REV,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        env="FACEFIX_GENERATOR",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _manifest(*entries: weights.WeightEntry) -> weights.Manifest:
    return weights.Manifest(entries=entries, source="test")


# -------------------------------------------------------------------------------- downloads


def test_first_download_then_cache_hit_without_requests(env: Path, hub: FakeHub) -> None:
    data = _payload()
    hub.add("gen.pt", data)
    man = _manifest(_entry(data))
    first = weights.resolve("fakegen", manifest=man)
    assert first.read_bytes() == data
    assert str(first).startswith(str(env / "hub"))
    assert hub.count("GET") == 1
    n = len(hub.requests)
    second = weights.resolve("fakegen", manifest=man)
    assert second == first
    assert len(hub.requests) == n, "a pinned commit in the cache must not hit the network"
    assert not [f for f in (env / "hub").rglob("*") if f.name.endswith((".sha256-ok", ".safetensors"))]
    assert list((env / "facefix" / "markers").glob("*.sha256-ok")), "HF cache files get central markers"
    out = weights.to_safetensors_cache(second, {"w": torch.ones(2)})
    assert out.parent == env / "facefix" / "safetensors"
    assert weights.load_safetensors_cache(second)["w"].sum() == 2
    assert weights.verify(manifest=man)[0].status == "ok"


def test_offline_hit_and_offline_miss(env: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _payload()
    hub.add("gen.pt", data)
    man = _manifest(_entry(data), _entry(b"other", name="missing", filename="missing.pt"))
    got = weights.resolve("fakegen", manifest=man)
    n = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.resolve("fakegen", manifest=man) == got
    with pytest.raises(WeightsError) as info:
        weights.resolve("missing", manifest=man)
    msg = str(info.value)
    assert "\n" not in msg
    assert "offline" in msg and "facefix weights download missing" in msg
    assert len(hub.requests) == n
    # explicit offline=False beats the env var; offline=True beats an unset env var
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsError, match="offline"):
        weights.resolve("missing", offline=True, manifest=man)


def test_sha256_mismatch_names_both_hashes_and_file_is_not_kept(env: Path, hub: FakeHub) -> None:
    good, bad = _payload(), _payload(seed=7)
    hub.add("gen.pt", bad)
    entry = _entry(good)
    with pytest.raises(WeightsError) as info:
        weights.resolve(entry)
    msg = str(info.value)
    assert entry.sha256 in msg and hashlib.sha256(bad).hexdigest() in msg and "fakegen" in msg
    snap = weights.path("fakegen", manifest=_manifest(entry))
    assert snap is not None and not snap.exists()
    blobs = list((env / "hub").rglob("blobs/*"))
    assert not [b for b in blobs if b.is_file() and b.read_bytes() == bad]


def test_interrupted_download_recovers_and_verifies(env: Path, hub: FakeHub) -> None:
    data = _payload(400_000)
    hub.add("gen.pt", data)
    hub.drop_next_get_after = 150_000
    entry = _entry(data)
    try:
        got = weights.resolve(entry)
    except WeightsError:  # a huggingface_hub without in-call retry: the next call must resume / restart
        got = weights.resolve(entry)
    assert got.read_bytes() == data
    gets = [r for r in hub.requests if r[0] == "GET"]
    assert len(gets) >= 2  # retried: resumed with Range if a chunk had been flushed, else restarted from 0
    assert weights.verify(manifest=_manifest(entry))[0].status == "ok"


def test_url_entry_download_and_mismatch(env: Path, hub: FakeHub) -> None:
    data = _payload(5000)
    hub.files["raw/age.pt"] = data
    hub.etags["raw/age.pt"] = "x"
    url_entry = weights.WeightEntry(
        name="age",
        filename="editings/age.pt",
        status="full",
        url=f"{hub.url}/raw/resolve/r/age.pt",
        local_name="interfacegan_age.pt",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )
    hub.add("age.pt", data, repo="raw", rev="r")
    seen: list[int] = []
    got = weights.resolve(url_entry, progress=lambda name, done, total: seen.append(done))
    assert got.name == "interfacegan_age.pt" and got.read_bytes() == data and seen[-1] == len(data)
    assert got.parent == env / "facefix" / "files"
    assert not list(got.parent.glob("*.part"))
    wrong = replace(url_entry, name="age2", local_name="age2.pt", sha256="0" * 64)
    with pytest.raises(WeightsError, match="0{64}"):
        weights.resolve(wrong)
    assert not (got.parent / "age2.pt").exists()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel completes them) and never answers: a captive portal
    or a firewall that swallows traffic, the case where a download would otherwise wait for minutes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _within(seconds: float, call) -> object:
    """``call()``'s result or exception, run in a thread; fails the test if it has not returned after ``seconds``
    (a hang, not a timing)."""
    box: list[object] = [None]

    def target() -> None:
        try:
            box[0] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box[0] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still waiting after {seconds} s"
    return box[0]


def test_a_server_that_never_answers_fails_in_one_line_with_no_partial_file(
        env: Path, silent_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from facefix.cli import app

    monkeypatch.setenv("HF_ENDPOINT", silent_server)
    monkeypatch.setenv(weights.ENV_DOWNLOAD_TIMEOUT, "1")
    hub_entry = _entry(b"x")
    url_entry = replace(hub_entry, name="urlgen", repo_id=None, url=f"{silent_server}/gen.pt")
    for entry in (hub_entry, url_entry):
        err = _within(60, lambda e=entry: weights.resolve(e, manifest=_manifest(e)))
        assert isinstance(err, WeightsError) and "\n" not in str(err) and entry.name in str(err), err
        assert "timed out" in str(err)
    assert [p for p in env.rglob("*") if p.is_file()] == []
    # the command: one line, exit 1
    monkeypatch.setattr(weights, "load_manifest", lambda *a: _manifest(hub_entry))
    result = _within(60, lambda: CliRunner().invoke(app, ["weights", "download", "fakegen"]))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "facefix: fakegen: cannot download" in \
        result.stderr, result.output
    monkeypatch.setenv(weights.ENV_DOWNLOAD_TIMEOUT, "soon")
    with pytest.raises(WeightsError, match="FACEFIX_DOWNLOAD_TIMEOUT"):
        weights.download_timeout()


# -------------------------------------------------------------------------------- overrides


def test_path_override_and_env_override(env: Path, hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"my own fine-tune")  # not the pinned hash: explicit paths are used as given
    man = _manifest(_entry(_payload()))
    assert weights.resolve("fakegen", override=mine, manifest=man) == mine
    monkeypatch.setenv("FACEFIX_GENERATOR", str(mine))
    assert weights.resolve("fakegen", manifest=man) == mine
    monkeypatch.delenv("FACEFIX_GENERATOR")
    monkeypatch.setenv("FACEFIX_FAKEGEN", str(mine))
    assert weights.resolve("fakegen", manifest=man) == mine
    monkeypatch.setenv("FACEFIX_FAKEGEN", str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="FACEFIX_FAKEGEN"):
        weights.resolve("fakegen", manifest=man)
    with pytest.raises(WeightsError, match="does not exist"):
        weights.resolve("fakegen", override=tmp_path / "nope.pt", manifest=man)
    assert hub.requests == []


def test_weights_dir_is_used_and_verified(env: Path, hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    data = _payload()
    wdir = tmp_path / "wdir"
    wdir.mkdir()
    (wdir / "gen.pt").write_bytes(data)
    monkeypatch.setenv("FACEFIX_WEIGHTS_DIR", str(wdir))
    entry = _entry(data)
    assert weights.resolve(entry) == wdir / "gen.pt"
    assert (wdir / "gen.pt.sha256-ok").is_file()
    (wdir / "gen.pt").write_bytes(_payload(seed=3))  # changed file: the marker no longer applies
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        weights.resolve(entry)
    assert (wdir / "gen.pt").exists(), "a user's own folder is never deleted from"
    assert hub.requests == []


def test_marker_skips_rehash(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _payload()
    wdir = tmp_path / "w"
    wdir.mkdir()
    (wdir / "gen.pt").write_bytes(data)
    monkeypatch.setenv("FACEFIX_WEIGHTS_DIR", str(wdir))
    weights.resolve(_entry(data))
    calls: list[Path] = []
    monkeypatch.setattr(weights, "sha256_file", lambda f: calls.append(Path(f)) or "")
    weights.resolve(_entry(data))
    assert calls == []


def test_incomplete_and_unavailable_entries_refuse(env: Path, hub: FakeHub, tmp_path: Path) -> None:
    inc = _entry(b"", name="mapper", status="incomplete", sha256=None, size=None, env=None)
    una = weights.WeightEntry(name="samm", filename="samm.pt", status="unavailable", note="Train one.")
    with pytest.raises(WeightsError, match="FACEFIX_MAPPER"):
        weights.resolve(inc)
    with pytest.raises(WeightsError, match="Train one"):
        weights.resolve(una)
    own = tmp_path / "m.pt"
    own.write_bytes(b"x")
    assert weights.resolve(inc, override=own) == own
    assert hub.requests == []


def test_list_verify_download(env: Path, hub: FakeHub) -> None:
    data = _payload()
    hub.add("gen.pt", data)
    man = _manifest(_entry(data), weights.WeightEntry(name="samm", filename="samm.pt", status="unavailable"))
    rows = {r.name: r for r in weights.list_entries(manifest=man)}
    assert not rows["fakegen"].present and not rows["samm"].present
    got = weights.download(manifest=man)
    assert list(got) == ["fakegen"]
    rows = {r.name: r for r in weights.list_entries(manifest=man)}
    assert rows["fakegen"].present and rows["fakegen"].path == got["fakegen"]
    results = {r.name: r for r in weights.verify(manifest=man)}
    assert results["fakegen"].ok and results["samm"].status == "missing"


# -------------------------------------------------------------------------------- loading


class _Evil:
    def __reduce__(self):  # noqa: D105 - would run os.getcwd on unpickling with weights_only=False
        return (os.getcwd, ())


def test_safe_torch_load_ok_code_truncated_missing(tmp_path: Path) -> None:
    ok = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(4.0)}, ok)
    assert torch.equal(weights.safe_torch_load(ok)["w"], torch.arange(4.0))
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": _Evil()}, evil)
    with pytest.raises(WeightsError, match="refusing to load: the file contains pickled code") as info:
        weights.safe_torch_load(evil)
    assert "\n" not in str(info.value) and "evil.pt" in str(info.value)
    trunc = tmp_path / "trunc.pt"
    torch.save({"w": torch.ones(2000)}, trunc)
    trunc.write_bytes(trunc.read_bytes()[:3000])
    with pytest.raises(WeightsError, match="trunc.pt: corrupt or truncated"):
        weights.safe_torch_load(trunc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt"):
        weights.safe_torch_load(junk)
    with pytest.raises(WeightsError, match="not found"):
        weights.safe_torch_load(tmp_path / "absent.pt")
    # torch.load reads *.safetensors through safetensors, whose header errors are their own exception type
    for content in (struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 8) + b"{not js}", b"\x01"):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(content)
        with pytest.raises(WeightsError, match="bad.safetensors: corrupt safetensors file") as info:
            weights.safe_torch_load(bad)
        assert "\n" not in str(info.value)


def test_safetensors_cache_roundtrip(env: Path, tmp_path: Path) -> None:
    src = tmp_path / "ck.pt"
    sd = {
        "g_ema": {"a.weight": torch.randn(3, 4), "b": torch.arange(5)},
        "latent_avg": torch.randn(8),
        "opts": 1,
    }
    sd["g_ema"]["tied"] = sd["g_ema"]["a.weight"]
    torch.save(sd, src)
    assert weights.load_safetensors_cache(src) is None
    out = weights.to_safetensors_cache(src, sd, dtype=torch.float16)
    assert out == tmp_path / "ck.pt.safetensors"
    back = weights.load_safetensors_cache(src)
    assert back is not None and back["g_ema"]["a.weight"].dtype == torch.float16
    assert torch.equal(back["g_ema"]["b"], sd["g_ema"]["b"])
    assert torch.allclose(back["latent_avg"].float(), sd["latent_avg"], atol=1e-2)
    torch.save({"other": torch.zeros(1)}, src)  # source changed: stale copy is ignored
    assert weights.load_safetensors_cache(src) is None
    out.write_bytes(struct.pack("<Q", 8) + b"{not js}")  # a damaged copy is ignored too (and rebuilt by the caller)
    assert weights.load_safetensors_cache(src) is None


# -------------------------------------------------------------------------------- manifest


def test_manifest_copies_identical() -> None:
    assert (ROOT / "weights" / "manifest.toml").read_bytes() == (
        ROOT / "facefix" / "manifest.toml"
    ).read_bytes()


def test_manifest_entries_well_formed() -> None:
    man = weights.load_manifest()
    names = man.names()
    assert len(names) == len(set(names))
    for must in (
        "stylegan2",
        "e4e",
        "restyle_e4e",
        "samm",
        "interfacegan_age",
        "interfacegan_smile",
        "interfacegan_pose",
        "ganspace_ffhq_pca",
        "ir_se50",
        "vgg19",
        "dlib_shape_predictor",
    ):
        assert must in names
    from facefix.edits import STYLECLIP_MAPPERS

    assert {n for n in names if n.startswith("styleclip_")} == {f"styleclip_{m}" for m in STYLECLIP_MAPPERS} | {
        "styleclip_fs3"}
    assert {"clip_vit_b32", "clip_vit_b32_config", "clip_vit_b32_vocab", "clip_vit_b32_merges"} <= set(names)
    for e in man:
        assert e.status in weights.STATUSES and e.licence and e.purpose
        if e.status in ("full", "bundled"):
            assert e.sha256 is not None and len(e.sha256) == 64 and int(e.sha256, 16) >= 0
            assert e.size and e.size > 0
            assert e.is_hub or (e.url or "").startswith("https://")
            if e.is_hub:
                assert e.revision and len(e.revision) == 40
        elif e.status == "commit":  # pinned by the source's commit: downloadable, checked against its metadata
            assert e.downloadable and e.sha256 is None and e.revision and len(e.revision) == 40
            assert e.is_hub or (e.git_blob and (e.url or "").startswith("https://"))
        else:
            assert not e.downloadable and (e.status != "unavailable" or e.note)
    assert man.get("stylegan2").env == "FACEFIX_GENERATOR"
    assert man.get("e4e").env == "FACEFIX_ENCODER"
    assert man.get("samm").env == "FACEFIX_SAMM"
    with pytest.raises(WeightsError, match="unknown checkpoint"):
        man.get("nope")


def test_partial_blob_from_a_killed_run_is_not_used(env: Path, hub: FakeHub) -> None:
    """A run killed mid-download leaves a partial ``blobs/<etag>...incomplete``. huggingface_hub 2.x
    downloads to a per-process temp name and resumes only within one call, so the next run fetches the whole
    file again; either way the result is complete and verified."""
    data = _payload(400_000)
    hub.add("gen.pt", data)
    entry = _entry(data)
    blobs = env / "hub" / ("models--" + REPO.replace("/", "--")) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{entry.sha256}.incomplete").write_bytes(data[:123_456])
    got = weights.resolve(entry)
    assert got.read_bytes() == data
    assert len([m for m, _, _ in hub.requests if m == "GET"]) == 1
    assert weights.verify(manifest=_manifest(entry))[0].status == "ok"


# -------------------------------------------------------------------------------- commit-pinned entries


def _commit_entry(**kw: object) -> weights.WeightEntry:
    base = weights.WeightEntry(name="mapper", filename="maps/m.pt", status="commit", licence="test",
                               purpose="test", repo_id=REPO, revision=REV)
    return replace(base, **kw)  # type: ignore[arg-type]


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_commit_pinned_hub_file_is_checked_against_the_hubs_metadata_and_recorded(env: Path, hub: FakeHub) -> None:
    data = _payload(200_000, seed=5)
    hub.add("maps/m.pt", data)
    entry = _commit_entry()
    man = _manifest(entry)
    assert entry.downloadable and [r.downloadable for r in weights.list_entries(manifest=man)] == [True]
    got = weights.resolve(entry)
    assert got.read_bytes() == data
    assert hub.requests[0][0] == "HEAD"  # the network probe (no body), then the metadata, then one download
    fetches = [(m, p) for m, p, _ in hub.requests if m != "HEAD"]
    assert fetches[0][0] == "POST" and "/api/models/fake-org/fake-weights/paths-info/" + REV in fetches[0][1]
    assert [m for m, _ in fetches].count("GET") == 1
    records = list((env / "facefix" / "pins").glob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert (rec["sha256"], rec["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    n = len(hub.requests)
    assert weights.resolve(entry) == got and len(hub.requests) == n  # checked against the record: no network
    assert weights.verify(manifest=man)[0].status == "ok"
    assert weights.list_entries(manifest=man)[0].size == len(data)


def test_commit_pinned_tampered_download_is_refused_and_removed(env: Path, hub: FakeHub) -> None:
    good, bad = _payload(150_000, seed=1), _payload(150_000, seed=2)
    hub.add("maps/m.pt", good)
    key = f"{REPO}/{REV}/maps/m.pt"
    hub.files[key], hub.etags[key] = bad, hashlib.sha256(bad).hexdigest()  # served bytes differ from the commit's
    entry = _commit_entry()
    with pytest.raises(WeightsError) as info:
        weights.resolve(entry)
    msg = _one_line(info)
    assert "mapper" in msg and "does not match the Hub's LFS metadata" in msg and hashlib.sha256(good).hexdigest() \
        in msg and "deleted it from the cache" in msg
    assert not [b for b in (env / "hub").rglob("*") if b.is_file() and b.read_bytes() == bad]
    assert not (env / "facefix" / "pins").exists() or not list((env / "facefix" / "pins").glob("*.json"))


def test_commit_pinned_path_missing_from_metadata_is_refused_without_download(env: Path, hub: FakeHub) -> None:
    data = _payload(1000)
    hub.add("maps/m.pt", data)
    hub.lfs.clear()  # the file is served but the commit's metadata does not list it
    with pytest.raises(WeightsError) as info:
        weights.resolve(_commit_entry())
    msg = _one_line(info)
    assert "maps/m.pt is not in the Hub's metadata" in msg and "refusing" in msg
    assert hub.count("GET") == 0 and hub.count("HEAD") == 1  # only the bodyless network probe


def test_commit_pinned_file_changed_after_download_never_loads(env: Path, hub: FakeHub, monkeypatch) -> None:
    data = _payload(120_000, seed=3)
    hub.add("maps/m.pt", data)
    entry = _commit_entry()
    got = weights.resolve(entry)
    blob = got.resolve()
    changed = bytearray(data)
    changed[1000] ^= 0xFF  # same size, one byte flipped, new mtime
    blob.write_bytes(bytes(changed))
    os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 10**9))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the record alone decides: no metadata call needed
    n = len(hub.requests)
    with pytest.raises(WeightsError) as info:
        weights.resolve(entry)
    msg = _one_line(info)
    assert "sha256 mismatch: recorded at download " + hashlib.sha256(data).hexdigest() in msg
    assert not blob.exists() and len(hub.requests) == n


def test_commit_pinned_offline_without_record_is_refused(env: Path, hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    data = _payload(5000)
    wdir = tmp_path / "w"
    wdir.mkdir()
    (wdir / "m.pt").write_bytes(data)
    monkeypatch.setenv("FACEFIX_WEIGHTS_DIR", str(wdir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        weights.resolve(_commit_entry())
    msg = _one_line(info)
    assert "offline" in msg and "facefix weights download mapper" in msg and "FACEFIX_MAPPER" in msg
    assert (wdir / "m.pt").exists() and hub.requests == []
    # online, the user's own copy is checked against the commit's metadata (and kept when it is wrong)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.add("maps/m.pt", _payload(5000, seed=9))
    with pytest.raises(WeightsError, match="does not match the Hub's LFS metadata.*not using it"):
        weights.resolve(_commit_entry())
    assert (wdir / "m.pt").exists()


def test_commit_pinned_url_file_is_checked_by_git_blob_id(env: Path, hub: FakeHub) -> None:
    data = _payload(70_000, seed=4)
    hub.add("fs3.npy", data, repo="gh", rev="c")
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    entry = weights.WeightEntry(name="fs3", filename="npy/fs3.npy", status="commit", revision=REV, git_blob=blob,
                                url=f"{hub.url}/gh/resolve/c/fs3.npy", licence="t", purpose="t")
    assert entry.downloadable
    got = weights.resolve(entry)
    assert got.read_bytes() == data and weights.git_blob_id(got) == blob
    assert weights.verify(manifest=_manifest(entry))[0].status == "ok"
    wrong = replace(entry, name="fs3b", local_name="fs3b.npy", git_blob="0" * 40)
    with pytest.raises(WeightsError) as info:
        weights.resolve(wrong)
    assert "git blob id mismatch" in _one_line(info) and "not saved" in str(info.value)
    assert not (got.parent / "fs3b.npy").exists()


def test_commit_status_rules_in_the_manifest() -> None:
    def parse(**kw: object) -> None:
        row = {"name": "x", "filename": "x.pt", "status": "commit", "licence": "l", "purpose": "p", **kw}
        weights._parse_manifest({"weights": [row]}, "m.toml")

    parse(repo_id="a/b", revision=REV)
    for kw, match in [({"repo_id": "a/b", "revision": "main"}, "40-hex revision"),
                      ({"repo_id": "a/b", "revision": REV, "sha256": "0" * 64}, "no sha256"),
                      ({"url": "https://x/y.npy", "revision": REV}, "git_blob"),
                      ({"url": "https://x/y.npy", "revision": REV, "git_blob": "XYZ"}, "git_blob must be")]:
        with pytest.raises(WeightsError, match=match):
            parse(**kw)


def test_weights_list_marks_commit_pinned_mappers_downloadable(env: Path) -> None:
    from tests.test_cli import run

    r = run("weights", "list")
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.output.splitlines() if ln.strip()}
    assert " download " in lines["styleclip_afro"] and " commit " in lines["styleclip_afro"]
    assert " download " in lines["e4e"] and lines["samm"].split()[1] == "-"


def test_download_without_names_skips_training_only_files(env: Path, hub: FakeHub) -> None:
    data, vgg = _payload(), _payload(1000, seed=1)
    hub.add("gen.pt", data)
    hub.add("vgg.pt", vgg)
    man = _manifest(_entry(data), _entry(vgg, name="fakevgg", filename="vgg.pt", purpose="training: perceptual"))
    assert list(weights.download(manifest=man)) == ["fakegen"]
    assert hub.count("GET") == 1
    assert list(weights.download(["fakevgg"], manifest=man)) == ["fakevgg"]  # named: fetched
    shipped = weights.load_manifest()
    assert {e.name for e in shipped if e.training_only} == {"ir_se50", "vgg19"}
    assert {"e4e", "stylegan2"} <= {e.name for e in shipped if e.downloadable and not e.training_only}
