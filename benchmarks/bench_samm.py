"""SAMM pipeline benchmark: per-stage wall time and peak RSS for one aligned 1024 photo at batch 1.

Run:  python benchmarks/bench_samm.py [--threads 2] [--repeats 2] [--cycle-align 2] [--photo-only]

Stages (recipe weights in the official layouts, the real photo ``grace_hopper`` aligned; speed does not depend on
the weight values):
  prepare        uint8 crop -> x [1,3,1024,1024] and the encoder's 256 input
  encode         e4e (bicubic FPN, the official SAMM encoder mode) with the feature taps
  gen_plain      the generator alone (what an edit costs without SAMM)
  samm_pass      generator with the four SAMM levels (flow + mask predicted), mask composition and blend
  samm_32..256   the part of samm_pass spent inside each level's SAMM block
  edit_edited    one edit with --mask-from edited (a full SAMM pass on the edited code, as the paper)
  edit_original  one edit with --mask-from original (replays the inversion's flows and masks: generator + warps)
FLOPs (analytic): SAMM ~1009 GFLOP at cycle_align 2, generator ~151, e4e ~145.
Peak RSS is each stage's high-water mark (reset before the stage via /proc/self/clear_refs), the max over the
timed rounds after a warm-up round; the last line is the max over stages. Models are built on the meta device and
filled with ``assign=True``, as the checkpoint loader does, so weights are resident once.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

from timing import REPO_ROOT, repo_root_on_path, tune_after_build  # benchmarks/timing.py (this folder is on sys.path)

GRACE = REPO_ROOT / "tests" / "golden" / "align" / "grace_hopper_aligned1024.png"


def _build(cycle_align: int):
    from facefix.models.encoders import Encoder4Editing
    from facefix.models.samm import SAMM
    from facefix.models.stylegan2 import Generator
    from facefix.pipeline import FacefixPipeline

    repo_root_on_path()
    from tests.recipe import build_recipe, latent_avg

    gen = build_recipe(lambda: Generator(1024), "generator")
    enc = build_recipe(Encoder4Editing, "encoder", 5000)
    samm = build_recipe(lambda: SAMM(cycle_align=cycle_align), "samm")
    return FacefixPipeline(gen, enc, latent_avg([512], 900).expand(18, 512).clone(), samm=samm)


def _reset_peak() -> None:
    """Reset the kernel's RSS high-water mark (Linux), so a peak covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_gb(field: str = "VmHWM") -> float:
    """VmHWM (peak since the last reset) or VmRSS (now), GB; falls back to ru_maxrss off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cycle-align", type=int, default=2)
    ap.add_argument("--photo-only", action="store_true",
                    help="only prepare, encode and samm_pass: the peak RSS of processing photos, without the "
                         "edit and plain-generator stages in the same process")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    pipe = _build(args.cycle_align)
    build_s = time.perf_counter() - t0
    tuned = tune_after_build()
    rss_models = _rss_gb("VmRSS")

    from PIL import Image

    from facefix.edits import apply_edits, build_edits
    from facefix.models.samm import SAMMBlock

    crop = np.asarray(Image.open(GRACE).convert("RGB"))
    (variant,) = build_edits(smile=2.0)
    level_times: dict[int, list[float]] = defaultdict(list)
    original_forward = SAMMBlock.forward

    def timed_forward(self, gen, enc, prev=None, cycle_align=None):
        t = time.perf_counter()
        out = original_forward(self, gen, enc, prev, cycle_align)
        level_times[gen.shape[-1]].append(time.perf_counter() - t)
        return out

    SAMMBlock.forward = timed_forward  # type: ignore[method-assign]
    times: dict[str, list[float]] = defaultdict(list)

    hwm: dict[str, float] = {}

    @contextmanager
    def clock(name):
        if rep:
            _reset_peak()
        t = time.perf_counter()
        yield
        times[name].append(time.perf_counter() - t)
        if rep:
            hwm[name] = max(hwm.get(name, 0.0), _rss_gb())

    for rep in range(args.repeats + 1):  # the first round warms up oneDNN and the allocator, not reported
        if rep == 1:
            times.clear()
            level_times.clear()
        with clock("prepare"):
            x, x256 = pipe.prepare(crop)
        with clock("encode"):
            inv = pipe.encode(x256)
        with clock("samm_pass"):
            ref = pipe.render(x, inv, mask="samm")
        if args.photo_only:
            continue
        with clock("gen_plain"):
            pipe.synthesize(inv.w_plus)
        w_edit = apply_edits(inv.w_plus, variant.edits)
        with clock("edit_edited"):
            pipe.render(x, inv, w_plus=w_edit, mask="samm")
        with clock("edit_original"):
            pipe.render(x, inv, w_plus=w_edit, mask="samm", reference=ref)
    peak = max(hwm.values())
    # level times: samm_pass and edit_edited each ran every level once per round
    per_level = {r: statistics.median(v) for r, v in sorted(level_times.items())}

    print(f"threads {args.threads}, cycle_align {args.cycle_align}, repeats {args.repeats}, allocator "
          f"{'glibc + facefix mallopt' if tuned else 'glibc default'}; models built in {build_s:.1f} s, "
          f"RSS with models {rss_models:.2f} GB (peak column: the stage's own high-water mark, max over the "
          f"timed rounds)")
    print(f"{'stage':<14} {'median s':>9} {'peak RSS GB':>12}")
    for name, v in times.items():
        print(f"{name:<14} {statistics.median(v):>9.2f} {hwm[name]:>12.2f}")
        if name == "samm_pass":
            for r, s in per_level.items():
                print(f"  samm_{r:<7} {s:>9.2f}")
    photo = statistics.median(times["prepare"]) + statistics.median(times["encode"]) + \
        statistics.median(times["samm_pass"])
    print(f"{'photo total':<14} {photo:>9.2f}   (prepare + encode + samm_pass)")
    if not args.photo_only:
        print(f"edit_original / gen_plain = "
              f"{statistics.median(times['edit_original']) / statistics.median(times['gen_plain']):.2f}")
    print(f"peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
