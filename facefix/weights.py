"""Checkpoint files: the pinned manifest, Hub/URL downloads, sha256 checks, the cache, safe loading.

This is the only module that knows where weights live and the only one that reads ``HF_HUB_OFFLINE`` and the
cache location. It never prints; Hub downloads show huggingface_hub's tqdm bar (silence it with
``HF_HUB_DISABLE_PROGRESS_BARS=1``) and URL downloads report through an optional ``progress`` callback.

Where :func:`resolve` looks for a file, in order:

1. an explicit path (``--encoder PATH`` and friends), used as given (not hash-checked: it may be your own
   fine-tune);
2. an environment variable: ``FACEFIX_<NAME>`` (e.g. ``FACEFIX_STYLEGAN2``, ``FACEFIX_STYLECLIP_AFRO``) or the
   entry's alias from the manifest: ``FACEFIX_GENERATOR`` (stylegan2), ``FACEFIX_ENCODER`` (e4e),
   ``FACEFIX_RESTYLE`` (restyle_e4e), ``FACEFIX_SAMM`` (samm); also used as given;
3. ``$FACEFIX_WEIGHTS_DIR/<local name>`` (a folder filled by hand; checked when the manifest pins the file);
4. for ``bundled`` entries, the file shipped by a pip package (dlib's predictor in face-recognition-models);
5. the Hugging Face cache via ``hf_hub_download(repo_id, filename, revision=...)`` (honours ``HF_HOME``,
   ``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_TOKEN``; ``local_files_only`` when offline), or for non-Hub entries
   a urllib download into ``$HF_HOME/facefix/files/``; both checked against the pin;
6. otherwise :class:`~facefix.errors.WeightsError` with one line saying what to run.

Pins. A ``full`` entry carries its sha256 and size in the manifest. A ``commit`` entry is pinned by its source's
commit only, for files whose hash was never published (the StyleCLIP mappers): a Hub file is checked against the
LFS sha256 and size that the Hub's metadata gives for that 40-hex commit (``HfApi.get_paths_info``, read before
downloading, so a path missing there is refused without fetching anything); a file at a commit-pinned URL is
checked against its git blob id from that commit's tree (``sha1(b"blob <size>\0" + bytes)``; git hardens its
SHA-1 against the known collision attacks, and a second preimage for a fixed id is out of reach). Once a
commit-pinned file has passed, its sha256 and size are recorded under ``$HF_HOME/facefix/pins/``, and every
later load checks the file against that record, offline too: a file changed after its download never loads.

Downloads give up after ``$FACEFIX_DOWNLOAD_TIMEOUT`` seconds (default 30) without an answer, to connect or
between two reads: with no network, a one-line error comes within about that time, and no partial file is left.

A verified file gets a ``<file>.sha256-ok`` marker recording its size and mtime, so a 1.2 GB checkpoint is
hashed once, not on every run. A cached file whose hash is wrong is deleted and never used (a file in the
user's own folder is left alone, but still refused).

Loading: :func:`safe_torch_load` is ``torch.load(weights_only=True)`` with one-line errors, and
:func:`to_safetensors_cache` / :func:`load_safetensors_cache` keep a memory-mappable ``.safetensors`` copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from facefix.errors import WeightsError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "ENV_WEIGHTS_DIR",
    "ENV_DOWNLOAD_TIMEOUT",
    "Manifest",
    "WeightEntry",
    "EntryRow",
    "VerifyResult",
    "ProgressCallback",
    "load_manifest",
    "is_offline",
    "hf_home",
    "hub_cache_dir",
    "cache_dir",
    "resolve",
    "download",
    "download_timeout",
    "verify",
    "list_entries",
    "path",
    "sha256_file",
    "git_blob_id",
    "safe_torch_load",
    "safetensors_cache_path",
    "to_safetensors_cache",
    "load_safetensors_cache",
]

ENV_WEIGHTS_DIR = "FACEFIX_WEIGHTS_DIR"
ENV_DOWNLOAD_TIMEOUT = "FACEFIX_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer (connect, or between reads) before a download fails
STATUSES = ("full", "bundled", "commit", "incomplete", "unavailable")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_MARKER_SUFFIX = ".sha256-ok"
_PINS_DIR = "pins"
_CHUNK = 1 << 20

#: ``progress(name, bytes_done, bytes_total_or_None)``, called during URL downloads.
ProgressCallback = Callable[[str, int, "int | None"], None]


# -------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class WeightEntry:
    """One file facefix can use, as pinned in ``manifest.toml`` (field list at the top of that file)."""

    name: str
    filename: str
    status: str
    licence: str = ""
    purpose: str = ""
    repo_id: str | None = None
    repo_type: str = "model"
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    url: str | None = None
    local_name: str | None = None
    env: str | None = None
    package: str | None = None
    git_blob: str | None = None
    note: str = ""

    @property
    def cache_name(self) -> str:
        """The file name used in ``FACEFIX_WEIGHTS_DIR`` and the URL cache."""
        return self.local_name or self.filename.rsplit("/", 1)[-1]

    @property
    def env_vars(self) -> tuple[str, ...]:
        """Environment variables that override the path: the manifest alias first, then ``FACEFIX_<NAME>``."""
        own = "FACEFIX_" + re.sub(r"[^0-9A-Za-z]", "_", self.name).upper()
        return tuple(dict.fromkeys(v for v in (self.env, own) if v))

    @property
    def is_hub(self) -> bool:
        """True when the file comes from the Hugging Face Hub (otherwise from ``url``, or nowhere)."""
        return self.repo_id is not None and self.url is None

    @property
    def training_only(self) -> bool:
        """True for files only ``facefix train`` uses (``purpose = "training: ..."``), which :func:`download`
        skips unless named."""
        return self.purpose.startswith("training:")

    @property
    def downloadable(self) -> bool:
        """True when facefix may fetch it: pinned with a sha256 and a source, or by its source's commit
        (a Hub revision, or a URL with the git blob id of that commit's file)."""
        if self.status == "commit":
            return self.is_hub or (self.url is not None and self.git_blob is not None)
        return (
            self.status in ("full", "bundled")
            and self.sha256 is not None
            and (self.is_hub or self.url is not None)
        )


@dataclass(frozen=True)
class Manifest:
    """All entries of a manifest file, in file order."""

    entries: tuple[WeightEntry, ...]
    source: str = ""

    def __iter__(self) -> Iterator[WeightEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        """Entry names in file order."""
        return [e.name for e in self.entries]

    def get(self, name: str) -> WeightEntry:
        """The entry called ``name``; :class:`WeightsError` listing the known names otherwise."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise WeightsError(f"{name}: unknown checkpoint name; known: {', '.join(self.names())}")


_ENTRY_FIELDS = set(WeightEntry.__dataclass_fields__)


def _parse_manifest(data: Mapping[str, Any], source: str) -> Manifest:
    entries: list[WeightEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("weights", [])):
        unknown = set(raw) - _ENTRY_FIELDS
        if unknown:
            raise WeightsError(f"{source}: entry {i}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            entry = WeightEntry(**raw)
        except TypeError as err:
            raise WeightsError(f"{source}: entry {i}: {err}") from err
        if entry.name in seen:
            raise WeightsError(f"{source}: duplicate entry {entry.name!r}")
        if entry.status not in STATUSES:
            raise WeightsError(
                f"{source}: {entry.name}: status {entry.status!r} not one of {', '.join(STATUSES)}"
            )
        if entry.sha256 is not None and not _HEX64.match(entry.sha256):
            raise WeightsError(f"{source}: {entry.name}: sha256 must be 64 lowercase hex digits")
        if entry.status == "full" and (entry.sha256 is None or entry.size is None):
            raise WeightsError(f"{source}: {entry.name}: status 'full' needs sha256 and size")
        if entry.is_hub and entry.status in ("full", "bundled", "commit") and not _HEX40.match(entry.revision or ""):
            raise WeightsError(f"{source}: {entry.name}: a Hub pin needs a 40-hex revision")
        if entry.git_blob is not None and not _HEX40.match(entry.git_blob):
            raise WeightsError(f"{source}: {entry.name}: git_blob must be 40 lowercase hex digits")
        if entry.status == "commit":
            if entry.sha256 is not None:
                raise WeightsError(f"{source}: {entry.name}: a 'commit' entry has no sha256 (pinned ones are 'full')")
            if not entry.is_hub and (entry.git_blob is None or not _HEX40.match(entry.revision or "")):
                raise WeightsError(f"{source}: {entry.name}: a commit-pinned URL needs git_blob and a 40-hex revision")
        seen.add(entry.name)
        entries.append(entry)
    return Manifest(entries=tuple(entries), source=source)


@lru_cache(maxsize=8)
def _load_manifest_cached(path: str) -> Manifest:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise WeightsError(f"{path}: cannot read the weights manifest ({err})") from err
    return _parse_manifest(data, path)


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Parse a manifest (default: the ``facefix/manifest.toml`` shipped in the package). Cached per path."""
    target = Path(path) if path is not None else Path(__file__).with_name("manifest.toml")
    return _load_manifest_cached(str(target.resolve()))


def _entry(name: str | WeightEntry, manifest: Manifest | None) -> WeightEntry:
    if isinstance(name, WeightEntry):
        return name
    return (manifest or load_manifest()).get(name)


# -------------------------------------------------------------------------------- locations


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``HF_HUB_OFFLINE`` is set to a true value (read at call time)."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``."""
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface"


def hub_cache_dir() -> Path:
    """The Hub cache: ``$HF_HUB_CACHE``, else ``hf_home()/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return hf_home() / "hub"


def cache_dir() -> Path:
    """facefix's own cache (URL downloads, markers, safetensors copies): ``hf_home()/facefix``."""
    return hf_home() / "facefix"


def _hub_snapshot_path(entry: WeightEntry) -> Path:
    repo_dir = f"{entry.repo_type}s--" + (entry.repo_id or "").replace("/", "--")
    return hub_cache_dir() / repo_dir / "snapshots" / (entry.revision or "main") / entry.filename


def _url_cache_path(entry: WeightEntry) -> Path:
    return cache_dir() / "files" / entry.cache_name


def _bundled_path(entry: WeightEntry) -> Path | None:
    if not entry.package:
        return None
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for candidate in (Path(root) / "models" / entry.cache_name, Path(root) / entry.cache_name):
            if candidate.is_file():
                return candidate
    return None


def _download_hint(entry: WeightEntry) -> str:
    vars_ = " or ".join(entry.env_vars)
    if entry.downloadable:
        return f"run `facefix weights download {entry.name}` (or set {vars_} to a copy you have)"
    return f"pass a local path or set {vars_}"


# -------------------------------------------------------------------------------- hashing


def sha256_file(file: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _in_hub_cache(file: Path) -> bool:
    """True for files inside the huggingface_hub cache, whose layout facefix must not add files to."""
    try:
        file.resolve().relative_to(hub_cache_dir().resolve())
    except ValueError:
        return False
    return True


def _marker_paths(real: Path) -> list[Path]:
    """Candidate marker files: beside the file (not in the HF cache or site-packages), then a central one."""
    key = hashlib.sha256(str(real).encode()).hexdigest()[:32]
    central = cache_dir() / "markers" / (key + _MARKER_SUFFIX)
    if _in_hub_cache(real) or {"site-packages", "dist-packages"} & set(real.parts):
        return [central]
    return [real.with_name(real.name + _MARKER_SUFFIX), central]


def _stat_key(real: Path) -> dict[str, int]:
    st = real.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cached_sha256(file: Path) -> str | None:
    """The sha256 recorded by a marker for this exact size+mtime, if any."""
    real = file.resolve()
    try:
        key = _stat_key(real)
    except OSError:
        return None
    for marker in _marker_paths(real):
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if data.get("size") == key["size"] and data.get("mtime_ns") == key["mtime_ns"] and data.get("sha256"):
            return str(data["sha256"])
    return None


def _write_marker(file: Path, sha: str) -> None:
    real = file.resolve()
    payload = json.dumps({"sha256": sha, **_stat_key(real)})
    for marker in _marker_paths(real):
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(marker, payload)
            return
        except OSError:
            continue


def _atomic_write_text(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_sha256(file: Path, *, use_marker: bool = True) -> str:
    """sha256 of ``file``, from a valid marker when allowed, else hashed (and a marker written)."""
    if use_marker:
        cached = _cached_sha256(file)
        if cached is not None:
            return cached
    sha = sha256_file(file)
    _write_marker(file, sha)
    return sha


def _remove_cached(file: Path) -> None:
    """Delete a bad file from a cache: the symlink, its blob, and any markers."""
    real = file.resolve()
    for victim in {file, real, *_marker_paths(real)}:
        try:
            victim.unlink(missing_ok=True)
        except OSError:
            pass


def git_blob_id(file: str | os.PathLike[str]) -> str:
    """The git object id of a file's bytes: hex ``sha1(b"blob <size>\\0" + bytes)`` (what a commit's tree lists)."""
    p = Path(file)
    digest = hashlib.sha1(b"blob %d\0" % p.stat().st_size)
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(entry: WeightEntry, file: Path, detail: str, *, owned: bool) -> WeightsError:
    """Delete a bad file from a cache (``owned``) and return the one-line error that says so."""
    if owned:
        _remove_cached(file)
    what = "deleted it from the cache; download it again" if owned else "not using it"
    return WeightsError(f"{entry.name}: {detail} for {file} ({what})")


def _check(entry: WeightEntry, file: Path, expected: str, *, owned: bool, against: str = "expected") -> Path:
    """Check ``file`` against sha256 ``expected`` (cheap with a marker); mismatch: delete if owned, raise."""
    try:
        actual = _file_sha256(file)
    except OSError as err:
        raise WeightsError(f"{entry.name}: cannot read {file} ({err})") from err
    if actual != expected:
        raise _mismatch(entry, file, f"sha256 mismatch: {against} {expected}, got {actual}", owned=owned)
    return file


# -------------------------------------------------------------------------------- commit pins


@dataclass(frozen=True)
class _SourcePin:
    """What a commit-pinned file must be, from its source: LFS ``sha256`` + ``size``, or a git ``blob`` id."""

    source: str
    sha256: str | None = None
    size: int | None = None
    blob: str | None = None


def _source_name(entry: WeightEntry) -> str:
    where = entry.repo_id if entry.is_hub else entry.url
    return f"{where}@{(entry.revision or '')[:8]}"


def _record_path(entry: WeightEntry) -> Path:
    """Where the sha256 and size of a verified commit-pinned file are recorded: one JSON per source file."""
    ident = f"{entry.repo_type}:{entry.repo_id}@{entry.revision}/{entry.filename}" if entry.is_hub else \
        f"{entry.url}#{entry.git_blob}"
    return cache_dir() / _PINS_DIR / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".json")


def _recorded(entry: WeightEntry) -> dict[str, Any] | None:
    """``{"sha256", "size"}`` recorded when this commit-pinned file was first verified, else None."""
    try:
        data = json.loads(_record_path(entry).read_text())
    except (OSError, ValueError):
        return None
    sha, size = data.get("sha256"), data.get("size")
    return data if isinstance(sha, str) and _HEX64.match(sha) and isinstance(size, int) else None


def _hub_metadata(entry: WeightEntry) -> _SourcePin:
    """The LFS sha256 and size the Hub lists for ``entry.filename`` at ``entry.revision`` (one POST, no download)."""
    from huggingface_hub import HfApi

    source = _source_name(entry)
    try:
        infos = HfApi(endpoint=_hub_endpoint()).get_paths_info(
            entry.repo_id, [entry.filename], revision=entry.revision, repo_type=entry.repo_type)
    except Exception as err:  # HTTP errors, timeouts, offline: all mean "cannot verify"
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{entry.name}: cannot read the Hub's metadata for {source} ({detail})") from err
    info = next((i for i in infos if getattr(i, "path", None) == entry.filename and hasattr(i, "blob_id")), None)
    if info is None:
        raise WeightsError(f"{entry.name}: {entry.filename} is not in the Hub's metadata for {source}; "
                           "refusing to download it")
    lfs = info.lfs
    if lfs is not None and _HEX64.match(str(lfs.sha256)) and isinstance(lfs.size, int):
        return _SourcePin(f"the Hub's LFS metadata for {source}", sha256=lfs.sha256, size=lfs.size)
    if lfs is None and _HEX40.match(str(info.blob_id)):  # a small file kept in git itself
        return _SourcePin(f"the git blob id the Hub lists for {source}", blob=info.blob_id, size=info.size)
    raise WeightsError(f"{entry.name}: the Hub's metadata for {source} has no usable hash for {entry.filename}")


def _accept(entry: WeightEntry, file: Path, pin: _SourcePin, *, owned: bool) -> Path:
    """Check a commit-pinned file against its source's pin; on success record its sha256 and size (and a marker),
    so later loads are checked against the record; on failure delete it if ``owned`` and raise one line."""
    try:
        size = file.stat().st_size
        if pin.blob is not None and git_blob_id(file) != pin.blob:
            raise _mismatch(entry, file, f"git blob id differs from {pin.source} (expected {pin.blob})", owned=owned)
        actual = sha256_file(file)
    except OSError as err:
        raise WeightsError(f"{entry.name}: cannot read {file} ({err})") from err
    if pin.sha256 is not None and (actual, size) != (pin.sha256, pin.size):
        raise _mismatch(entry, file, f"does not match {pin.source} (sha256 {pin.sha256}, {pin.size} bytes; got "
                        f"{actual}, {size} bytes)", owned=owned)
    _record(entry, pin, actual, size)
    _write_marker(file, actual)
    return file


def _record(entry: WeightEntry, pin: _SourcePin, sha256: str, size: int) -> None:
    record = _record_path(entry)
    record.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(record, json.dumps({"name": entry.name, "source": pin.source, "sha256": sha256,
                                           "size": size}))


def _blob_pin(entry: WeightEntry) -> _SourcePin:
    assert entry.git_blob is not None
    return _SourcePin(f"git blob {entry.git_blob[:8]} of {_source_name(entry)}", blob=entry.git_blob)


def _verify_local(entry: WeightEntry, file: Path, *, owned: bool, offline: bool | None) -> Path:
    """Check a file found on disk for ``entry`` against its pin: the manifest's sha256, the record of a
    commit-pinned file, or (first time) the commit's git blob id or the Hub's metadata. Unpinned: as given."""
    if entry.sha256 is not None:
        return _check(entry, file, entry.sha256, owned=owned)
    if entry.status != "commit":
        return file
    record = _recorded(entry)
    if record is not None:
        return _check(entry, file, record["sha256"], owned=owned, against="recorded at download")
    if entry.git_blob is not None:
        return _accept(entry, file, _blob_pin(entry), owned=owned)
    if is_offline(offline):
        raise WeightsError(f"{entry.name}: {file} was never checked against the Hub's metadata and facefix is "
                           f"offline; run `facefix weights download {entry.name}` online, or pass the file as a "
                           f"path ({' or '.join(entry.env_vars)}) to use it as given")
    return _accept(entry, file, _hub_metadata(entry), owned=owned)


# -------------------------------------------------------------------------------- downloads


def download_timeout() -> float:
    """Seconds a download waits for an answer (to connect, or between two reads): ``$FACEFIX_DOWNLOAD_TIMEOUT``,
    default 30."""
    raw = os.environ.get(ENV_DOWNLOAD_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e6:
        raise WeightsError(f"${ENV_DOWNLOAD_TIMEOUT}={raw!r}: expected a number of seconds, e.g. 30")
    return value


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _probe_hub(entry: WeightEntry, endpoint: str | None, timeout: float) -> None:
    """One HEAD request for the file, without retries: with no network, or a server that never answers, fail now.

    huggingface_hub retries a failed request 5 times, then again with a 60 s timeout, which leaves a user without a
    network waiting for minutes and prints a warning per retry. HTTP errors (404, 401 gated) are left to
    ``hf_hub_download``, whose messages name them.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    url = hf_hub_url(entry.repo_id or "", entry.filename, repo_type=entry.repo_type, revision=entry.revision,
                     endpoint=endpoint)
    try:
        get_hf_file_metadata(url, timeout=timeout)  # no retries (huggingface_hub's default for this call)
    except HfHubHTTPError:
        return
    except Exception as err:  # connect/read timeouts, DNS, refused, TLS: all mean "no usable network"
        host = (endpoint or "https://huggingface.co").split("://")[-1].split("/")[0]
        raise WeightsError(f"{entry.name}: cannot download: no answer from {host} ({_first_line(err)}); check the "
                           "network connection") from err


def _hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _hub_download(entry: WeightEntry, *, offline: bool, probed: bool = False) -> Path:
    """``hf_hub_download`` with the timeout; ``probed``: :func:`_probe_hub` already ran for this entry."""
    from huggingface_hub import hf_hub_download  # local import: keeps `import facefix` light

    timeout = download_timeout()
    kwargs: dict[str, Any] = {
        "repo_id": entry.repo_id,
        "filename": entry.filename,
        "revision": entry.revision,
        "repo_type": entry.repo_type,
        "cache_dir": str(hub_cache_dir()),
        "local_files_only": offline,
        "etag_timeout": timeout,
    }
    if _hub_endpoint():
        kwargs["endpoint"] = _hub_endpoint()
    if not offline and not probed:
        _probe_hub(entry, kwargs.get("endpoint"), timeout)
    try:
        return Path(hf_hub_download(**kwargs))
    except Exception as err:  # huggingface_hub raises many types (HTTP, offline, OSError); all mean "no file"
        if offline:
            raise WeightsError(
                f"{entry.name}: not in the local cache and offline; {_download_hint(entry)}"
            ) from err
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"{entry.name}: download from {entry.repo_id}@{(entry.revision or 'main')[:8]} failed ({detail})"
        ) from err


def _url_download(entry: WeightEntry, target: Path, progress: ProgressCallback | None) -> Path:
    """urllib download to a temp file in the target folder, sha256 on the fly, then an atomic rename."""
    assert entry.url is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        request = urllib.request.Request(entry.url, headers={"User-Agent": "facefix"})
        with urllib.request.urlopen(request, timeout=download_timeout()) as response, os.fdopen(fd, "wb") as out:
            total = response.headers.get("Content-Length")
            total_n = int(total) if total and total.isdigit() else entry.size
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(entry.name, done, total_n)
    except (OSError, urllib.error.URLError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"{entry.name}: download from {entry.url} failed ({err})") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if entry.sha256 is not None and actual != entry.sha256:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"{entry.name}: sha256 mismatch for {entry.url}: expected {entry.sha256}, got {actual} "
            "(not saved)"
        )
    pin = None if entry.sha256 is not None else _blob_pin(entry)  # commit-pinned: the commit's git blob id
    if pin is not None and (blob := git_blob_id(tmp)) != pin.blob:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"{entry.name}: git blob id mismatch for {entry.url}: expected {pin.blob}, got {blob} "
                           "(not saved)")
    os.replace(tmp, target)
    if pin is not None:
        _record(entry, pin, actual, done)
    _write_marker(target, actual)
    return target


def _env_override(entry: WeightEntry) -> Path | None:
    for var in entry.env_vars:
        value = os.environ.get(var)
        if value:
            return _existing(entry, Path(value).expanduser(), f"${var}")
    return None


def _existing(entry: WeightEntry, file: Path, where: str) -> Path:
    if not file.is_file():
        raise WeightsError(f"{entry.name}: {file} (from {where}) does not exist or is not a file")
    return file


def _local(entry: WeightEntry) -> tuple[Path, bool] | None:
    """A file already on disk for ``entry`` from steps 3-5 of :func:`resolve`: ``(path, owned_by_cache)``."""
    weights_dir = os.environ.get(ENV_WEIGHTS_DIR)
    if weights_dir:
        candidate = Path(weights_dir).expanduser() / entry.cache_name
        if candidate.is_file():
            return candidate, False
    bundled = _bundled_path(entry)
    if bundled is not None:
        return bundled, False
    if entry.is_hub:
        snap = _hub_snapshot_path(entry)
        if snap.is_file():
            return snap, True
    elif entry.url is not None:
        cached = _url_cache_path(entry)
        if cached.is_file():
            return cached, True
    return None


def resolve(
    name: str | WeightEntry,
    override: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    *,
    manifest: Manifest | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """The local path of checkpoint ``name``, downloaded and verified if needed (order: module docstring).

    ``offline=None`` reads ``HF_HUB_OFFLINE``. Raises :class:`WeightsError` with one line naming what to do.
    """
    entry = _entry(name, manifest)
    if override is not None:
        return _existing(entry, Path(override).expanduser(), "the command line")
    from_env = _env_override(entry)
    if from_env is not None:
        return from_env
    local = _local(entry)
    if local is not None:
        return _verify_local(entry, local[0], owned=local[1], offline=offline)
    if entry.status == "unavailable":
        raise WeightsError(f"{entry.name}: no download available. {entry.note}".strip())
    if not entry.downloadable:
        raise WeightsError(
            f"{entry.name}: no pinned sha256 in the manifest, so facefix will not download it; "
            f"{_download_hint(entry)}"
        )
    offline = is_offline(offline)
    if entry.is_hub and entry.sha256 is None:  # commit-pinned: the Hub's metadata first, so a bad path costs nothing
        if offline:
            raise WeightsError(f"{entry.name}: not in the local cache and offline; {_download_hint(entry)}")
        _probe_hub(entry, _hub_endpoint(), download_timeout())  # no network: one line now, not minutes of retries
        pin = _hub_metadata(entry)
        return _accept(entry, _hub_download(entry, offline=False, probed=True), pin, owned=True)
    if entry.is_hub:
        assert entry.sha256 is not None
        return _check(entry, _hub_download(entry, offline=offline), entry.sha256, owned=True)
    if entry.url is not None:
        if offline:
            raise WeightsError(f"{entry.name}: not in the local cache and offline; {_download_hint(entry)}")
        return _url_download(entry, _url_cache_path(entry), progress)
    raise WeightsError(f"{entry.name}: the manifest has no source for it; {_download_hint(entry)}")


def download(
    names: Iterable[str] | None = None,
    *,
    manifest: Manifest | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Path]:
    """Fetch and verify ``names`` (default: every downloadable entry inference uses, i.e. not
    :attr:`~WeightEntry.training_only`) into the cache; ``{name: path}``.

    Honours ``HF_HUB_OFFLINE`` (then it only verifies what is cached). Path overrides (env vars) are not
    consulted: this fills the cache. Raises :class:`WeightsError` on the first failure.
    """
    man = manifest or load_manifest()
    entries = [man.get(n) for n in names] if names is not None else \
        [e for e in man if e.downloadable and not e.training_only]
    result: dict[str, Path] = {}
    for entry in entries:
        local = _local(entry)
        if local is not None:
            result[entry.name] = _verify_local(entry, local[0], owned=local[1], offline=None)
        else:
            result[entry.name] = resolve(entry, manifest=man, progress=progress)
    return result


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify` for one entry. ``status``: ok, missing, mismatch, unpinned."""

    name: str
    status: str
    path: Path | None
    expected: str | None
    actual: str | None
    message: str

    @property
    def ok(self) -> bool:
        """True when the file is present and matches (or is present and has no pin to check)."""
        return self.status in ("ok", "unpinned")


def verify(names: Iterable[str] | None = None, *, manifest: Manifest | None = None) -> list[VerifyResult]:
    """Re-hash local files (ignoring markers) against the manifest's sha256, or for commit-pinned entries the
    sha256 recorded at download (or their git blob id). Reports; never touches the network, downloads or deletes."""
    man = manifest or load_manifest()
    entries = [man.get(n) for n in names] if names is not None else list(man)
    results: list[VerifyResult] = []
    for entry in entries:
        local = _local(entry)
        record = _recorded(entry) if entry.status == "commit" else None
        expected = entry.sha256 or (record or {}).get("sha256")
        if local is None:
            results.append(VerifyResult(entry.name, "missing", None, expected, None, _download_hint(entry)))
            continue
        file = local[0]
        if expected is None and entry.git_blob is not None:
            actual = git_blob_id(file)
            status = "ok" if actual == entry.git_blob else "mismatch"
            msg = "ok (git blob id)" if status == "ok" else f"git blob id mismatch: expected {entry.git_blob}, " \
                f"got {actual}"
            results.append(VerifyResult(entry.name, status, file, entry.git_blob, actual, msg))
            continue
        if expected is None:
            msg = "pinned by commit; no sha256 recorded yet (run `facefix weights download " \
                f"{entry.name}`)" if entry.status == "commit" else "no sha256 pinned"
            results.append(VerifyResult(entry.name, "unpinned", file, None, None, msg))
            continue
        actual = _file_sha256(file, use_marker=False)
        if actual == expected:
            results.append(VerifyResult(entry.name, "ok", file, expected, actual, "ok"))
        else:
            msg = f"sha256 mismatch: expected {expected}, got {actual}"
            results.append(VerifyResult(entry.name, "mismatch", file, expected, actual, msg))
    return results


@dataclass(frozen=True)
class EntryRow:
    """One row of ``facefix weights list``."""

    name: str
    present: bool
    path: Path | None
    size: int | None
    licence: str
    status: str
    purpose: str
    downloadable: bool = False


def list_entries(*, manifest: Manifest | None = None) -> list[EntryRow]:
    """Every manifest entry with whether it is on disk and whether facefix may download it (no network, no
    hashing). ``size``: the manifest's, or for a commit-pinned file the size recorded at its download."""
    rows = []
    for entry in manifest or load_manifest():
        try:
            file: Path | None = _env_override(entry) or (_local(entry) or (None, False))[0]
        except WeightsError:
            file = None
        size = entry.size
        if size is None and entry.status == "commit":
            size = (_recorded(entry) or {}).get("size")
        rows.append(
            EntryRow(entry.name, file is not None, file, size, entry.licence, entry.status, entry.purpose,
                     entry.downloadable)
        )
    return rows


def path(name: str, *, manifest: Manifest | None = None) -> Path | None:
    """Where ``name`` is on disk now (env override, weights dir, bundled, cache), else where it would go.

    ``None`` when it can't be downloaded and isn't present. Never downloads or hashes.
    """
    entry = _entry(name, manifest)
    found = _env_override(entry) or (_local(entry) or (None, False))[0]
    if found is not None:
        return found
    if entry.is_hub and entry.downloadable:
        return _hub_snapshot_path(entry)
    if entry.url is not None and entry.downloadable:
        return _url_cache_path(entry)
    return None


# -------------------------------------------------------------------------------- loading


_GLOBAL_RE = re.compile(r"(?:Unsupported global|GLOBAL)\s*:?\s*(?:GLOBAL\s+)?([\w.]+)")


def safe_torch_load(file: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(file, weights_only=True, map_location=...)`` with one-line :class:`WeightsError`\\ s.

    - a pickle that carries code (anything but tensors, containers and plain values): refused, never executed;
    - a truncated or corrupt file: an error naming the file (download it again / check the path);
    - a missing file: an error naming it.
    """
    import torch
    from safetensors import SafetensorError

    p = Path(file)
    if not p.is_file():
        raise WeightsError(f"{p}: checkpoint file not found")
    try:
        with warnings.catch_warnings():
            # torch warns (with its own source path) before it fails on pickle protocol >= 4; the error says it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        restricted = "weights only" in msg.lower() or "weights_only" in msg  # torch's weights-only unpickler stopped
        match = _GLOBAL_RE.search(msg)
        if match and restricted:
            raise WeightsError(f"{p}: refusing to load: the file contains pickled code ({match.group(1)})") from err
        if "Unsupported operand 149" in msg:  # FRAME: pickle protocol 4+, which torch.save never writes by default
            raise WeightsError(f"{p}: refusing to load: pickle protocol 4 or later, which the weights-only loader "
                               "cannot check for pickled code; if it is your own tensor file, save it again with "
                               "torch.save(obj, path) (default protocol) or as .npy") from err
        if restricted:
            # Stopped before naming a global, at an opcode torch.save does not write: random bytes, or a plain
            # pickle that may carry code. Either way it is refused, and both are said.
            detail = next((ln.strip() for ln in msg.splitlines() if ln.strip().startswith("Unsupported")), "")
            raise WeightsError(f"{p}: refusing to load: corrupt file, or pickled code that is not plain weights"
                               f"{f' ({detail})' if detail else ''}") from err
        raise WeightsError(
            f"{p}: corrupt or truncated checkpoint ({msg.strip().splitlines()[0][:160]})"
        ) from err
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise WeightsError(f"{p}: corrupt or truncated checkpoint, download it again ({first})") from err
    except SafetensorError as err:  # torch.load hands *.safetensors files to safetensors (bad header, bad JSON)
        raise WeightsError(f"{p}: corrupt safetensors file ({_first_line(err)})") from err


def safetensors_cache_path(source: str | os.PathLike[str]) -> Path:
    """Where :func:`to_safetensors_cache` puts the copy of ``source``: ``<file>.safetensors`` next to it, or
    under ``cache_dir()/safetensors`` when that folder is not writable or is inside the HF cache."""
    src = Path(source)
    beside = src.with_name(src.name + ".safetensors")
    if os.access(src.parent, os.W_OK) and not _in_hub_cache(src):
        return beside
    key = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "safetensors" / f"{key}-{src.name}.safetensors"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    import torch

    flat: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            flat[full] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten(value, full + "/"))
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def to_safetensors_cache(
    source: str | os.PathLike[str], state_dict: Mapping[str, Any], dtype: Any = None
) -> Path:
    """Save the tensors of a loaded checkpoint (nested dicts allowed) as a ``.safetensors`` copy of a file.

    Nested keys are joined with ``/`` (``g_ema/conv1.conv.weight``); non-tensor values are dropped. ``dtype``
    (e.g. ``torch.float16``) converts floating-point tensors. The metadata records ``source_sha256``, so
    :func:`load_safetensors_cache` ignores a copy made from different bytes. Written atomically; returns its
    path.
    """
    import torch
    from safetensors.torch import save_file

    src = Path(source)
    sha = _file_sha256(src)
    flat = _flatten(state_dict)
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in flat.items():
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        if (
            t.untyped_storage().data_ptr() in seen
            or t.numel() != t.untyped_storage().nbytes() // t.element_size()
        ):
            t = t.clone()  # safetensors refuses shared or partial storage
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    target = safetensors_cache_path(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    os.close(fd)
    meta = {
        "source_sha256": sha,
        "source_name": src.name,
        "dtype": str(dtype) if dtype is not None else "original",
    }
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_safetensors_cache(source: str | os.PathLike[str], device: str = "cpu") -> dict[str, Any] | None:
    """The nested tensors saved by :func:`to_safetensors_cache` for ``source`` (memory-mapped), or ``None``
    when there is no copy, it is unreadable, or it was made from a file with a different sha256."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    src = Path(source)
    target = safetensors_cache_path(src)
    if not target.is_file():
        return None
    try:
        with safe_open(str(target), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("source_sha256") != _file_sha256(src):
            return None
        return _unflatten(load_file(str(target), device=device))
    except (OSError, RuntimeError, ValueError, SafetensorError):  # a damaged copy is rebuilt from the source
        return None
