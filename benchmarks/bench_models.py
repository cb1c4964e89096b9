"""Model-stack benchmark: median time, GFLOP/s and peak RSS per stage, with recipe weights on this machine.

Run:  python benchmarks/bench_models.py [--threads 2] [--repeats 3] [--no-malloc-tuning]
          [--stages gen1,gen4,e4e,chain,restyle,gen1v4]

Each stage runs in its own child process so that peak RSS (ru_maxrss) is per stage; models are built on the meta
device and filled with ``assign=True`` (``tests.recipe.build_recipe``), so weights are resident once, as
after a checkpoint load. FLOP counts are analytic
(analytic): generator 150.77 GFLOP per 1024 image, e4e encoder 145.0 GFLOP per 256 input.
The allocator line says whether facefix's malloc tuning (``facefix.runtime.tune_malloc``) was applied.

``gen1v4`` answers "is batch 4 cheaper per image than batch 1?" on a machine whose speed drifts 10-30% over tens of
seconds (shared VMs): one process alternates a batch-1 and a batch-4 forward for ``2 * repeats + 1`` rounds and
reports the median of the per-round ratios (batch-4 time / 4) / (batch-1 time), with its min and max, so both sides
of each ratio ran under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from timing import repo_root_on_path, tune_after_build  # benchmarks/timing.py (this folder is on sys.path)

GEN_GFLOP = 150.77
E4E_GFLOP = 145.0


def _child(stage: str, threads: int, repeats: int, tune: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    from facefix.models.stylegan2 import Generator

    repo_root_on_path()
    from tests.recipe import build_recipe, latent_avg

    gen = enc = None
    if stage in ("gen1", "gen4", "gen1v4", "chain", "restyle"):
        gen = build_recipe(lambda: Generator(1024), "generator")
    if stage in ("e4e", "chain", "restyle"):  # imported here so generator stages run without the encoders
        from facefix.models.encoders import Encoder4Editing, ReStyleEncoder

        enc = (build_recipe(Encoder4Editing, "encoder", 5000) if stage != "restyle"
               else build_recipe(ReStyleEncoder, "encoder", 6000))
    applied = tune_after_build() if tune else False
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1
    if stage == "gen1":
        w, flop = torch.randn(1, 18, 512, generator=g), GEN_GFLOP

        def fn():
            gen.synthesis(w)
    elif stage == "gen4":
        w, flop = torch.randn(4, 18, 512, generator=g), 4 * GEN_GFLOP

        def fn():
            gen.synthesis(w)
    elif stage == "gen1v4":
        return _paired_batches(gen, g, threads, 2 * repeats + 1, applied)
    elif stage == "e4e":
        flop = E4E_GFLOP

        def fn():
            enc.encode(x)
    else:
        from facefix.pipeline import FacefixPipeline

        pipe = FacefixPipeline(gen, enc, latent_avg([18, 512], 901))
        iters = 1 if stage == "chain" else 5
        flop = iters * (GEN_GFLOP + E4E_GFLOP)

        def fn():
            pipe.synthesize(pipe.encode(x).w_plus)
    times = []
    with torch.no_grad():
        fn()  # warm-up (allocator, oneDNN primitive caches)
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"stage": stage, "median_s": med, "min_s": min(times), "gflop": flop, "gflops": flop / med,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "malloc_tuned": applied,
            "threads": threads, "repeats": repeats}


def _paired_batches(gen, g, threads: int, rounds: int, applied: bool) -> dict:
    """Alternate batch-1 and batch-4 generator forwards; per-round ratio of per-image times (see module doc)."""
    import torch

    w = torch.randn(4, 18, 512, generator=g)
    t1, t4 = [], []
    with torch.no_grad():
        gen.synthesis(w)  # warm-up of both shapes
        gen.synthesis(w[:1])
        for _ in range(rounds):
            for n, acc in ((1, t1), (4, t4)):
                t = time.perf_counter()
                gen.synthesis(w[:n])
                acc.append((time.perf_counter() - t) / n)
    ratios = [b / a for a, b in zip(t1, t4, strict=True)]
    med = statistics.median(t1)
    return {"stage": "gen1v4", "median_s": med, "min_s": min(t1), "gflop": GEN_GFLOP, "gflops": GEN_GFLOP / med,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "malloc_tuned": applied,
            "threads": threads, "repeats": rounds, "batch4_per_image_s": statistics.median(t4),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stages", default="gen1,gen4,e4e,chain,restyle,gen1v4")
    ap.add_argument("--no-malloc-tuning", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.threads, args.repeats, not args.no_malloc_tuning)))
        return
    print(f"{'stage':<8} {'median s':>9} {'per image s':>12} {'GFLOP/s':>8} {'peak RSS GB':>12}  allocator")
    for stage in args.stages.split(","):
        cmd = [sys.executable, __file__, "--child", stage, "--threads", str(args.threads),
               "--repeats", str(args.repeats)] + (["--no-malloc-tuning"] if args.no_malloc_tuning else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{stage:<8} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_image = r["median_s"] / (4 if stage == "gen4" else 1)
        alloc = "glibc + facefix mallopt" if r["malloc_tuned"] else "glibc default"
        print(f"{stage:<8} {r['median_s']:>9.2f} {per_image:>12.2f} {r['gflops']:>8.1f} "
              f"{r['peak_rss_gb']:>12.2f}  {alloc}")
        if stage == "gen1v4":
            print(f"  {r['repeats']} alternating rounds: batch 1 {r['median_s']:.2f} s, batch 4 "
                  f"{r['batch4_per_image_s']:.2f} s per image; paired ratio batch 4 / batch 1 per image "
                  f"{r['ratio_median']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f})")


if __name__ == "__main__":
    main()
