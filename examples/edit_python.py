"""Edit the faces of a photo with the Python API: found, aligned, inverted once, edited, pasted back.

    python examples/edit_python.py PHOTO [--encoder e4e_ffhq_encode.pt] [--samm net_g.pth] [--aligned] [-o out/]

The whole API in three lines:

    pipe = facefix.FacefixPipeline.from_pretrained(encoder="e4e_ffhq_encode.pt")
    result = facefix.edit_photo(pipe, "photo.jpg", age=3)
    facefix.save_image("photo_age+3.jpg", result.image, like=result.photo)

Without --encoder the manifest's e4e checkpoint is downloaded once into the Hugging Face cache. Without --samm
(no SAMM weights are published) a training-free mask keeps what the GAN cannot reproduce: the face region of a
photo, the reconstruction error of an aligned crop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import facefix
from facefix.batch import safe_label
from facefix.latents import save_latent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photo", type=Path, help="a photo (or, with --aligned, an FFHQ-aligned square crop)")
    ap.add_argument("--encoder", type=Path, default=None, help="e4e checkpoint (.pt)")
    ap.add_argument("--samm", type=Path, default=None, help="SAMM weights (.pth/.pt)")
    ap.add_argument("--aligned", action="store_true", help="the input is already an aligned crop")
    ap.add_argument("-o", "--output", type=Path, default=Path("facefix-out"))
    args = ap.parse_args()

    pipe = facefix.FacefixPipeline.from_pretrained(encoder=args.encoder, samm=args.samm, device="auto")
    photo = facefix.load_image(args.photo)
    options = facefix.PhotoOptions(face="all", aligned=args.aligned)
    # One encoding per face, then one render per edit: a sweep of three ages.
    result = facefix.edit_photo(pipe, photo, age="-3:3:3", options=options)
    print(f"{len(result.faces)} face(s), mask {result.mask_mode}")

    args.output.mkdir(parents=True, exist_ok=True)
    for j, label in enumerate(result.labels):
        # a photo comes back whole, with the faces pasted in; an aligned crop comes back as the edited crop
        image = result.images[j] if result.images else result.faces[0].images[j]
        path = args.output / f"{args.photo.stem}_{safe_label(label)}.png"
        facefix.save_image(path, image, like=result.photo)
        print(f"wrote {path}")
    for k, face in enumerate(result.faces):  # W+ codes [1,18,512], reusable with `facefix edit --latent`
        save_latent(args.output / f"{args.photo.stem}_face{k}.latent.pt", face.w_plus)


if __name__ == "__main__":
    main()
