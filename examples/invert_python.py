"""Invert an FFHQ-aligned face with the Python API and save the reconstruction and its W+ code.

    python examples/invert_python.py FACE_1024.png --encoder e4e_ffhq_encode.pt [-o out/]

Without --encoder the manifest's e4e checkpoint is downloaded once into the Hugging Face cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facefix.image_io import load_image, save_image, to_uint8
from facefix.latents import save_latent
from facefix.pipeline import FacefixPipeline, encoder_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("face", type=Path, help="FFHQ-aligned square crop (see `facefix align`)")
    ap.add_argument("--encoder", type=Path, default=None, help="e4e checkpoint (.pt)")
    ap.add_argument("-o", "--output", type=Path, default=Path("facefix-out"))
    args = ap.parse_args()

    pipe = FacefixPipeline.from_pretrained(encoder=args.encoder, device="auto")
    inversion = pipe.encode(encoder_input(load_image(args.face).rgb))     # w_plus: [1,18,512]
    image = pipe.synthesize(inversion.w_plus)                             # [1,3,1024,1024] in ~[-1,1]
    args.output.mkdir(parents=True, exist_ok=True)
    save_image(args.output / f"{args.face.stem}.png", to_uint8(image[0].cpu()))
    save_latent(args.output / f"{args.face.stem}.latent.pt", inversion.w_plus)
    print(f"wrote {args.output / args.face.stem}.png and .latent.pt")


if __name__ == "__main__":
    main()
