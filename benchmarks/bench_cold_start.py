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
from pathlib import Path

import torch
from timing import best_of, repo_root_on_path  # benchmarks/timing.py (this folder is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="checkpoint size in MB (e4e is ~1150)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--real-size", action="store_true",
                        help="instead: process start -> pipeline ready, with a real-size (1.2 GB) recipe e4e file, "
                             "from the pickle and from the safetensors copy")
    args = parser.parse_args()
    if args.real_size:
        real_size_cold_start()
        return

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


_READY = """
import time, sys
t0 = float(sys.argv[2])
from facefix import checkpoints
from facefix.pipeline import FacefixPipeline
loaded = checkpoints.load_encoder(sys.argv[1], cache=sys.argv[3] == "1")
FacefixPipeline(loaded.generator, loaded.encoder, loaded.latent_avg)
print(time.time() - t0)
"""


def real_size_cold_start() -> None:
    """Wall time from ``python`` start to a ready FacefixPipeline (e4e + its decoder), each run in a new process."""
    import subprocess
    import sys

    repo_root_on_path()
    from tests.conftest import write_e4e_checkpoint

    with tempfile.TemporaryDirectory(prefix="facefix-bench-") as tmp:
        ckpt = write_e4e_checkpoint(Path(tmp) / "e4e_ffhq_encode.pt", size=1024)
        print(f"checkpoint: {ckpt.stat().st_size / 1e9:.2f} GB (e4e layout, recipe weights)")
        for label, cache in (("pickle (torch.load weights_only)", "0"), ("first run, writes safetensors copy", "1"),
                             ("safetensors copy (memory-mapped)", "1"), ("safetensors copy, again", "1")):
            out = subprocess.run([sys.executable, "-c", _READY, str(ckpt), repr(time.time()), cache],
                                 capture_output=True, text=True, check=True)
            print(f"  {label:<38} {float(out.stdout.strip()):6.2f} s")


if __name__ == "__main__":
    main()
