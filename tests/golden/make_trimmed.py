"""Write this folder's golden files from the full reference golden set (run once; kept as documentation).

Usage:  python tests/golden/make_trimmed.py FULL_GOLDEN_DIR [OUT_DIR]

FULL_GOLDEN_DIR holds the reference outputs as produced (about 96 MB: full 1024 images in float16, every encoder
tap, every iteration's encoder input, debug arrays); OUT_DIR defaults to this script's folder. Each output file is
derived from the input file of the same name only (``samm/samm_smooth.png`` from ``samm/samm_inputs.npz``); the
facts the trimming relies on are checked first (``check_sources``). The README next to this script lists what each
file holds. Derived arrays, all from the reference's float32/float16 values:

- ``*_ch``: the first channels of a [1,C,H,W] tensor at full resolution (about 130 kB of float32 per tensor);
- ``*_chstats`` [C,5]: per channel mean, std (N-1), min, max, sum |x| over the other axes, float64, the
  convention of the reference's own ``*_chstats``;
- ``*_sub16``: ``image[..., ::16, ::16]`` of a 1024 image (from its stored ``[..., ::4, ::4]`` view);
- ``align_128_sub2``, ``align_256_sub4``: the 128 and 256 px SAMM align tensors strided to 64 x 64;
- ``*_f16_crops`` [9,C,64,64]: full-resolution 64 x 64 crops of a float16 1024 image at the origins
  ``crop_origins`` [9,2] (row, column) in {0, 480, 960}^2: the four corners, the edge midpoints and the centre.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

CROP_ORIGINS = np.array([(y, x) for y in (0, 480, 960) for x in (0, 480, 960)], dtype=np.int64)
CROP = 64
# float32 elements kept per tensor in a ``*_ch`` view (first channels, whole spatial extent)
CH_BUDGET = 32 * 1024

SMOOTH_PNG = "samm/samm_smooth.png"  # samm_inputs.npz ``smooth_u8``

Array = np.ndarray
Spec = dict[str, Callable[[dict[str, Array]], Array]]

COPIED = ["layout_g64.json", "layout_g1024.json", "layout_e4e.json", "restyle/layout_restyle_e4e.json",
          "samm/layout_samm_e4e.json", "samm/recipe_samm_e4e.json", "align/align_golden.json",
          "align/grace_hopper_aligned1024.png"]


def chstats(t: Array) -> Array:
    """[C,5] per channel of an [N,C,...] array: mean, std (N-1), min, max, sum |x| (float64)."""
    x = np.moveaxis(t, 1, 0).reshape(t.shape[1], -1).astype(np.float64)
    return np.stack([x.mean(1), x.std(1, ddof=1), x.min(1), x.max(1), np.abs(x).sum(1)], 1)


def first_channels(t: Array, k: int | None = None) -> Array:
    """The first ``k`` channels of [N,C,H,W] at full resolution; by default about ``CH_BUDGET`` elements (at least
    2 channels)."""
    k = k or max(2, CH_BUDGET // int(np.prod(t.shape[2:])))
    return np.ascontiguousarray(t[:, :k])


def f16_crops(t: Array) -> Array:
    """[9,C,64,64] crops of a [1,C,1024,1024] image at ``CROP_ORIGINS``."""
    return np.stack([t[0, :, y:y + CROP, x:x + CROP] for y, x in CROP_ORIGINS])


def keep(*keys: str) -> Spec:
    return {k: (lambda d, k=k: d[k]) for k in keys}


def channel_views(*keys: str, n_channels: int | None = None) -> Spec:
    """``<key>_ch`` and ``<key>_chstats`` for each [1,C,H,W] key."""
    out: Spec = {}
    for k in keys:
        out[f"{k}_ch"] = lambda d, k=k: first_channels(d[k], n_channels)
        out[f"{k}_chstats"] = lambda d, k=k: chstats(d[k])
    return out


def sub16(*keys: str) -> Spec:
    """``<name>_sub16`` from each ``<name>_sub4`` key."""
    return {k.replace("_sub4", "_sub16"): (lambda d, k=k: np.ascontiguousarray(d[k][..., ::4, ::4])) for k in keys}


def samm_case(extra: tuple[str, ...] = ()) -> Spec:
    """A SAMM pipeline case: codes, W+, every level's G/E/y' channel stats, the 32/64 px aligns whole, the 128/256
    px aligns strided to 64 px, and the mask / generated / output views (sub16, centre crop, stats)."""
    spec = keep("codes", "wplus", "align_32", "align_64", *extra,
                *(f"{t}_{r}_chstats" for r in (32, 64, 128, 256) for t in ("G", "E", "y")),
                *(f"{n}_{v}" for n in ("mask1024", "gen", "out") for v in ("center64", "stats")))
    spec["align_128_sub2"] = lambda d: np.ascontiguousarray(d["align_128"][..., ::2, ::2])
    spec["align_256_sub4"] = lambda d: np.ascontiguousarray(d["align_256"][..., ::4, ::4])
    spec.update(sub16("mask1024_sub4", "gen_sub4", "out_sub4"))
    return spec


def block_unit() -> Spec:
    spec = keep(*(f"{t}_{r}" for r in (32, 64, 128, 256) for t in ("G", "E")), "P_64", "P_128", "P_256",
                *(f"align_{r}_k{k}" for r in (32, 64, 128, 256) for k in (2, 1)))
    # the outputs are 12 x 16: 32 channels each at full resolution
    spec.update(channel_views(*(f"y_{r}_k{k}" for r in (32, 64, 128, 256) for k in (2, 1)), n_channels=32))
    return spec


def enc_prev4(d: dict[str, Array]) -> Array:
    """Channels 3:6 of the last (5th) encoder input: the image fed back from iteration 4. Channels 0:3 of every
    input are ``x``, and iteration 0's fed-back image is the average image (both in restyle_inversion.npz; see
    ``check_sources``), so with this array the first and the last encoder inputs are exact."""
    return np.ascontiguousarray(d["enc_input"][4, :, 3:6])


FILES: dict[str, Spec] = {
    "g64_mapping.npz": keep("z", "w"),
    "g64_synthesis.npz": keep("wplus", "img", "img_batch1", "img_custom_noise",
                              *(f"custom_noise_{i}" for i in range(9))),
    "g64_truncation.npz": keep("z", "truncation", "truncation_latent", "img", "latent", "wplus_in",
                               "truncation_wplus", "img_wplus", "latent_wplus"),
    "g64_mixing.npz": keep("z1", "z2", "inject_index", "img", "latent"),
    "g1024_synthesis.npz": {**keep("wplus", "img_pool256", "img_center64", "img_stats"), **sub16("img_sub4")},
    "g1024_image_f16.npz": {"img_f16_crops": lambda d: f16_crops(d["img_f16"]), "crop_origins": lambda d: CROP_ORIGINS},
    "e4e_inversion.npz": {**keep("x", "codes", "latent_avg", "wplus", "recon256", "img1024_stats"),
                          **sub16("img1024_sub4")},
    "e4e_features.npz": channel_views("c1_body6", "c2_body20", "c3_body23"),
    "e4e_edit.npz": {**keep("direction", "factors", "wplus_in", "wplus_edit", "edit256", "edit1024_stats"),
                     **sub16("edit1024_sub4")},
    "restyle/restyle_inversion.npz": {**keep("x", "latent_avg", "avg_image", "avg_img1024_stats", "codes", "latents",
                                             "img1024_stats", "final_img1024_center64"),
                                      **sub16("final_img1024_sub4")},
    "restyle/restyle_enc_inputs.npz": {"enc_input4_prev": enc_prev4},
    "restyle/restyle_features.npz": channel_views("body2", "body6", "body20", "body23"),
    "restyle/restyle_features_l0.npz": {**keep("input_layer_chstats", "input_layer_stats"),
                                        "input_layer_sub2_ch": lambda d: first_channels(d["input_layer_sub2"])},
    "samm/samm_inputs.npz": keep("smile_direction", "edit_intensity"),
    "samm/samm_block_unit.npz": block_unit(),
    "samm/samm_block32_io.npz": {**keep("G_32", "E_32", "align_32"), **channel_views("y_32")},
    "samm/samm_grace_inv.npz": samm_case(("x256",)),
    "samm/samm_grace_edit.npz": samm_case(),
    "samm/samm_grace_k1.npz": samm_case(),
    "samm/samm_smooth_inv.npz": samm_case(),
    "samm/samm_grace_inv_full_mask_gen_f16.npz": {"mask1024_f16_crops": lambda d: f16_crops(d["mask1024_f16"]),
                                                  "gen_f16_crops": lambda d: f16_crops(d["gen_f16"]),
                                                  "crop_origins": lambda d: CROP_ORIGINS},
    "samm/samm_grace_inv_full_out_f16.npz": {"out_f16_crops": lambda d: f16_crops(d["out_f16"]),
                                             "crop_origins": lambda d: CROP_ORIGINS},
}


def load(path: Path) -> dict[str, Array]:
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def check_sources(src: Path) -> None:
    """The facts the trimming relies on, checked on the full files."""
    enc = load(src / "restyle/restyle_enc_inputs.npz")["enc_input"]
    inv = load(src / "restyle/restyle_inversion.npz")
    assert all(np.array_equal(enc[i, :, :3], inv["x"]) for i in range(5))
    assert np.array_equal(enc[0, 0, 3:], inv["avg_image"])
    assert all(np.array_equal(enc[i + 1, :, 3:], inv["recon256"][i]) for i in range(4))
    # samm_inputs' grace_u8 is the aligned photo of align/: the tests read the PNG instead of a second copy
    png = np.asarray(Image.open(src / "align/grace_hopper_aligned1024.png").convert("RGB"))
    assert np.array_equal(load(src / "samm/samm_inputs.npz")["grace_u8"], png)


def main(src: Path, out: Path) -> None:
    check_sources(src)
    for name in COPIED:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, out / name)
    # the 1024 input images are PNG files (lossless, a third of the npz size): grace is align/'s aligned photo
    smooth = load(src / "samm/samm_inputs.npz")["smooth_u8"]
    Image.fromarray(smooth).save(out / SMOOTH_PNG, optimize=True)
    assert np.array_equal(np.asarray(Image.open(out / SMOOTH_PNG)), smooth)
    for name, spec in FILES.items():
        d = load(src / name)
        arrays = {key: make(d) for key, make in spec.items()}
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / name, **arrays)
        print(f"{name:45s} {(out / name).stat().st_size / 1e6:6.2f} MB  (was {(src / name).stat().st_size / 1e6:.2f})")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.split("\n\n")[1])
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).resolve().parent)
