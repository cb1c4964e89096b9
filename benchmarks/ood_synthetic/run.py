"""Synthetic out-of-domain benchmark: does SAMM's invertibility mask find what the generator cannot make?

Run:  python benchmarks/ood_synthetic/run.py [--quick] [--threads N] [--work DIR] [--readme]

Real FFHQ and real weights are out of reach here, and the paper shows masks only as pictures. A synthetic world
gives what real data never does, the true out-of-domain mask:

1. **Domain.** A small StyleGAN2 in facefix's architecture (``Generator(64, channel_max=C)``, recipe weights with
   this benchmark's seed base, noise strengths zeroed so that an image is a function of its w alone, and therefore
   the random noise of SAMM training changes nothing). Its images G(w), w = mapping(z), are the domain.
2. **Encoder.** facefix's ``SmallEncoder`` (same interface as e4e: a 256 px input, W+ offsets and the 32/64 px taps
   SAMM reads), trained here on a pool of domain images to regress their known w. A pixel loss through G is
   available (``encoder_pixel_weight``) but off: in a 300-step trial it made a step 2.5x dearer and did not
   invert better at equal steps, and CPU minutes are the budget. Like e4e on real faces the encoder is decent but
   imperfect. It is saved in the e4e file layout (``checkpoints.save_encoder``), so ``--encoder`` reads it with
   its generator.
3. **Test and training images.** Domain images with (a) pasted occluders of known shape: patches of other domain
   images, solid and noise patches, strokes, text (the true mask is exactly their pixels), and (b) for half of them
   a small rotation / scale / shift of the clean image (reflect-padded), which is *not* in the true mask: the flow
   should absorb it and the mask should leave it alone.
4. **SAMM** is trained with ``facefix train samm`` (a subprocess running the real command and config path) on the
   training images. Differences from the recipe, because the run is minutes instead of days: learning rate, step
   count, lr decay, EMA decay, the 64 px level active from the start, and the pixel weight (20 instead of 1: the
   VGG perceptual and Gram terms, which carry most of the recipe's reconstruction signal, need weights that are
   not available). Losses: pixel MSE + mask binary + mask area, with the recipe's weights and area thresholds.
5. **Evaluation** on held-out images: mask IoU / precision / recall vs the true occluder mask at three thresholds
   (pooled over all held-out pixels), and PSNR / SSIM of the output vs the input over the whole image, inside the
   true mask and outside it, for: encoder only; ``--mask error`` with (low, high) tuned for IoU on the training
   images (with their true masks: a generous baseline); SAMM with cycle_align 1 and 2; SAMM's mask without its
   flow (the official ``skip_SA`` ablation: blend with the plain generator output); and the true mask as an
   oracle. ``--mask face`` needs 68 face landmarks, which synthetic images do not have: not applicable.

Region metrics: PSNR inside / outside is computed from the MSE pooled over all held-out pixels of the region (an
image whose occluder is reproduced exactly would otherwise give an infinite per-image PSNR); SSIM inside / outside
averages the SSIM map (``facefix.losses.ssim_map``, 11 px window, "valid") over the region. Whole-image PSNR and
SSIM are the per-image means. All metrics are on the 8-bit images.

``--quick`` is the test-suite version (tests/test_ood_synthetic.py): fewer images and steps, same code.
Outputs (in ``--work``, default a temp folder): data/, encoder.pt, samm run folder, results.json, results.md and
figure.png; ``--readme`` also copies the table and figure into benchmarks/ood_synthetic/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from facefix import checkpoints
from facefix.image_io import save_image, to_tensor, to_uint8
from facefix.losses import psnr, ssim, ssim_map, to_unit_u8
from facefix.masks import error_mask
from facefix.models.encoders import SmallEncoder
from facefix.models.samm import SAMM, SAMMTrace, blend, compose_mask
from facefix.models.stylegan2 import Generator
from facefix.pipeline import encoder_input

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GENERATOR_SEED_BASE = 31_000  # recipe seeds of the synthetic generator (the test recipe uses 1000)
THRESHOLDS = (0.25, 0.5, 0.75)
LogFn = Callable[[str], object]


@dataclass(frozen=True)
class BenchConfig:
    """Everything the benchmark depends on; one seed drives all randomness."""

    seed: int = 0
    size: int = 64                  # generator resolution (SAMM levels 32 and 64)
    channel_max: int = 32           # generator (and so SAMM) channels per level
    encoder_width: int = 16         # SmallEncoder first-stage width
    encoder_pool: int = 4096        # domain images the encoder trains on
    n_train: int = 512              # SAMM training images (the first n_val are its validation images)
    n_val: int = 8
    n_test: int = 128               # held-out evaluation images
    encoder_steps: int = 2000
    encoder_batch: int = 32
    encoder_lr: float = 1e-3
    encoder_pixel_weight: float = 0.0  # see the module docstring
    samm_steps: int = 1500
    samm_batch: int = 4
    samm_lr: float = 2e-3
    samm_ema_decay: float = 0.99
    samm_pixel_weight: float = 20.0  # the recipe's 1, raised: its VGG terms, which carry most signal, are off here
    misalign_prob: float = 0.5      # share of images with a small rotation / scale / shift
    threads: int = 1

    def samm_toml(self) -> str:
        """The ``facefix train samm --config`` file: the recipe with a short-run lr, EMA and schedule."""
        return (f"lr = {self.samm_lr}\nbatch_size = {self.samm_batch}\nmax_steps = {self.samm_steps}\n"
                f"seed = {self.seed}\nema_decay = {self.samm_ema_decay}\npixel_weight = {self.samm_pixel_weight}\n"
                f"lr_decay_every = {max(self.samm_steps // 3, 1)}\nlr_decay = 0.5\n"
                f"progressive_steps = [0, 0, 0]\nnum_workers = 0\nval_images = {self.n_val}\n"
                f"val_every = {self.samm_steps}\nckpt_every = {self.samm_steps}\n"
                f"log_every = {max(self.samm_steps // 10, 1)}\n")


QUICK = BenchConfig(n_train=40, n_val=2, n_test=16, encoder_pool=256, encoder_steps=100, samm_steps=150,
                    samm_batch=2, samm_lr=4e-3, samm_ema_decay=0.9)


# -- the synthetic world ----------------------------------------------------------------------------------------


def _rng(cfg: BenchConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream])


def _torch_gen(cfg: BenchConfig, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(_rng(cfg, stream).integers(2**62)))


def build_generator(cfg: BenchConfig) -> tuple[Generator, Tensor]:
    """The domain: a recipe-weight ``Generator(size, channel_max)`` with zero noise strengths, and its W mean
    [512] (mean of 4096 mapped z)."""
    if str(REPO) not in sys.path:  # run as a script: the recipe weights are a test helper (tests/recipe.py)
        sys.path.insert(0, str(REPO))
    from tests.recipe import fill_module

    g = Generator(cfg.size, channel_multiplier=1, channel_max=cfg.channel_max)
    g = fill_module(g, "generator", GENERATOR_SEED_BASE + 1000 * cfg.seed).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.zero_()  # G(w) is then deterministic: the domain is exactly {G(w)}
        w_avg = g.mapping(torch.randn(4096, g.style_dim, generator=_torch_gen(cfg, 1))).mean(0)
    return g, w_avg


def sample_w(g: Generator, n: int, gen: torch.Generator) -> Tensor:
    """n domain latents w = mapping(z), z ~ N(0, I): [n,512]."""
    with torch.no_grad():
        return g.mapping(torch.randn(n, g.style_dim, generator=gen))


def render(g: Generator, w: Tensor) -> list[np.ndarray]:
    """Domain images as the uint8 [S,S,3] files they become (w [N,512] broadcast to W+)."""
    with torch.no_grad():
        x = g.synthesis(w)
    return [to_uint8(img) for img in x]


def train_encoder(g: Generator, w_avg: Tensor, cfg: BenchConfig, log: LogFn) -> SmallEncoder:
    """A SmallEncoder that inverts ``g``, trained on a pool of ``encoder_pool`` domain images rendered once:
    loss = MSE(w_hat, w) + pixel weight * MSE(G(w_hat), x), Adam with cosine decay. Its input is made as SAMM
    training makes it (8-bit image, bilinear to 256 px: ``encoder_input(..., "bilinear")``)."""
    w_pool = sample_w(g, cfg.encoder_pool, _torch_gen(cfg, 2))
    imgs = [img for start in range(0, cfg.encoder_pool, 64) for img in render(g, w_pool[start:start + 64])]
    x_pool, x256_pool = to_tensor(imgs), encoder_input(imgs, "bilinear")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        enc = SmallEncoder(g.n_latent, cfg.encoder_width)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.encoder_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.encoder_steps)
    order = _torch_gen(cfg, 3)
    t0 = time.perf_counter()
    for step in range(cfg.encoder_steps):
        idx = torch.randint(0, cfg.encoder_pool, (cfg.encoder_batch,), generator=order)
        w_hat = enc(x256_pool[idx]) + w_avg
        loss_w = F.mse_loss(w_hat, w_pool[idx, None].expand_as(w_hat))
        loss = loss_w
        if cfg.encoder_pixel_weight > 0:
            loss = loss + cfg.encoder_pixel_weight * F.mse_loss(g.synthesis(w_hat), x_pool[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(cfg.encoder_steps // 5, 1) == 0:
            log(f"encoder step {step + 1}/{cfg.encoder_steps}: loss {loss.item():.4f} (w-MSE {loss_w.item():.4f}), "
                f"{time.perf_counter() - t0:.0f}s")
    return enc.eval().requires_grad_(False)


# -- corruptions ------------------------------------------------------------------------------------------------


def misalign(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small similarity warp of the whole image (rotation +-4 deg, scale 0.95-1.05, shift +-2 px), reflect
    border: in-domain content slightly off the generator's grid, which SAMM's flow should absorb."""
    import cv2

    s = img.shape[0]
    m = cv2.getRotationMatrix2D((s / 2 - 0.5, s / 2 - 0.5), rng.uniform(-4, 4), rng.uniform(0.95, 1.05))
    m[:, 2] += rng.uniform(-2, 2, size=2)
    return cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _box(rng: np.random.Generator, s: int, lo: float, hi: float) -> tuple[int, int, int, int]:
    """A random rectangle (x0, y0, x1, y1), x1/y1 exclusive, inside an s x s image, sides lo..hi of s."""
    w, h = (int(round(rng.uniform(lo, hi) * s)) for _ in range(2))
    x0, y0 = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
    return x0, y0, x0 + w, y0 + h


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A uniformly random RGB colour, uint8 values."""
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


OCCLUDERS = ("patch", "solid", "noise", "strokes", "text")


def occlude(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator,
            kinds: Sequence[str] = OCCLUDERS) -> tuple[np.ndarray, np.ndarray]:
    """Paste 1-2 occluders of random kinds onto ``img`` (uint8 [S,S,3]); returns (image, true mask bool [S,S]).

    patch: a rectangle of another domain image (``donor``); solid / noise: a rectangle of one colour / of uniform
    noise; strokes: 2-4 polylines 2-4 px wide; text: 2-4 capital letters. Drawing is aliased (no partial pixels),
    so the mask is exactly the occluders' pixels.
    """
    s = img.shape[0]
    out = Image.fromarray(img)
    mask = np.zeros((s, s), bool)
    for _ in range(int(rng.integers(1, 3))):
        kind = kinds[int(rng.integers(len(kinds)))]
        layer = Image.new("L", (s, s), 0)  # this occluder's pixels
        draw = ImageDraw.Draw(layer)
        draw.fontmode = "1"
        if kind in ("patch", "solid", "noise"):
            x0, y0, x1, y1 = _box(rng, s, 0.2, 0.45)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
        elif kind == "strokes":
            for _ in range(int(rng.integers(2, 5))):
                pts = [tuple(float(v) for v in rng.uniform(0, s, size=2)) for _ in range(int(rng.integers(2, 5)))]
                draw.line(pts, fill=255, width=int(rng.integers(2, 5)))
        else:
            font = ImageFont.load_default(size=int(rng.integers(s // 4, s // 3 + 1)))
            text = "".join(chr(int(c)) for c in rng.integers(65, 91, size=int(rng.integers(2, 5))))
            draw.text(tuple(float(v) for v in rng.uniform(0, s * 0.5, size=2)), text, fill=255, font=font)
        if kind == "patch":
            src = donor
        elif kind == "noise":
            src = rng.integers(0, 256, size=img.shape, dtype=np.uint8)
        else:
            src = np.broadcast_to(np.array(_color(rng), np.uint8), img.shape)
        out.paste(Image.fromarray(np.ascontiguousarray(src)), (0, 0), layer)
        mask |= np.asarray(layer) > 0
    return np.asarray(out), mask


@dataclass
class Split:
    """Corrupted images uint8 [N,S,S,3], their true occluder masks bool [N,S,S], which were misaligned [N] and the
    clean domain images they were made from uint8 [N,S,S,3]."""

    images: np.ndarray
    masks: np.ndarray
    misaligned: np.ndarray
    clean: np.ndarray


def make_split(g: Generator, cfg: BenchConfig, n: int, stream: int) -> Split:
    """n corrupted domain images from their own seed stream (train and test never share latents)."""
    rng = _rng(cfg, stream)
    clean = render(g, sample_w(g, 2 * n, _torch_gen(cfg, stream)))  # the second half are donors of patches
    images, masks, moved = [], [], []
    for i in range(n):
        img = clean[i]
        shift = bool(rng.random() < cfg.misalign_prob)
        if shift:
            img = misalign(img, rng)
        img, mask = occlude(img, clean[n + i], rng)
        images.append(img)
        masks.append(mask)
        moved.append(shift)
    return Split(np.stack(images), np.stack(masks), np.array(moved), np.stack(clean[:n]))


def write_folder(folder: Path, split: Split) -> Path:
    """The split as PNG files (what ``facefix train samm --data`` reads), names in index order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(split.images):
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    return folder


# -- SAMM training through the CLI ------------------------------------------------------------------------------


def train_samm_cli(cfg: BenchConfig, data: Path, encoder_file: Path, run_dir: Path, log: LogFn) -> Path:
    """``python -m facefix train samm`` on ``data`` with this benchmark's config; returns samm_latest.pt.

    This checkout is first on PYTHONPATH (the subprocess must train the code under test), and OMP_NUM_THREADS
    carries the thread count.
    """
    config = run_dir.parent / "samm_train.toml"
    config.write_text(cfg.samm_toml())
    cmd = [sys.executable, "-m", "facefix", "train", "samm", "--data", str(data), "--config", str(config),
           "--encoder", str(encoder_file), "--device", "cpu", "--offline", "-o", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(cfg.threads)}
    log("$ " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    (run_dir.parent / "samm_train.log").write_text(proc.stdout + proc.stderr)
    for line in proc.stderr.splitlines():
        if line.startswith(("step ", "val ")):
            log("  " + line)
    if proc.returncode != 0:
        raise RuntimeError(f"facefix train samm failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return run_dir / "samm_latest.pt"


# -- evaluation -------------------------------------------------------------------------------------------------


@dataclass
class Outputs:
    """One method's result on the held-out split: output images [N,3,S,S] in [-1,1], and its mask [N,1,S,S] in
    [0,1] (None for methods without one)."""

    images: Tensor
    mask: Tensor | None


def samm_render(samm: SAMM, g: Generator, w_plus: Tensor, features: Mapping[str, Tensor],
                cycle_align: int | None = None) -> tuple[Tensor, Tensor]:
    """G with SAMM on the generator's levels -> (G_samm [N,3,S,S], composed mask A [N,1,S,S])."""
    levels = tuple(r for r in (32, 64, 128, 256) if r <= g.size)
    trace = SAMMTrace()
    gen = g.synthesis(w_plus, feature_hook=samm.feature_hook(samm.project(features, levels), trace, cycle_align))
    return gen, compose_mask(trace.aligns, g.size)


def tune_error_mask(x: Tensor, rec: Tensor, true: Tensor) -> tuple[float, float, float]:
    """(low, high, IoU@0.5) of ``error_mask`` maximising the pooled IoU on training images with their true masks."""
    best = (0.0, 0.0, -1.0)
    for low in np.arange(0.02, 0.82, 0.02):
        for width in (0.02, 0.05, 0.1, 0.2):
            iou = mask_scores(error_mask(x, rec, float(low), float(low + width)), true, (0.5,))["iou@0.5"]
            if iou > best[2]:
                best = (round(float(low), 2), round(float(low + width), 2), iou)
    return best


def mask_scores(mask: Tensor, true: Tensor, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """IoU, precision and recall of ``mask > t`` vs the true mask, pooled over all pixels of all images.
    mask [N,1,S,S] in [0,1]; true bool [N,1,S,S]."""
    out = {}
    for t in thresholds:
        pred = mask > t
        inter = (pred & true).sum().item()
        out[f"iou@{t}"] = inter / max((pred | true).sum().item(), 1)
        out[f"precision@{t}"] = inter / max(pred.sum().item(), 1)
        out[f"recall@{t}"] = inter / max(true.sum().item(), 1)
    return out


def fidelity(y: Tensor, x: Tensor, true: Tensor) -> dict[str, float]:
    """PSNR / SSIM of outputs y vs inputs x ([N,3,S,S] in [-1,1]) over the whole image (per-image means), inside
    the true mask and outside it (PSNR of the pooled MSE; mean of the SSIM map over the region)."""
    sq = (to_unit_u8(y) - to_unit_u8(x)).pow(2).mean(dim=1, keepdim=True)  # [N,1,S,S]
    smap = ssim_map(y, x).mean(dim=1, keepdim=True)  # [N,1,S-10,S-10]
    crop = (true.shape[-1] - smap.shape[-1]) // 2
    inner = true[..., crop:-crop, crop:-crop]
    out = {"psnr": psnr(y, x).mean().item(), "ssim": ssim(y, x).mean().item()}
    for name, region, sregion in (("in", true, inner), ("out", ~true, ~inner)):
        out[f"psnr_{name}"] = 10 * math.log10(1 / max(sq[region].mean().item(), 1e-10))
        out[f"ssim_{name}"] = smap[sregion].mean().item()
    return out


def evaluate(g: Generator, enc: SmallEncoder, w_avg: Tensor, samm: SAMM, test: Split,
             error_thresholds: tuple[float, float]) -> dict[str, Outputs]:
    """Every method's outputs on the held-out split (fixed noise; batches of 16)."""
    methods: dict[str, list[tuple[Tensor, Tensor | None]]] = {}
    for start in range(0, len(test.images), 16):
        imgs = list(test.images[start:start + 16])
        x = to_tensor(imgs)
        true = torch.from_numpy(test.masks[start:start + 16])[:, None].float()
        with torch.no_grad():
            out = enc.encode(encoder_input(imgs, "bilinear"), return_features=True)
            assert out.features is not None
            w_plus = out.codes + w_avg
            rec = g.synthesis(w_plus)
            err = error_mask(x, rec, *error_thresholds)
            rows = {"encoder only": (rec, None), "error mask": (blend(x, rec, err), err)}
            for k in (1, 2):
                gen, mask = samm_render(samm, g, w_plus, out.features, cycle_align=k)
                rows[f"SAMM cycle_align {k}"] = (blend(x, gen, mask), mask)
                if k == 2:
                    rows["SAMM mask, no flow"] = (blend(x, rec, mask), mask)
            rows["true mask (oracle)"] = (blend(x, rec, true), true)
        for name, value in rows.items():
            methods.setdefault(name, []).append(value)
    return {name: Outputs(torch.cat([v[0] for v in vals]),
                          None if vals[0][1] is None else torch.cat([v[1] for v in vals]))  # type: ignore[misc]
            for name, vals in methods.items()}


def score(outputs: Mapping[str, Outputs], test: Split) -> dict[str, dict[str, float]]:
    """Mask and fidelity metrics of every method (the oracle's mask scores are 1 by construction: left out), and
    PSNR outside the occluders on the misaligned images alone."""
    x = to_tensor(list(test.images))
    true = torch.from_numpy(test.masks)[:, None]
    moved = torch.from_numpy(test.misaligned)
    table = {}
    for name, out in outputs.items():
        row = fidelity(out.images, x, true)
        # what the flow is for: in-domain content slightly off the generator's grid
        row["psnr_out_misaligned"] = fidelity(out.images[moved], x[moved], true[moved])["psnr_out"]
        if out.mask is not None and not name.startswith("true mask"):
            row.update(mask_scores(out.mask, true))
        table[name] = row
    return table


# -- report -----------------------------------------------------------------------------------------------------


def markdown_table(table: Mapping[str, Mapping[str, float]]) -> str:
    """Two tables: mask quality (IoU / precision / recall at each threshold) and fidelity (PSNR dB / SSIM)."""
    mask_cols = [f"{m}@{t}" for t in THRESHOLDS for m in ("iou", "precision", "recall")]
    lines = ["| method | " + " | ".join(c.replace("precision", "P").replace("recall", "R").replace("iou", "IoU")
                                        for c in mask_cols) + " |",
             "|---|" + "---:|" * len(mask_cols)]
    for name, row in table.items():
        if "iou@0.5" in row:
            lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in mask_cols) + " |")
    fid_cols = ["psnr", "psnr_in", "psnr_out", "psnr_out_misaligned", "ssim", "ssim_in", "ssim_out"]
    heads = ["PSNR all", "PSNR in occluders", "PSNR outside", "PSNR outside, misaligned images", "SSIM all",
             "SSIM in", "SSIM outside"]
    lines += ["", "| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for name, row in table.items():
        cells = ["exact" if c.startswith("psnr") and row[c] >= 99.9 else f"{row[c]:.2f}" if c.startswith("psnr")
                 else f"{row[c]:.3f}" for c in fid_cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(path: Path, test: Split, outputs: Mapping[str, Outputs], n: int = 6, zoom: int = 3) -> None:
    """PNG grid, one held-out case per row: input | encoder inversion | true mask | SAMM mask | SAMM output |
    error mask (each zoomed ``zoom``x, nearest), with a header line."""
    def tile(t: Tensor) -> np.ndarray:
        rgb = to_uint8(t.expand(3, -1, -1) * 2 - 1 if t.shape[0] == 1 else t)
        return np.kron(rgb, np.ones((zoom, zoom, 1), np.uint8))

    samm = outputs["SAMM cycle_align 2"]
    assert samm.mask is not None and outputs["error mask"].mask is not None
    rows = []
    for i in range(min(n, len(test.images))):
        true = torch.from_numpy(test.masks[i])[None].float()
        cells = [to_tensor(test.images[i])[0], outputs["encoder only"].images[i], true, samm.mask[i],
                 samm.images[i], outputs["error mask"].mask[i]]
        rows.append(np.concatenate([tile(c) for c in cells], axis=1))
    grid = np.concatenate(rows, axis=0)
    head = Image.new("RGB", (grid.shape[1], 16), (255, 255, 255))
    draw = ImageDraw.Draw(head)
    cell = grid.shape[1] // 6
    for j, label in enumerate(("input", "encoder only", "true mask", "SAMM mask", "SAMM output", "error mask")):
        draw.text((j * cell + 3, 2), label, fill=(0, 0, 0))
    save_image(path, np.concatenate([np.asarray(head), grid], axis=0))


# -- driver -----------------------------------------------------------------------------------------------------


def run(cfg: BenchConfig, work: Path, log: LogFn = print) -> dict[str, object]:
    """The whole benchmark in ``work``; returns {"config", "table", "error_thresholds", "times_s", ...} and writes
    results.json, results.md and figure.png there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, work, log)
    finally:
        torch.set_num_threads(threads)  # the test suite runs this in-process


def _run(cfg: BenchConfig, work: Path, log: LogFn) -> dict[str, object]:
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        times[name] = round(time.perf_counter() - t, 1)
        log(f"[{name}: {times[name]:.1f}s]")
        t = time.perf_counter()

    g, w_avg = build_generator(cfg)
    enc = train_encoder(g, w_avg, cfg, log)
    encoder_file = work / "encoder.pt"
    checkpoints.save_encoder(encoder_file, enc, g, w_avg)
    lap("encoder")
    train, test = make_split(g, cfg, cfg.n_train, 10), make_split(g, cfg, cfg.n_test, 11)
    data = write_folder(work / "data" / "train", train)
    lap("data")
    run_dir = work / "samm_run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    samm_file = train_samm_cli(cfg, data, encoder_file, run_dir, log)
    lap("samm training")

    loaded = checkpoints.load_encoder(encoder_file)  # evaluate what the files hold, as a user would
    g, enc, w_avg = loaded.generator, loaded.encoder, loaded.latent_avg
    assert isinstance(enc, SmallEncoder)
    samm = checkpoints.load_samm(samm_file, g)
    fit = train.images[cfg.n_val:]  # the error mask is tuned on SAMM's training images
    with torch.no_grad():
        x_fit = to_tensor(list(fit))
        rec_fit = g.synthesis(enc(encoder_input(list(fit), "bilinear")) + w_avg)
        clean = list(test.clean)
        clean_psnr = psnr(g.synthesis(enc(encoder_input(clean, "bilinear")) + w_avg), to_tensor(clean))
    log(f"encoder on the clean held-out images: PSNR {clean_psnr.mean().item():.2f} dB")
    low, high, fit_iou = tune_error_mask(x_fit, rec_fit, torch.from_numpy(train.masks[cfg.n_val:])[:, None])
    log(f"error mask tuned on {len(fit)} training images: low {low}, high {high} (IoU@0.5 {fit_iou:.3f})")
    outputs = evaluate(g, enc, w_avg, samm, test, (low, high))
    table = score(outputs, test)
    lap("evaluation")

    md = markdown_table(table)
    figure(work / "figure.png", test, outputs)
    result = {"config": dataclasses.asdict(cfg), "table": table, "error_thresholds": [low, high],
              "times_s": times, "total_s": round(sum(times.values()), 1), "n_test": len(test.images),
              "encoder_clean_psnr": clean_psnr.mean().item(), "true_mask_fraction": float(test.masks.mean()),
              "misaligned_fraction": float(test.misaligned.mean()),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                         f"{cfg.threads} thread(s)"}
    (work / "results.json").write_text(json.dumps(result, indent=2))
    (work / "results.md").write_text(md + "\n")
    log(md)
    log(f"total {result['total_s']:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in times.items())})")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the test-suite size (about a minute)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None, help="output folder (default: a new temp folder)")
    ap.add_argument("--readme", action="store_true",
                    help="copy results.md, results.json and figure.png into benchmarks/ood_synthetic/")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else BenchConfig()
    overrides = {k: v for k, v in (("threads", args.threads), ("seed", args.seed)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    work = args.work or Path(tempfile.mkdtemp(prefix="ood_synthetic_"))
    run(cfg, work)
    if args.readme:
        for name in ("results.md", "results.json", "figure.png"):
            shutil.copyfile(work / name, HERE / name)
    print(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
