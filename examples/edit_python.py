"""Edit an FFHQ-aligned face with the Python API: encode once, render several edits, keep out-of-domain regions.

    python examples/edit_python.py FACE_1024.png [--encoder e4e_ffhq_encode.pt] [--samm net_g.pth] [-o out/]

Without --encoder the manifest's e4e checkpoint is downloaded once into the Hugging Face cache. Without --samm
(no SAMM weights are published) the training-free error mask keeps what the GAN cannot reproduce.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facefix.edits import apply_edits, build_edits
from facefix.image_io import load_image, save_image, to_uint8
from facefix.latents import save_latent
from facefix.pipeline import FacefixPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("face", type=Path, help="FFHQ-aligned square crop (see `facefix align`)")
    ap.add_argument("--encoder", type=Path, default=None, help="e4e checkpoint (.pt)")
    ap.add_argument("--samm", type=Path, default=None, help="SAMM weights (.pth/.pt)")
    ap.add_argument("-o", "--output", type=Path, default=Path("facefix-out"))
    args = ap.parse_args()

    pipe = FacefixPipeline.from_pretrained(encoder=args.encoder, samm=args.samm, device="auto")
    mask = "samm" if args.samm else "error"
    x, x256 = pipe.prepare(load_image(args.face).rgb)        # x: [1,3,1024,1024], x256: [1,3,256,256] in [-1,1]
    inversion = pipe.encode(x256)                            # w_plus [1,18,512] (+ encoder taps for SAMM)
    reference = pipe.render(x, inversion, mask=mask)         # the inversion, and its mask [1,1,1024,1024]
    args.output.mkdir(parents=True, exist_ok=True)
    save_image(args.output / f"{args.face.stem}.inversion.png", to_uint8(reference.image[0].cpu()))
    save_latent(args.output / f"{args.face.stem}.latent.pt", inversion.w_plus)
    for variant in build_edits(age="-3:3:3") + build_edits(smile=1.5):   # one encoding, one render per edit
        edited = apply_edits(inversion.w_plus, variant.edits)
        out = pipe.render(x, inversion, w_plus=edited, mask=mask, reference=reference)
        save_image(args.output / f"{args.face.stem}_{variant.label}.png", to_uint8(out.image[0].cpu()))
        print(f"wrote {args.face.stem}_{variant.label}.png")


if __name__ == "__main__":
    main()
