"""Cost of edits: building and applying each edit kind on W+, and one encoding + k renders vs k full runs.

Run:  python benchmarks/bench_edits.py [--threads 2] [--repeats 5] [--render] [--k 3] [--res 1024]

Part 1 (always, about a second): ``build_edits`` (loads the shipped files / a published-layout mapper written to
a temp dir) and ``apply_edits`` per kind on W+ [1,18,512] and [8,18,512]; best of ``--repeats``.
Part 2 (``--render``): real-size recipe e4e encoder and 1024 generator. An edit of k attributes on one photo is one
``encode`` + k ``(apply_edits + synthesis)``; doing k separate runs would re-encode every time. Prints both.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
from timing import best_of, repo_root_on_path  # benchmarks/timing.py (this folder is on sys.path)


def write_mapper(path: Path) -> None:
    """A random LevelsMapper in the published StyleCLIP checkpoint format (generator omitted)."""
    from facefix.edits import LevelsMapper

    sd = {"mapper." + k: v for k, v in LevelsMapper().state_dict().items()}
    torch.save({"state_dict": sd, "opts": {"mapper_type": "LevelsMapper"}}, path)


def part1(repeats: int) -> None:
    from facefix.edits import apply_edits, build_edits

    with tempfile.TemporaryDirectory() as tmp:
        mapper = Path(tmp) / "mapper.pt"
        write_mapper(mapper)
        cases = {
            "interfacegan --age 3": {"age": 3},
            "3 directions age/smile/pose": {"age": 3, "smile": -1, "pose": 2},
            "ganspace eye_openness=20": {"ganspace": ["eye_openness=20"]},
            "ganspace lipstick+=5": {"ganspace": ["lipstick+=5"]},
            "styleclip mapper (3 groups)": {"styleclip": [f"{mapper}=0.1"]},
        }
        print(f"{'edit':<30} {'build ms':>9} {'apply N=1 ms':>13} {'apply N=8 ms':>13}")
        for name, kwargs in cases.items():
            t_build, variants = best_of(lambda kw=kwargs: build_edits(**kw), repeats)
            edits = variants[0].edits
            times = []
            for n in (1, 8):
                w = torch.randn(n, 18, 512)
                with torch.no_grad():
                    t, _ = best_of(lambda w=w, e=edits: apply_edits(w, e), repeats)
                times.append(t)
            print(f"{name:<30} {t_build * 1e3:>9.2f} {times[0] * 1e3:>13.3f} {times[1] * 1e3:>13.3f}")


def part2(k: int, res: int) -> None:
    from facefix.edits import apply_edits, build_edits
    from facefix.models.encoders import Encoder4Editing
    from facefix.models.stylegan2 import Generator

    repo_root_on_path()
    from tests.recipe import fill_module, latent_avg

    t0 = time.perf_counter()
    gen = fill_module(Generator(1024), "generator").eval().requires_grad_(False)
    enc = fill_module(Encoder4Editing(), "encoder", 5000).eval().requires_grad_(False)
    avg = latent_avg([18, 512], 901)
    print(f"recipe models built in {time.perf_counter() - t0:.1f} s")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    flags = [{"age": 3}, {"smile": -1.5}, {"ganspace": ["eye_openness=20"]}, {"pose": 2}, {"ganspace": ["smile+=5"]}]
    edit_sets = [build_edits(**flags[i % len(flags)])[0].edits for i in range(k)]
    with torch.no_grad():
        gen.synthesis(torch.zeros(1, 18, 512), out_res=res)  # warm-up
        t = time.perf_counter()
        t_enc, w = best_of(lambda: enc.encode(x).codes + avg, 1)
        t_render = []
        for edits in edit_sets:
            t1 = time.perf_counter()
            gen.synthesis(apply_edits(w, edits), out_res=res)
            t_render.append(time.perf_counter() - t1)
        shared = time.perf_counter() - t
    separate = k * t_enc + sum(t_render)  # what k independent runs would cost
    print(f"encode {t_enc:.2f} s; render at {res}px: {', '.join(f'{r:.2f}' for r in t_render)} s")
    print(f"k={k} edits: one encoding + {k} renders = {shared:.2f} s; {k} full runs would be {separate:.2f} s "
          f"({k - 1} extra encodings)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--render", action="store_true", help="also time encode + k renders at real size")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--res", type=int, default=1024, help="generator output size (early exit below 1024)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    part1(args.repeats)
    if args.render:
        part2(args.k, args.res)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
