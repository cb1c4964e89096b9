"""Cold-start cost of checkpoint handling: sha256 (first use vs marker hit) and pickle vs safetensors loading.

Run: ``python benchmarks/bench_cold_start.py [--mb 256] [--repeat 3]``. Writes a synthetic rosinality-style
checkpoint of about ``--mb`` megabytes into a temp dir (``HF_HOME`` is pointed there too), then times:
hashing it, :func:`facefix.weights.resolve` with and without a valid ``.sha256-ok`` marker,
:func:`safe_torch_load`, building the safetensors copy, and loading that copy (float32 and float16).
Prints the best of N runs. No network; not collected by pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="checkpoint size in MB (e4e is ~1150)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="facefix-bench-") as tmp:
        os.environ["HF_HOME"] = str(Path(tmp) / "hf")
        os.environ.pop(weights_env := "FACEFIX_WEIGHTS_DIR", None)
        from facefix import weights

        n_tensors = 64
        per = args.mb * (1 << 20) // 4 // n_tensors
        sd = {"g_ema": {f"convs.{i}.weight": torch.randn(per) for i in range(n_tensors)}}
        sd["latent_avg"] = torch.randn(512)
        wdir = Path(tmp) / "w"
        wdir.mkdir()
        ckpt = wdir / "bench.pt"
        torch.save(sd, ckpt)
        data_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        entry = weights.WeightEntry(
            name="bench", filename="bench.pt", status="full", sha256=data_sha, size=ckpt.stat().st_size
        )
        os.environ[weights_env] = str(wdir)
        size_mb = ckpt.stat().st_size / 1e6

        def first_use() -> Path:
            for marker in wdir.glob("*.sha256-ok"):
                marker.unlink()
            return weights.resolve(entry)

        rows = [
            ("sha256 of the file", best_of(lambda: weights.sha256_file(ckpt), args.repeat)[0]),
            ("resolve, first use (hash + marker)", best_of(first_use, args.repeat)[0]),
            ("resolve, marker hit", best_of(lambda: weights.resolve(entry), args.repeat)[0]),
            ("safe_torch_load (pickle)", best_of(lambda: weights.safe_torch_load(ckpt), args.repeat)[0]),
            (
                "to_safetensors_cache (float32)",
                best_of(lambda: weights.to_safetensors_cache(ckpt, sd), args.repeat)[0],
            ),
            ("load_safetensors_cache (float32)", best_of(lambda: weights.load_safetensors_cache(ckpt), 3)[0]),
            (
                "to_safetensors_cache (float16)",
                best_of(lambda: weights.to_safetensors_cache(ckpt, sd, dtype=torch.float16), 1)[0],
            ),
            ("load_safetensors_cache (float16)", best_of(lambda: weights.load_safetensors_cache(ckpt), 3)[0]),
        ]
        print(f"checkpoint: {size_mb:.0f} MB, {n_tensors + 1} tensors, best of {args.repeat}")
        for label, seconds in rows:
            print(f"  {label:<38} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
