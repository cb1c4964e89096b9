"""Per-stage timings of the alignment path: detect, landmarks, align (FFHQ reference vs fast), paste-back.

Run: ``python benchmarks/bench_align.py [--repeat N]``. Uses matplotlib's grace_hopper.jpg at its own size
(512x600) and upscaled to a 12-megapixel photo. Prints the best of N runs per stage and the peak RSS.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import resource
import sys

import cv2
import numpy as np
from PIL import Image
from timing import best_of  # benchmarks/timing.py (this folder is on sys.path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    import matplotlib.cbook as cbook

    from facefix.align import FaceDetector, align_face, align_face_reference, paste_back

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    photos = {
        "grace 512x600": grace,
        "grace 12 MP": cv2.resize(grace, (3200, 3750), interpolation=cv2.INTER_CUBIC),
    }
    t, det = best_of(FaceDetector, 1)
    print(f"{'FaceDetector() build':<40s} {t * 1000:8.1f} ms")
    print(f"cv2 threads: {cv2.getNumThreads()}")
    for name, img in photos.items():
        print(f"-- {name} ({img.shape[1]}x{img.shape[0]})")
        t, found = best_of(lambda img=img: det.detect(img), args.repeat)
        print(f"{'detect (HOG)':<40s} {t * 1000:8.1f} ms   faces={len(found[0])}")
        box = found[0][0][0]
        t, lm = best_of(lambda img=img, box=box: det.landmarks(img, box), args.repeat)
        print(f"{'landmarks (68)':<40s} {t * 1000:8.1f} ms")
        t_ref, ref = best_of(lambda img=img, lm=lm: align_face_reference(img, lm), 1)
        print(f"{'align reference (4096 + LANCZOS)':<40s} {t_ref * 1000:8.1f} ms")
        t, al = best_of(lambda img=img, lm=lm: align_face(img, lm), args.repeat)
        print(f"{'align fast':<40s} {t * 1000:8.1f} ms   PSNR vs reference {psnr(al.crop, ref):.2f} dB   "
              f"speed-up {t_ref / t:.0f}x")
        t, out = best_of(lambda img=img, al=al: paste_back(img, [al.crop], [al]), args.repeat)
        changed = np.any(out != img, axis=2).mean() * 100
        print(f"{'paste-back (1 face)':<40s} {t * 1000:8.1f} ms   pixels changed {changed:.1f}%")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {rss / 1024 if sys.platform != 'darwin' else rss / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
