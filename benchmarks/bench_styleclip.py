"""Cost of a StyleCLIP text edit (``facefix edit --text``), stage by stage, on recipe weights.

Run:  python benchmarks/bench_styleclip.py [--threads 2] [--repeats 3] [--res 1024] [--samples 20000]

1. StyleSpace statistics of the 1024 generator (once per generator, then read from the disk cache): computed, and
   read back from a temporary HF_HOME.
2. CLIP text tower: StyleCLIP's 79 templates x 2 prompts through a ViT-B/32-sized text model (random weights and
   random token ids of length 16, about a BPE-tokenised template; the real weights cannot be downloaded here, the
   arithmetic is the same).
3. The direction: ``fs3 @ dt``, threshold, split into style offsets ([6048, 512] random fs3).
4. One synthesis at ``--res`` without and with StyleSpace offsets (the edit itself).
Prints times and the peak RSS. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import torch
from timing import best_of, repo_root_on_path  # benchmarks/timing.py (this folder is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=20_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    repo_root_on_path()
    from facefix import styleclip
    from facefix.models.stylegan2 import Generator
    from tests.recipe import fill_module

    g = fill_module(Generator(1024), "generator").eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as home:
        os.environ["HF_HOME"] = home
        t0 = time.perf_counter()
        stats = styleclip.cached_style_statistics(g, n_samples=args.samples)
        t_stats = time.perf_counter() - t0
        t_cached, _ = best_of(lambda: styleclip.cached_style_statistics(g, n_samples=args.samples), args.repeats)
    print(f"style statistics, {args.samples} samples (once per generator): {t_stats:.2f} s; "
          f"from the disk cache: {t_cached * 1e3:.1f} ms")

    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    clip = CLIPTextModelWithProjection(CLIPTextConfig()).eval()  # ViT-B/32's text tower: 12 x 512, 8 heads
    ids = torch.randint(0, 49406, (2 * 79, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_clip, _ = best_of(lambda: clip(input_ids=ids).text_embeds, args.repeats)
    print(f"CLIP text tower, 2 x 79 templates x 16 tokens: {t_clip:.2f} s")

    gen = torch.Generator().manual_seed(1)
    fs3 = torch.nn.functional.normalize(torch.randn(6048, 512, generator=gen), dim=1)
    dt = torch.nn.functional.normalize(torch.randn(512, generator=gen), dim=0)

    def direction():
        d = styleclip.global_direction(fs3, dt, 0.05)
        return styleclip.style_offsets(g, [(d, 3.0)], stats)

    t_dir, offsets = best_of(direction, args.repeats)
    print(f"direction + style offsets: {t_dir * 1e3:.1f} ms")

    w = torch.randn(1, 18, 512, generator=gen)
    with torch.no_grad():
        t_plain, _ = best_of(lambda: g.synthesis(w, out_res=args.res), args.repeats)
        t_edit, _ = best_of(lambda: g.synthesis(w, out_res=args.res, style_offsets=offsets), args.repeats)
    print(f"synthesis at {args.res} px: {t_plain:.2f} s plain, {t_edit:.2f} s with StyleSpace offsets")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
