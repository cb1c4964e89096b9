"""Batch inputs: which files a command line names, what each output is called, and which shard runs which file.

Pure functions (no models, no printing), so scripts and tests can predict a run's outputs exactly.

- Inputs: files, folders (recursive; image files recognised by their first bytes, not their extension, so
  ``IMG_0001`` without a suffix counts and ``notes.jpg`` holding text does not), glob patterns, and ``-`` (one path
  per line on stdin). Order: as given, folders sorted, duplicates dropped.
  A folder entry is left out only when facefix could read it and it is not an image: an unreadable file, a broken
  symbolic link or a named pipe is an input (reported as failed), never silently dropped. Non-regular files are
  never opened (a named pipe would block). Folders are searched without the ``-o`` folder when it lies inside
  them, so a re-run does not take its own outputs as inputs.
- Names: an input found in folder ``D`` at ``D/a/b/photo.jpg`` gets the output key ``a/b/photo``; a file named
  directly gets ``photo``. Keys are relative paths built only from the names under the input root, so nothing can
  land outside ``-o``; leading dots are dropped (``..png`` -> ``image``: no hidden outputs, and never ``-o``'s
  parent). Every output name fits in 255 bytes: a name part longer than :data:`KEY_BYTES` becomes its first bytes
  plus ``~`` and 8 hex digits of its sha256. Two inputs whose outputs could share a name get distinct keys: the
  same key (``x/photo.jpg`` and ``y/photo.jpg`` named directly, or names differing only in case) gives ``photo``
  and ``photo-2`` in input order, skipping any ``photo-N`` another input is called; a key that is another key plus
  an output suffix (``a.mask`` next to ``a``, whose ``--save mask`` is ``a.mask.png``; ``a_face1``; ``a_<edit>``
  in a sweep) gets ``-2``.
- Shards: ``--shard I/N`` keeps the inputs whose position in the full, named list is ``I`` mod ``N``: the N shards
  partition the inputs exactly, and names do not depend on the shard.

Running a command over the inputs (below the pure functions): :func:`run_inputs` calls a per-input ``work`` and
records each input in a :class:`RunReport` (``facefix-report.json``); :class:`PhotoRun` is that work for ``invert``
and ``edit`` (output plan, resume, groups, prefetch, writing; the model stages are :mod:`facefix.photo`'s), and
:class:`AlignRun` for ``align``. Nothing here prints: progress goes to a callback.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from facefix.config import MaskMode
from facefix.errors import FacefixError, InputError, UsageError

if TYPE_CHECKING:  # the models are imported when a run needs them: `facefix --version` and `align` stay light
    from facefix.align import FaceDetector
    from facefix.edits import Variant
    from facefix.photo import FaceResult, PhotoFaces, PhotoOptions
    from facefix.pipeline import FacefixPipeline

# First bytes of the formats facefix reads (image_io): JPEG, PNG, GIF, WebP (RIFF....WEBP), TIFF (both byte
# orders, BigTIFF), BMP.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"II+\x00",
          b"MM\x00+", b"BM")
_GLOB_CHARS = set("*?[")
# Output names: a file name has at most 255 bytes, and the atomic writer's temp name ".NAME.PID.tmp" adds up to 13.
# A key's last part keeps at most KEY_BYTES and a sweep label LABEL_BYTES, so the longest output name
# (KEY-N_faceK_LABEL.aligned.png) stays well inside the rest.
KEY_BYTES = 120
LABEL_BYTES = 60
# The extra outputs' part between a key (+ "_faceK") and the file type: KEY.mask.png, KEY.latent.pt, ...
_EXTRAS = r"(?:\.(?:aligned|mask|latent|grid|sweep))?"


def _head(path: Path) -> bytes | None:
    """The first 12 bytes of a regular file; None when it cannot be read or is not a regular file."""
    from facefix.errors import InputError
    from facefix.image_io import read_regular_file  # lazy: keeps `facefix --version` free of numpy and PIL

    try:
        return read_regular_file(path, 12)
    except InputError:
        return None


def _magic(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _MAGIC)


def looks_like_image(path: Path) -> bool:
    """Whether a file starts like an image facefix can read (by content; unreadable files count as no)."""
    head = _head(path)
    return head is not None and _magic(head)


def _is_input(path: Path) -> bool:
    """Whether a folder entry or glob match is an input: an image, or anything facefix cannot tell is not one
    (unreadable, broken link, pipe, device), so its error is reported instead of the file vanishing from the run."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return True
    if stat.S_ISDIR(mode):
        return False
    head = _head(path) if stat.S_ISREG(mode) else None
    return head is None or _magic(head)


@dataclass(frozen=True)
class InputFile:
    """One input: its path and its output key (relative path without suffix, ``/``-separated)."""

    path: Path
    key: str


def _inside(path: Path, folder: Path) -> tuple[str, ...] | None:
    """``path``'s parts below ``folder`` when it lies strictly inside it (both resolved), else None."""
    try:
        rel = path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return None
    return rel.parts or None


def _folder_files(folder: Path, exclude: Iterable[Path] = ()) -> list[tuple[Path, str]]:
    skip = [parts for e in exclude if (parts := _inside(e, folder)) is not None]
    out = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or any(rel[:len(s)] == s for s in skip):
            continue
        if _is_input(f):
            out.append((f, f.relative_to(folder).with_suffix("").as_posix()))
    return out


def fit_name(name: str, max_bytes: int) -> str:
    """``name`` if its UTF-8 form has at most ``max_bytes`` bytes, else its longest prefix that leaves room for
    ``~`` and 8 hex digits of the whole name's sha256 (deterministic; different long names stay different)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= max_bytes:
        return name
    tag = "~" + hashlib.sha256(raw).hexdigest()[:8]
    keep, size = [], 0
    for ch in name:
        n = len(ch.encode("utf-8", "surrogateescape"))
        if size + n > max_bytes - len(tag):
            break
        keep.append(ch)
        size += n
    return "".join(keep) + tag


def _own_name(key: str) -> str:
    """An input's key with a last part that is safe as a file name: no leading dots, no NUL, short enough."""
    head, _, last = key.rpartition("/")
    last = fit_name(last.lstrip(".").replace("\0", "_"), KEY_BYTES) or "image"
    return f"{head}/{last}" if head else last


def _same_file(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, ValueError):  # a NUL byte in a name from stdin: reported when the input is read
        return str(path.absolute())


def _unique_keys(keys: list[str], labels: Iterable[str]) -> list[str]:
    """Keys whose outputs can never share a file name (see the module docstring), in input order."""
    lab = "|".join(re.escape(x) for x in sorted(set(labels), key=len, reverse=True))
    suffix = re.compile(r"(?:_face\d+)?" + (f"(?:_(?:{lab}))?" if lab else "") + _EXTRAS)

    def owners(key: str) -> list[str]:
        """The keys whose outputs would be named like this key's: ``a`` for ``a.mask``, ``a_face1``."""
        start = key.rfind("/") + 2
        return [key[:i].casefold() for i in range(start, len(key)) if key[i] in "._" and suffix.fullmatch(key, i)]

    natural = {k.casefold() for k in keys}
    extended = {o for k in keys for o in owners(k)}  # keys that another input's key extends
    taken: set[str] = set()
    out = []
    for key in keys:
        k, n = key, 1
        while k.casefold() in taken or any(o in natural or o in taken for o in owners(k)) or \
                (n > 1 and (k.casefold() in natural or k.casefold() in extended)):
            n += 1
            k = f"{key}-{n}"
        taken.add(k.casefold())
        extended.update(owners(k))
        out.append(k)
    return out


def collect_inputs(items: Iterable[str], stdin: TextIO | None = None, exclude: Iterable[Path] = (),
                   labels: Iterable[str] = ()) -> list[InputFile]:
    """Expand command-line INPUTs into named input files.

    Files named directly are kept even if they do not look like images, so the user gets a per-file error for
    them instead of silence; so is a missing path that is not a glob pattern.

    Args:
        exclude: folders left out of folder and glob searches (the ``-o`` folder).
        labels: the sweep labels of this run (:func:`safe_label`), which become part of output names.
    """
    exclude = list(exclude)
    found: list[tuple[Path, str]] = []
    for item in items:
        if item == "-":
            lines = (stdin or sys.stdin).read().splitlines()
            found += [(Path(s.strip()), Path(s.strip()).stem) for s in lines if s.strip()]
            continue
        p = Path(item)
        if p.is_dir():
            found += _folder_files(p, exclude)
        elif p.exists():
            found.append((p, p.stem))
        elif _GLOB_CHARS & set(item):
            for m in sorted(glob.glob(item, recursive=True)):
                mp = Path(m)
                if mp.is_dir():
                    found += _folder_files(mp, exclude)
                elif not any(_inside(mp, e) for e in exclude) and _is_input(mp):
                    found.append((mp, mp.stem))
        else:
            found.append((p, p.stem))  # reported per input as "file not found", the others still run
    seen: set[str] = set()
    unique = []
    for path, key in found:
        real = _same_file(path)
        if real not in seen:
            seen.add(real)
            unique.append((path, _own_name(key)))
    keys = _unique_keys([k for _, k in unique], labels)
    return [InputFile(path, key) for (path, _), key in zip(unique, keys, strict=True)]


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None -> None."""
    if spec is None:
        return None
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise UsageError(f"--shard {spec!r}: expected I/N, e.g. 0/4 (0-based)") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {spec}: need 0 <= I < N")
    return i, n


def select_shard(inputs: list[InputFile], shard: tuple[int, int] | None) -> list[InputFile]:
    """The inputs of shard (I, N): positions I, I+N, I+2N, ... of the full list."""
    if shard is None:
        return inputs
    i, n = shard
    return inputs[i::n]


def safe_label(label: str) -> str:
    """An edit label (``age+3,eye_openness=20``) as a file-name part: ``age+3_eye_openness=20`` (at most
    :data:`LABEL_BYTES` bytes, see :func:`fit_name`)."""
    keep = "".join(c if c.isalnum() or c in "+-=._" else "_" for c in label)
    return fit_name(keep.strip("._"), LABEL_BYTES) or "edit"


def input_error(path: Path, err: BaseException) -> str:
    """The report line of an input that failed with ``err``: its message, after the input's path unless the message
    names the file already (errors from the models do not know which photo they came from)."""
    msg = str(err)
    return msg if str(path) in msg else f"{path}: {msg}"


def remove_stale_temps(out: Path, items: Iterable[InputFile]) -> list[Path]:
    """Delete the temp files a killed earlier run left while writing outputs of these inputs under ``out`` (see
    :func:`facefix.image_io.stale_temp_files`); temp files of running processes and of other files are kept.
    Returns the removed paths."""
    from facefix.image_io import stale_temp_files

    names: dict[Path, set[str]] = {out: {"facefix-report"}}
    for item in items:
        target = out / item.key
        names.setdefault(target.parent, set()).add(target.name)
    output = re.compile(r"(?:_face\d+)?(?:_.*)?" + _EXTRAS + r"\.\w+", re.DOTALL)
    removed = []
    for folder, keys in names.items():
        for tmp, target in stale_temp_files(folder):
            if any(target.startswith(k) and output.fullmatch(target, len(k)) for k in keys):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def find_images(folder: Path) -> list[Path]:
    """The image files below ``folder`` as a folder INPUT is searched: recursive, by content, hidden names skipped,
    sorted by path."""
    return [path for path, _ in _folder_files(folder)]


# -- running a command over the inputs ---------------------------------------------------------------------------

REPORT_NAME = "facefix-report.json"
EXTRA_OUTPUTS = {"aligned": ".aligned.png", "mask": ".mask.png", "latent": ".latent.pt", "grid": ".grid.png"}
"""Extra per-face outputs (``--save``) -> file suffix."""


def select_inputs(items: Iterable[str], shard: str | None = None, exclude: Iterable[Path] = (),
                  labels: Iterable[str] = ()) -> list[InputFile]:
    """Collect the INPUTs (see :func:`collect_inputs`) and keep this shard's; :class:`UsageError` when none are
    left."""
    selected = select_shard(collect_inputs(items, exclude=exclude, labels=labels), parse_shard(shard))
    if not selected:
        raise UsageError("no input images found" + (" in this shard" if shard else ""))
    return selected


def make_output_dir(output: Path) -> None:
    """Create the output folder; :class:`UsageError` when it cannot be created or written to."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{output}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(output, os.W_OK):
        raise UsageError(f"{output}: the output folder is not writable")


@dataclass
class InputReport:
    """One row of ``facefix-report.json``."""

    input: str
    status: str = "ok"  # ok | skipped | failed
    outputs: list[str] = field(default_factory=list)
    faces: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Accumulate the wall time of a stage (load, detect, encode, render, write) in ``timings``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)


@dataclass
class RunReport:
    """A run over the inputs: what ``facefix-report.json`` holds, and how many inputs failed on a bug in facefix
    (an exception that is not a :class:`FacefixError` or MemoryError; not in the JSON)."""

    command: str
    options: dict[str, Any]
    inputs: list[InputReport]
    internal_errors: int = 0

    @property
    def failed(self) -> list[InputReport]:
        return [r for r in self.inputs if r.status == "failed"]

    def summary(self) -> dict[str, int]:
        return {"inputs": len(self.inputs), "ok": sum(r.status == "ok" for r in self.inputs),
                "skipped": sum(r.status == "skipped" for r in self.inputs), "failed": len(self.failed)}

    def to_json(self) -> str:
        from facefix import __version__

        return json.dumps({"facefix": __version__, "command": self.command, "options": self.options,
                           "summary": self.summary(), "inputs": [asdict(r) for r in self.inputs]}, indent=2)

    def write(self, out_dir: Path) -> None:
        """Write ``out_dir/facefix-report.json`` atomically."""
        from facefix.image_io import atomic_write_bytes

        atomic_write_bytes(out_dir / REPORT_NAME, self.to_json().encode())


def describe_error(item: InputFile, err: Exception) -> str:
    """The report line of an input that failed with ``err``."""
    if isinstance(err, FacefixError):
        return input_error(item.path, err)
    if isinstance(err, MemoryError):
        return f"{item.path}: out of memory"
    return f"{item.path}: internal error: {type(err).__name__}: {err}"


def run_inputs(command: str, options: dict[str, Any], inputs: list[InputFile],
               work: Callable[[InputFile, InputReport], None],
               done: Callable[[int, InputFile, InputReport], None] | None = None,
               describe: Callable[[InputFile, Exception], str] = describe_error) -> RunReport:
    """Run ``work`` per input, in order; one bad input never stops the others.

    ``work`` fills the input's row (outputs, faces, stage timings, ``skipped``) and raises on failure; the row
    then records ``describe(item, err)``, called inside the ``except`` block (a caller may print the traceback).
    ``done(i, item, row)`` is called after each input (i = 1..n), e.g. to show progress.
    """
    run = RunReport(command, options, [])
    for i, item in enumerate(inputs, 1):
        rep = InputReport(input=str(item.path))
        t0 = time.perf_counter()
        try:
            work(item, rep)
        except Exception as e:  # noqa: BLE001 - recorded per input, the run goes on
            rep.status, rep.error = "failed", describe(item, e)
            run.internal_errors += not isinstance(e, (FacefixError, MemoryError))
        rep.seconds = round(time.perf_counter() - t0, 3)
        run.inputs.append(rep)
        if done is not None:
            done(i, item, rep)
    return run


@dataclass
class _Job:
    """One input of a group: its faces, planned outputs and, once its group ran, per face its results."""

    item: InputFile
    faces: PhotoFaces
    timings: dict[str, float]
    tags: list[str]
    planned: list[Path] = field(default_factory=list)
    complete: bool = False
    latents: list[Any] = field(default_factory=list)  # per face a saved W+ code [1,L,D] (--latent)
    results: list[FaceResult | None] = field(default_factory=list)
    error: Exception | None = None

    @property
    def n(self) -> int:
        return len(self.faces.crops)


class PhotoRun:
    """The per-input work of ``facefix invert`` / ``facefix edit``: plan the outputs, find the faces, encode once,
    render the inversion and every edit, paste back, write. Outputs are planned first, so existing ones are skipped
    and inputs never overwritten. Call it as ``work`` of :func:`run_inputs`, in input order.

    Batching: inputs are taken in consecutive groups of ``options.batch_size`` (by position in the input list), and
    the faces of a group are encoded and rendered together, up to ``batch_size`` faces per model call. Batched
    float arithmetic differs from batch 1 in the last bits, so groups depend only on the input list: a group with
    any work left is computed whole (its finished inputs are recomputed, not rewritten), and a resumed run writes
    the same bytes as an uninterrupted one.

    Decoding, detection and alignment of the next inputs run in a background thread while the models work on the
    current group (PIL, dlib's C++ and torch release the GIL); only that thread uses the face detector.

    Args:
        pipe: the loaded models.
        inputs: every input of the run, in order (groups and prefetch follow it).
        options: resolved (:meth:`facefix.photo.PhotoOptions.for_pipeline`).
        edits: the edits to render (several for a sweep); empty for a plain inversion.
        output: the output folder; outputs are named after the inputs' keys.
        extras: extra outputs, keys of :data:`EXTRA_OUTPUTS`.
        overwrite: recompute and replace existing outputs (default: skip inputs whose outputs all exist).
        latents: saved W+ codes to use instead of encoding: one ``.pt`` file, or the output folder of an earlier
            run with ``latent`` in its extras (looked up by the same names).
    """

    def __init__(self, pipe: FacefixPipeline, inputs: list[InputFile], options: PhotoOptions,
                 edits: Sequence[Variant], output: Path, extras: Iterable[str] = (), overwrite: bool = False,
                 latents: Path | None = None):
        self.pipe, self.inputs, self.options, self.edits = pipe, inputs, options, list(edits)
        self.output, self.extras, self.overwrite, self.latents = output, set(extras), overwrite, latents
        self.sweep = len(self.edits) > 1
        self.labels = [safe_label(v.label) for v in self.edits] if self.sweep else [""]
        self.size = options.batch_size or 1
        self._position = {item: i for i, item in enumerate(inputs)}
        self._detector: FaceDetector | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facefix-load")
        self._pending: dict[InputFile, Future] = {}
        self._group: dict[int, dict[InputFile, _Job | Exception]] = {}

    def __enter__(self) -> PhotoRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- CPU side: decode, detect, align (in the background thread) -----------------------------------------
    def _load(self, item: InputFile) -> tuple[PhotoFaces, dict[str, float]]:
        from facefix.align import FaceDetector
        from facefix.image_io import load_image
        from facefix.photo import find_faces

        t0 = time.perf_counter()
        photo = load_image(item.path)
        t1 = time.perf_counter()
        if self._detector is None and self.options.needs_detector:
            self._detector = FaceDetector()
        faces = find_faces(photo, self.options, self._detector)
        return faces, {"load": round(t1 - t0, 3), "detect": round(time.perf_counter() - t1, 3)}

    def _loaded(self, item: InputFile) -> tuple[PhotoFaces, dict[str, float]]:
        """This input's CPU stages (already running if prefetched); starts those of the next ``size`` inputs."""
        fut = self._pending.pop(item, None) or self._pool.submit(self._load, item)
        at = self._position[item]
        for nxt in self.inputs[at + 1: at + 1 + self.size]:
            if nxt not in self._pending:
                self._pending[nxt] = self._pool.submit(self._load, nxt)
        return fut.result()

    # -- output names ----------------------------------------------------------------------------------------
    def _face_path(self, job: _Job, k: int, suffix: str) -> Path:
        return Path(f"{self.output / job.item.key}{job.tags[k]}{suffix}")

    def _main_path(self, job: _Job, k: int, j: int) -> Path:
        from facefix.image_io import suffix_for

        lab = f"_{self.labels[j]}" if self.sweep else ""
        if self.options.pastes:
            return Path(f"{self.output / job.item.key}{lab}{suffix_for(job.faces.photo)}")
        return self._face_path(job, k, f"{lab}.png")

    def _plan(self, item: InputFile) -> _Job:
        """Load an input, name its outputs, read its saved codes."""
        from facefix.latents import load_latent

        faces, timings = self._loaded(item)
        n, which = len(faces.crops), self.options.face
        tags = [f"_face{which if isinstance(which, int) else k}" if n > 1 or isinstance(which, int) else ""
                for k in range(n)]
        job = _Job(item, faces, dict(timings), tags)
        planned = sorted({self._main_path(job, k, j) for k in range(n) for j in range(len(self.labels))}, key=str)
        for key, suffix in EXTRA_OUTPUTS.items():
            if key in self.extras and not (key == "aligned" and self.options.aligned):
                planned += [self._face_path(job, k, suffix) for k in range(n)]
        if self.sweep:
            planned += [self._face_path(job, k, suffix) for suffix in (".sweep.png", ".sweep.gif") for k in range(n)]
        if any(p.resolve() == item.path.resolve() for p in planned):
            raise UsageError(f"{item.path}: an output would overwrite the input; choose another output folder")
        job.planned, job.complete = planned, all(p.exists() for p in planned)
        if self.latents is not None:
            src = self.latents if self.latents.is_file() else None
            for k in range(n):
                f = src or self.latents / f"{item.key}{tags[k]}{EXTRA_OUTPUTS['latent']}"
                w = load_latent(f, self.pipe.generator.n_latent, self.pipe.generator.style_dim)
                if w.shape[0] != 1:
                    raise InputError(f"{f}: holds {w.shape[0]} codes, expected 1 per face")
                job.latents.append(w)
        job.results = [None] * n
        return job

    # -- models ------------------------------------------------------------------------------------------------
    def _compute(self, chunk: list[tuple[_Job, int]]) -> None:
        """Encode and render faces (job, k) as one batch; fills the jobs' results and encode/render timings."""
        import torch

        from facefix.photo import invert_faces, render_faces

        lms = None
        if self.options.mask == MaskMode.face:
            lms = np.stack([job.faces.landmarks[k] for job, k in chunk])  # type: ignore[index]
        t0 = time.perf_counter()
        w = torch.cat([job.latents[k] for job, k in chunk]) if self.latents is not None else None
        x, inversion = invert_faces(self.pipe, [job.faces.crops[k] for job, k in chunk], self.options, w)
        t1 = time.perf_counter()
        results = render_faces(self.pipe, x, inversion, self.edits, self.options, lms,
                               with_inversion=bool({"grid", "mask"} & self.extras))
        t2 = time.perf_counter()
        for (job, k), result in zip(chunk, results, strict=True):
            for stage, dt in (("encode", t1 - t0), ("render", t2 - t1)):  # a batch's time, shared per face
                job.timings[stage] = round(job.timings.get(stage, 0.0) + dt / len(chunk), 3)
            job.results[k] = result

    def _run_group(self, g: int) -> dict[InputFile, _Job | Exception]:
        """Plan every input of group g and, unless all are finished, compute all their faces in batches.
        Errors stay with their input (a failed model batch fails the inputs it held), raised at its turn."""
        jobs: dict[InputFile, _Job | Exception] = {}
        for item in self.inputs[g * self.size:(g + 1) * self.size]:
            try:
                jobs[item] = self._plan(item)
            except Exception as e:  # noqa: BLE001 - reported when this input's turn comes
                jobs[item] = e
        live = [j for j in jobs.values() if isinstance(j, _Job)]
        if self.overwrite or not all(j.complete for j in live):
            faces = [(j, k) for j in live for k in range(j.n)]
            for lo in range(0, len(faces), self.size):
                try:
                    self._compute(faces[lo:lo + self.size])
                except Exception as e:  # noqa: BLE001
                    for j, _ in faces[lo:lo + self.size]:
                        j.error = e
        return jobs

    # -- the work of one input -----------------------------------------------------------------------------------
    def __call__(self, item: InputFile, rep: InputReport) -> None:
        g = self._position[item] // self.size
        if g not in self._group:
            self._group.clear()  # the previous group is written: free its images
            self._group[g] = self._run_group(g)
        job = self._group[g][item]
        if isinstance(job, Exception):
            raise job
        rep.timings.update(job.timings)
        rep.faces, rep.outputs = job.n, [str(p) for p in job.planned]
        if not self.overwrite and job.complete:
            rep.status = "skipped"
            return
        if job.error is not None:
            raise job.error
        with rep.stage("write"):
            self._write(job)

    def _write(self, job: _Job) -> None:
        from facefix.image_io import save_gif, save_image
        from facefix.latents import save_latent
        from facefix.photo import paste_faces

        photo, crops, results = job.faces.photo, job.faces.crops, job.results
        assert all(r is not None for r in results)
        (self.output / job.item.key).parent.mkdir(parents=True, exist_ok=True)
        for j in range(len(self.labels)):
            if self.options.pastes:
                save_image(self._main_path(job, 0, j), paste_faces(job.faces, results, j), like=photo)
            else:
                for k in range(job.n):
                    save_image(self._main_path(job, k, j), results[k].images[j])
        for k, r in enumerate(results):
            if "aligned" in self.extras and not self.options.aligned:
                save_image(self._face_path(job, k, ".aligned.png"), crops[k])
            if "latent" in self.extras:
                save_latent(self._face_path(job, k, ".latent.pt"), r.w_plus)
            m = r.inversion_mask if r.inversion is not None else r.masks[0]
            m_img = np.zeros(crops[k].shape[:2], np.uint8) if m is None else \
                np.clip(np.round(m * 255), 0, 255).astype(np.uint8)
            if "mask" in self.extras:
                save_image(self._face_path(job, k, ".mask.png"), np.repeat(m_img[..., None], 3, axis=2))
            if "grid" in self.extras:
                tiles = [crops[k], r.inversion, m_img] + (r.images if self.edits else [])
                save_image(self._face_path(job, k, ".grid.png"), grid(tiles))
            if self.sweep:
                frames = [grid([im]) for im in r.images]
                save_image(self._face_path(job, k, ".sweep.png"), np.concatenate(frames, axis=1))
                save_gif(self._face_path(job, k, ".sweep.gif"), frames + frames[-2:0:-1])  # ping-pong loop


class AlignRun:
    """The per-input work of ``facefix align``: OUT/KEY_faceK.png (the FFHQ crop, ``size`` px) and OUT/KEY_faceK.json
    (``{"input": path, **Alignment.to_dict()}``) per face; faces whose two files exist are skipped unless
    ``overwrite``. Builds the face detector once."""

    def __init__(self, output: Path, face: str | int = "best", size: int = 1024, overwrite: bool = False):
        from facefix.align import FaceDetector

        self.output, self.face, self.size, self.overwrite = output, face, size, overwrite
        self.detector = FaceDetector()

    def __call__(self, item: InputFile, rep: InputReport) -> None:
        from facefix.align import align_face, detect_faces
        from facefix.image_io import atomic_write_bytes, load_image, save_image

        with rep.stage("load"):
            rgb = load_image(item.path).rgb
        with rep.stage("detect"):
            found = detect_faces(rgb, self.detector, self.face, str(item.path))
        rep.faces = len(found)
        for k, f in enumerate(found):
            k_out = self.face if isinstance(self.face, int) else k
            crop_path = self.output / f"{item.key}_face{k_out}.png"
            json_path = crop_path.with_suffix(".json")
            rep.outputs += [str(crop_path), str(json_path)]
            if not self.overwrite and crop_path.exists() and json_path.exists():
                continue
            with rep.stage("align"):
                a = align_face(rgb, f, output_size=self.size)
            crop_path.parent.mkdir(parents=True, exist_ok=True)
            with rep.stage("write"):
                save_image(crop_path, a.crop, compress_level=1)  # zlib 4 was most of align's time
                atomic_write_bytes(json_path, json.dumps({"input": str(item.path), **a.to_dict()}, indent=1).encode())


def grid(tiles: list[np.ndarray], size: int = 256) -> np.ndarray:
    """uint8 [H,W,3] or [H,W] tiles -> one row uint8 [size, size * len(tiles), 3], each tile resized (bilinear)."""
    from PIL import Image

    row = []
    for t in tiles:
        im = Image.fromarray(t).convert("RGB").resize((size, size), Image.BILINEAR)
        row.append(np.asarray(im))
    return np.concatenate(row, axis=1)
