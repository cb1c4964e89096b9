"""Batch inputs: which files a command line names, what each output is called, and which shard runs which file.

Pure functions (no models, no printing), so scripts and tests can predict a run's outputs exactly.

- Inputs: files, folders (recursive; image files recognised by their first bytes, not their extension, so
  ``IMG_0001`` without a suffix counts and ``notes.jpg`` holding text does not), glob patterns, and ``-`` (one path
  per line on stdin). Order: as given, folders sorted, duplicates dropped.
- Names: an input found in folder ``D`` at ``D/a/b/photo.jpg`` gets the output key ``a/b/photo``; a file named
  directly gets ``photo``. Keys are relative paths built only from the names under the input root, so nothing can
  land outside ``-o``. Two inputs with the same key (``x/photo.jpg`` and ``y/photo.jpg`` named directly) get
  ``photo`` and ``photo-2``, in input order.
- Shards: ``--shard I/N`` keeps the inputs whose position in the full, named list is ``I`` mod ``N``: the N shards
  partition the inputs exactly, and names do not depend on the shard.
"""

from __future__ import annotations

import glob
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


def looks_like_image(path: Path) -> bool:
    """Whether a file starts like an image facefix can read (by content; unreadable files count as no)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _MAGIC)


@dataclass(frozen=True)
class InputFile:
    """One input: its path and its output key (relative path without suffix, ``/``-separated)."""

    path: Path
    key: str


def _folder_files(folder: Path) -> list[tuple[Path, str]]:
    out = []
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts) \
                and looks_like_image(f):
            out.append((f, f.relative_to(folder).with_suffix("").as_posix()))
    return out


def collect_inputs(items: Iterable[str], stdin: TextIO | None = None) -> list[InputFile]:
    """Expand command-line INPUTs into named input files.

    Files named directly are kept even if they do not look like images, so the user gets a per-file error for
    them instead of silence; a missing path that is not a glob pattern is a usage error.
    """
    found: list[tuple[Path, str]] = []
    for item in items:
        if item == "-":
            lines = (stdin or sys.stdin).read().splitlines()
            found += [(Path(s.strip()), Path(s.strip()).stem) for s in lines if s.strip()]
            continue
        p = Path(item)
        if p.is_dir():
            found += _folder_files(p)
        elif p.exists():
            found.append((p, p.stem))
        elif _GLOB_CHARS & set(item):
            for m in sorted(glob.glob(item, recursive=True)):
                mp = Path(m)
                if mp.is_dir():
                    found += _folder_files(mp)
                elif looks_like_image(mp):
                    found.append((mp, mp.stem))
        else:
            found.append((p, p.stem))  # reported per input as "file not found", the others still run
    seen_paths: set[Path] = set()
    used: dict[str, int] = {}
    out = []
    for path, key in found:
        real = path.resolve()
        if real in seen_paths:
            continue
        seen_paths.add(real)
        key = key or "image"
        n = used.get(key, 0) + 1
        used[key] = n
        out.append(InputFile(path, key if n == 1 else f"{key}-{n}"))
    return out


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
    """An edit label (``age+3,eye_openness=20``) as a file-name part: ``age+3_eye_openness=20``."""
    keep = "".join(c if c.isalnum() or c in "+-=._" else "_" for c in label)
    return keep.strip("._") or "edit"
