"""malloc tuning: large blocks stay on the heap, except inside ``mmap_large_blocks`` (glibc only)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import ctypes, json, torch
    from facefix.runtime import mmap_large_blocks, tune_malloc

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    mapped = lambda: libc.mallinfo2().hblkhd  # bytes in blocks that have their own mmap
    big = 100 << 20
    with mmap_large_blocks():  # before tuning: a no-op, glibc's default already maps large blocks
        pass
    tuned = tune_malloc()
    before = mapped()
    a = torch.empty(big, dtype=torch.uint8)
    on_heap = mapped() - before
    with mmap_large_blocks():
        b = torch.empty(big, dtype=torch.uint8)
        inside = mapped() - before
    c = torch.empty(big, dtype=torch.uint8)
    after = mapped() - before - inside
    print(json.dumps({"tuned": tuned, "on_heap": on_heap, "inside": inside, "after": after}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_large_blocks_are_mapped_only_inside_the_context():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["tuned"] is True
    assert r["on_heap"] == 0  # tuned: a 100 MB tensor comes from the heap
    assert r["inside"] >= 100 << 20  # inside the context: its own mapping
    assert r["after"] == 0  # and the heap again afterwards
