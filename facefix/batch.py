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
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from facefix.errors import UsageError

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
