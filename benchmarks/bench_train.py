"""SAMM training throughput: images/s, per-step data / forward / backward time and peak RSS, recipe weights.

Run:  python benchmarks/bench_train.py [--configs tiny,full] [--threads 2] [--steps 3] [--vgg]

- ``tiny``: the test set-up (64 px generator, full-size e4e at 256 px), batch 2, cycle_align 1, 32 px level only.
- ``full``: the recipe at real size: 1024 px generator, all four SAMM levels (32..256), cycle_align 2, batch 1
  (batch 2 is the recipe's per-GPU batch; on a CPU one image shows the cost). ``--vgg`` adds the perceptual and
  style terms with a randomly initialised VGG19 (same cost as the real weights).

Each config runs in its own child process, so peak RSS (ru_maxrss) is per config and includes the frozen models.
The first step is reported separately (allocator and oneDNN warm-up); the others are averaged.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import repo_root_on_path  # benchmarks/timing.py (this folder is on sys.path)

CONFIGS = {
    "tiny": {"size": 64, "batch_size": 2, "cycle_align": 1, "progressive_steps": [10**6] * 3},
    "full": {"size": 1024, "batch_size": 1, "cycle_align": 2, "progressive_steps": [0, 0, 0]},
}


def _child(name: str, threads: int, steps: int, vgg: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        return _measure(name, threads, steps, vgg, Path(tmp))


def _measure(name: str, threads: int, steps: int, vgg: bool, tmp: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    from facefix.models.encoders import Encoder4Editing
    from facefix.models.stylegan2 import Generator
    from facefix.train import SAMMTrainer, load_config

    repo_root_on_path()
    from tests.recipe import fill_module, latent_avg

    spec = CONFIGS[name]
    size = spec["size"]
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(tmp / f"f{i}.png")
    overrides = {k: v for k, v in spec.items() if k != "size"}
    if vgg:
        from facefix.losses import VGG19Features

        torch.save(VGG19Features().state_dict(), tmp / "vgg19.pth")
        overrides["vgg19_path"] = str(tmp / "vgg19.pth")
    cfg = load_config(None, {**overrides, "max_steps": steps, "num_workers": 0, "hflip": True, "val_images": 0,
                             "log_every": 1, "ckpt_every": 10**6})
    gen = fill_module(Generator(size), "generator")
    enc = fill_module(Encoder4Editing(gen.n_latent), "encoder")
    avg = latent_avg([gen.n_latent, 512], 901)
    lines: list[str] = []
    trainer = SAMMTrainer(cfg, gen, enc, avg, sorted(tmp.glob("f*.png")), [], tmp / "run", "cpu", log=lines.append)
    trainer.save_checkpoint = lambda: tmp / "skipped"  # the benchmark measures steps, not disk writes
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    records = [json.loads(s) for s in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    first, rest = records[0], records[1:] or records[:1]
    mean = {k: sum(r["time_s"][k] for r in rest) / len(rest) for k in ("data", "forward", "backward")}
    step_s = sum(mean.values())
    return {"config": name, "threads": threads, "steps": steps, "batch": cfg.batch_size, "vgg": vgg,
            "first_step_s": round(sum(first["time_s"].values()), 2), "step_s": round(step_s, 2),
            "images_per_s": round(cfg.batch_size / step_s, 3), **{f"{k}_s": round(v, 2) for k, v in mean.items()},
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "wall_s": round(total, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,full")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--vgg", action="store_true", help="include the VGG19 perceptual + style terms")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.threads, args.steps, args.vgg)))
        return
    for name in args.configs.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--threads", str(args.threads), "--steps", str(args.steps)]
        out = subprocess.run(cmd + (["--vgg"] if args.vgg else []), capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
