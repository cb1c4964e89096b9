"""Per-stage seconds per face of ``facefix align`` on 12-megapixel photos: decode, detect, landmarks, crop, write.

Run: ``python benchmarks/bench_align.py [--repeat N] [--png-level L ...] [--reference]``. The photos are real ones
upscaled to 12 MP and stored as JPEG (quality 92) in a temporary folder: matplotlib's grace_hopper.jpg (one face,
3000x4000), a 4000x3000 collage of it with skimage's astronaut (two faces), and the astronaut alone at 3464x3464.
Each stage is the best of N runs; "per face" divides the photo's total by its number of faces. "near tie" says
whether detection had to settle two close boxes on dlib's own pyramid levels (~1 s on 12 MP) rather than on the
rebuilt ones (tens of ms per face). ``--reference`` also times dlib's plain scan of the whole full-resolution
photo (what the detection reproduces; 4-5 s) and checks that it keeps the same boxes (those scoring at least the
detector's ``min_score``). The alignment-only numbers (FFHQ reference crop vs the fast one, paste-back) follow.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from timing import best_of  # benchmarks/timing.py (this folder is on sys.path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook as cbook
    import skimage.data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    pair = np.concatenate([cv2.resize(grace, (512, 512), interpolation=cv2.INTER_AREA), skimage.data.astronaut()],
                          axis=1)
    return {
        "grace 1 face 3000x4000": cv2.resize(grace, (3000, 4000), interpolation=cv2.INTER_CUBIC),
        "collage 2 faces 4000x3000": cv2.resize(pair, (4000, 3000), interpolation=cv2.INTER_CUBIC),
        "astronaut 1 face 3464x3464": cv2.resize(skimage.data.astronaut(), (3464, 3464),
                                                 interpolation=cv2.INTER_CUBIC),
    }


def main() -> None:
    from facefix.align import FaceDetector, align_face, align_face_reference, detect_faces, paste_back
    from facefix.image_io import atomic_write_bytes, load_image, save_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--png-level", type=int, nargs="+", default=[1, 4], help="PNG compress levels to time")
    ap.add_argument("--reference", action="store_true", help="also time the plain full-resolution dlib scan")
    args = ap.parse_args()

    t, det = best_of(FaceDetector, 1)
    ties: list[bool] = []
    near_tie = det._near_tie
    det._near_tie = lambda kept, cands: ties.append(near_tie(kept, cands)) or ties[-1]
    print(f"{'FaceDetector() build':<34s} {t * 1000:8.1f} ms   cv2 threads: {cv2.getNumThreads()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_align_"))
    for name, img in photos().items():
        path = tmp / "photo.jpg"
        Image.fromarray(img).save(path, quality=92)
        t_dec, photo = best_of(lambda path=path: load_image(path), args.repeat)
        rgb = photo.rgb
        ties.clear()
        t_det, (found, _) = best_of(lambda rgb=rgb: det.detect(rgb), args.repeat)
        n = len(found)
        t_lm, lms = best_of(lambda rgb=rgb, found=found: [det.landmarks(rgb, b) for b, _ in found], args.repeat)
        t_crop, als = best_of(lambda rgb=rgb, lms=lms: [align_face(rgb, lm) for lm in lms], args.repeat)
        t_write = {}
        for level in args.png_level:
            def write(als=als, level=level) -> None:
                for k, a in enumerate(als):
                    save_image(tmp / f"face{k}.png", a.crop, compress_level=level)
                    atomic_write_bytes(tmp / f"face{k}.json", json.dumps(a.to_dict(), indent=1).encode())
            t_write[level] = best_of(write, args.repeat)[0]
        print(f"-- {name}: {n} face(s), JPEG {path.stat().st_size / 1e6:.1f} MB, near tie: {any(ties)}; "
              "seconds per face")
        stages = {"decode (load_image)": t_dec, "detect (HOG)": t_det, "landmarks (68)": t_lm,
                  "crop (align_face 1024)": t_crop}
        for stage, s in stages.items():
            print(f"{stage:<34s} {s / n:8.3f} s")
        for level, s in t_write.items():
            size = (tmp / "face0.png").stat().st_size if level == args.png_level[-1] else None
            print(f"{f'write PNG level {level} + JSON':<34s} {s / n:8.3f} s" + (f"   ({size / 1e6:.2f} MB)" if size
                                                                                 else ""))
        for level, s in t_write.items():
            total = (sum(stages.values()) + s) / n
            print(f"{f'total with PNG level {level}':<34s} {total:8.3f} s   write share {s / n / total:.0%}")
        if args.reference:
            t_ref, (rects, scores, _) = best_of(lambda rgb=rgb: det._hog.run(rgb, det.upsample, 0.0), 1)
            ref = sorted((r.left(), r.top(), r.right() + 1, r.bottom() + 1)
                         for r, s in zip(rects, scores, strict=True) if s >= det.min_score)
            same = ref == sorted(tuple(int(v) for v in b) for b, _ in found)
            print(f"{'full-resolution dlib scan':<34s} {t_ref:8.3f} s   same boxes: {same}")

    print("-- alignment only (grace 12 MP)")
    img = photos()["grace 1 face 3000x4000"]
    face = detect_faces(img, det)[0]
    t_ref, ref = best_of(lambda: align_face_reference(img, face), 1)
    t, al = best_of(lambda: align_face(img, face), args.repeat)
    print(f"{'align reference (4096 + LANCZOS)':<34s} {t_ref * 1000:8.1f} ms")
    print(f"{'align fast':<34s} {t * 1000:8.1f} ms   PSNR vs reference {psnr(al.crop, ref):.2f} dB")
    t, out = best_of(lambda: paste_back(img, [al.crop], [al]), args.repeat)
    print(f"{'paste-back (1 face)':<34s} {t * 1000:8.1f} ms   pixels changed "
          f"{np.any(out != img, axis=2).mean() * 100:.1f}%")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {rss / 1024 if sys.platform != 'darwin' else rss / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
