"""The ``facefix`` command line (Typer): parse options, build the pipeline once, run it per input, report.

This is the one place where errors become lines on stderr and exit codes (``shared/design/cli.md``):
0 every input succeeded, 1 some inputs failed (each reported, the others still written), 2 usage error.
A :class:`FacefixError` is one line; any other exception is "internal error ... rerun with --debug", and
``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from facefix import __version__
from facefix.errors import FacefixError, UsageError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
SAVE_CHOICES = ("aligned", "mask", "latent", "grid")
MASK_CHOICES = ("samm", "error", "face", "none")

app = typer.Typer(
    name="facefix",
    help="Edit faces in real photos: FFHQ alignment, e4e/ReStyle inversion into StyleGAN2, paste-back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _err(msg: str) -> None:
    typer.echo(f"facefix: {msg}", err=True)


@contextmanager
def _errors_to_exit(debug: bool) -> Iterator[None]:
    """Map library errors to one line + exit code; keep tracebacks for --debug."""
    try:
        yield
    except typer.Exit:
        raise
    except UsageError as e:
        if debug:
            traceback.print_exc()
        _err(str(e))
        raise typer.Exit(EXIT_USAGE) from None
    except FacefixError as e:
        if debug:
            traceback.print_exc()
        _err(str(e))
        raise typer.Exit(EXIT_SOME_FAILED) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:  # `facefix weights list | head`: the reader left, nothing to report
        sys.stderr.close()
        raise typer.Exit(EXIT_OK) from None
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into a line
        if debug:
            traceback.print_exc()
        else:
            _err(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        raise typer.Exit(EXIT_SOME_FAILED) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"facefix {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """facefix: photo in, photo out."""


@dataclass
class InputReport:
    """One row of ``facefix-report.json``."""

    input: str
    status: str = "ok"  # ok | skipped | failed
    outputs: list[str] = field(default_factory=list)
    faces: int = 0
    seconds: float = 0.0
    error: str | None = None


def _parse_save(save: str | None) -> set[str]:
    if not save:
        return set()
    items = {s.strip() for s in save.split(",") if s.strip()}
    bad = items - set(SAVE_CHOICES)
    if bad:
        raise UsageError(f"--save {save!r}: unknown item(s) {', '.join(sorted(bad))}; choose from "
                         f"{','.join(SAVE_CHOICES)}")
    return items


def _collect_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders expanded recursively to image files (by extension for now), sorted."""
    exts = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts))
        else:
            out.append(p)
    return out


def _run_inputs(paths: list[Path], out_dir: Path, work: Callable[[Path, InputReport], None], quiet: bool,
                as_json: bool, command: str, options: dict[str, Any]) -> int:
    """Run ``work`` per input; one bad input never stops the others. Writes facefix-report.json."""
    from facefix.image_io import atomic_write_bytes

    reports: list[InputReport] = []
    for i, path in enumerate(paths, 1):
        rep = InputReport(input=str(path))
        t0 = time.perf_counter()
        try:
            work(path, rep)
        except FacefixError as e:
            rep.status, rep.error = "failed", str(e)
        except Exception as e:  # noqa: BLE001 - recorded per input, the run goes on
            rep.status, rep.error = "failed", f"internal error: {type(e).__name__}: {e}"
            if options.get("debug"):
                traceback.print_exc()
        rep.seconds = round(time.perf_counter() - t0, 3)
        reports.append(rep)
        if rep.status == "failed":
            _err(rep.error or "failed")
        elif not quiet:
            typer.echo(f"[{i}/{len(paths)}] {path}: {rep.status} ({rep.seconds:.1f} s)", err=True)
    failed = [r for r in reports if r.status == "failed"]
    report = {"facefix": __version__, "command": command, "options": options,
              "summary": {"inputs": len(reports), "ok": sum(r.status == "ok" for r in reports),
                          "skipped": sum(r.status == "skipped" for r in reports), "failed": len(failed)},
              "inputs": [asdict(r) for r in reports]}
    text = json.dumps(report, indent=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "facefix-report.json", text.encode())
    if as_json:
        typer.echo(text)
    if failed:
        _err(f"{len(failed)} of {len(reports)} input(s) failed: " +
             "; ".join(str(r.error) for r in failed[:5]) + (" ..." if len(failed) > 5 else ""))
        return EXIT_SOME_FAILED
    return EXIT_OK


Inputs = Annotated[list[str], typer.Argument(help="Image files or folders (searched recursively).",
                                             show_default=False)]
OutDir = Annotated[Path, typer.Option("-o", "--output", help="Output folder; created if missing.")]


@app.command()
def invert(
    inputs: Inputs,
    output: OutDir = Path("facefix-out"),
    aligned: Annotated[bool, typer.Option("--aligned", help="Inputs are already FFHQ-aligned square crops "
                                          "(resized to 1024 if needed): no detection, no paste-back.")] = False,
    generator: Annotated[Path | None, typer.Option(help="StyleGAN2 checkpoint (rosinality .pt). Default: the "
                                                   "encoder file's own decoder.")] = None,
    encoder: Annotated[Path | None, typer.Option(help="e4e or ReStyle-e4e checkpoint (.pt). Default: the "
                                                 "manifest's file, downloaded once to the Hugging Face cache.")] = None,
    encoder_type: Annotated[str, typer.Option(help="e4e or restyle.")] = "e4e",
    restyle_iters: Annotated[int, typer.Option(help="ReStyle refinement steps.", min=1, max=20)] = 5,
    mask: Annotated[str, typer.Option(help="Out-of-domain mask: samm, error, face or none. This version "
                                      "implements none only.")] = "none",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    resolution: Annotated[int, typer.Option(help="Output size in px: 1024, 512 or 256 (early exit of the "
                                            "generator; smaller is faster).")] = 1024,
    seed: Annotated[int | None, typer.Option(help="Random generator noise from this seed instead of the "
                                             "checkpoint's fixed noise.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network (as HF_HUB_OFFLINE=1).")] = False,
    face: Annotated[str, typer.Option(help="Which detected face(s): best (largest), all, or N (0-based, "
                                      "left to right).")] = "best",
    no_paste_back: Annotated[bool, typer.Option("--no-paste-back", help="Write the aligned 1024 result only, "
                                                "not the full photo.")] = False,
    save: Annotated[str | None, typer.Option(help="Extra outputs, comma-separated: aligned (the input's FFHQ "
                                             "crop), latent (W+ code .pt, float32 [1,18,512]).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip "
                                            "inputs whose outputs exist).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Full tracebacks.")] = False,
) -> None:
    """Invert faces into StyleGAN2's W+ space and write the reconstruction.

    Outputs per input photo: OUT/<name>.<ext> (the photo with the re-synthesised face pasted back, same format),
    or with --aligned / --no-paste-back OUT/<name>[_faceK].png (the 1024 result). With --save latent:
    OUT/<name>[_faceK].latent.pt; with --save aligned: OUT/<name>[_faceK].aligned.png. _faceK (K = 0, 1, ...) is
    added when --face all finds several faces.
    """
    with _errors_to_exit(debug):
        extras = _parse_save(save)
        unsupported = extras - {"latent", "aligned"}
        if unsupported:
            raise UsageError(f"--save {','.join(sorted(unsupported))}: not available in this version")
        if mask not in MASK_CHOICES:
            raise UsageError(f"--mask {mask!r}: expected one of {', '.join(MASK_CHOICES)}")
        if mask != "none":
            raise UsageError(f"--mask {mask}: not implemented in this version; use --mask none")
        if resolution not in (256, 512, 1024):
            raise UsageError(f"--resolution {resolution}: expected 1024, 512 or 256")
        which_face = _parse_face(face)
        paths = _collect_inputs(inputs)
        if not paths:
            raise UsageError("no input images found")
        output.mkdir(parents=True, exist_ok=True)

        import torch

        from facefix.align import FaceDetector, align_face, detect_faces, paste_back
        from facefix.image_io import load_image, save_image, suffix_for, to_uint8
        from facefix.latents import save_latent
        from facefix.pipeline import FacefixPipeline, encoder_input
        from facefix.runtime import tune_malloc

        tune_malloc()
        pipe = FacefixPipeline.from_pretrained(generator=generator, encoder=encoder, encoder_type=encoder_type,
                                               restyle_iters=restyle_iters, device=device,
                                               offline=True if offline else None)
        detector = None if aligned else FaceDetector()
        out_res = min(resolution, pipe.generator.size)

        def work(path: Path, rep: InputReport) -> None:
            photo = load_image(path)
            if aligned:
                faces, crops = [None], [_as_aligned_crop(photo.rgb, path)]
            else:
                faces = [align_face(photo.rgb, f) for f in detect_faces(photo.rgb, detector, which_face, str(path))]
                crops = [a.crop for a in faces]
            tag = (lambda k: f"_face{k}") if len(crops) > 1 else (lambda k: "")
            paste = not (aligned or no_paste_back)
            planned: list[Path] = [output / f"{path.stem}{suffix_for(photo)}"] if paste else \
                [output / f"{path.stem}{tag(k)}.png" for k in range(len(crops))]
            for key, suffix in (("latent", ".latent.pt"), ("aligned", ".aligned.png")):
                if key in extras and not (key == "aligned" and aligned):
                    planned += [output / f"{path.stem}{tag(k)}{suffix}" for k in range(len(crops))]
            if any(p.resolve() == path.resolve() for p in planned):
                raise UsageError(f"{path}: output would overwrite the input; choose another -o")
            rep.faces, rep.outputs = len(crops), [str(p) for p in planned]
            if not overwrite and all(p.exists() for p in planned):
                rep.status = "skipped"
                return
            rng = torch.Generator().manual_seed(seed) if seed is not None else None
            result = pipe(encoder_input(crops), generator=rng, out_res=out_res)
            outs = [to_uint8(result.image[k].cpu()) for k in range(len(crops))]
            if paste:
                save_image(planned[0], paste_back(photo.rgb, outs, faces), like=photo)
            else:
                for k, img in enumerate(outs):
                    save_image(output / f"{path.stem}{tag(k)}.png", img)
            for k in range(len(crops)):
                if "latent" in extras:
                    save_latent(output / f"{path.stem}{tag(k)}.latent.pt", result.w_plus[k:k + 1])
                if "aligned" in extras and not aligned:
                    save_image(output / f"{path.stem}{tag(k)}.aligned.png", crops[k])

        options = {"aligned": aligned, "face": face, "encoder_type": encoder_type, "mask": mask,
                   "device": str(pipe.device), "resolution": out_res, "seed": seed, "debug": debug}
        code = _run_inputs(paths, output, work, quiet, as_json, "invert", options)
    raise typer.Exit(code)


def _parse_face(face: str) -> str | int:
    if face in ("best", "all"):
        return face
    if face.isdigit():
        return int(face)
    raise UsageError(f"--face {face!r}: expected best, all or a face number N (0-based, left to right)")


@app.command()
def align(
    inputs: Inputs,
    output: OutDir = Path("facefix-out"),
    face: Annotated[str, typer.Option(help="Which detected face(s): best (largest), all, or N (0-based, "
                                      "left to right).")] = "best",
    size: Annotated[int, typer.Option(help="Crop size in px (FFHQ: 1024).", min=64, max=4096)] = 1024,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Full tracebacks.")] = False,
) -> None:
    """Detect faces (dlib, 68 landmarks) and write FFHQ-aligned crops with their transforms.

    Outputs per face: OUT/<name>_faceK.png (the crop) and OUT/<name>_faceK.json (quad, landmarks, and the 3x3
    crop_from_photo / photo_from_crop matrices, (x, y) pixel coordinates), K = 0, 1, ... left to right.
    """
    with _errors_to_exit(debug):
        which_face = _parse_face(face)
        paths = _collect_inputs(inputs)
        if not paths:
            raise UsageError("no input images found")
        from facefix.align import FaceDetector, align_face, detect_faces
        from facefix.image_io import atomic_write_bytes, load_image, save_image

        detector = FaceDetector()

        def work(path: Path, rep: InputReport) -> None:
            rgb = load_image(path).rgb
            found = detect_faces(rgb, detector, which_face, str(path))
            rep.faces = len(found)
            for k, f in enumerate(found):
                k_out = which_face if isinstance(which_face, int) else k
                crop_path = output / f"{path.stem}_face{k_out}.png"
                json_path = crop_path.with_suffix(".json")
                rep.outputs += [str(crop_path), str(json_path)]
                if not overwrite and crop_path.exists() and json_path.exists():
                    continue
                a = align_face(rgb, f, output_size=size)
                save_image(crop_path, a.crop)
                atomic_write_bytes(json_path, json.dumps({"input": str(path), **a.to_dict()}, indent=1).encode())

        output.mkdir(parents=True, exist_ok=True)
        code = _run_inputs(paths, output, work, quiet, as_json, "align", {"face": face, "size": size})
    raise typer.Exit(code)


weights_app = typer.Typer(help="Checkpoints: list what facefix can use, download, verify sha256, print paths.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@weights_app.command("list")
def weights_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every file facefix can use: present or not, size, licence, status and purpose (no network, no hashing)."""
    with _errors_to_exit(False):
        from facefix import weights

        rows = weights.list_entries()
        if as_json:
            typer.echo(json.dumps([{**asdict(r), "path": str(r.path) if r.path else None} for r in rows], indent=2))
            return
        for r in rows:
            mark = "present" if r.present else "-"
            typer.echo(f"{r.name:<28} {mark:<8} {_human_size(r.size):>9}  {r.status:<11} {r.licence:<24} {r.purpose}")


@weights_app.command("download")
def weights_download(names: Annotated[list[str] | None, typer.Argument(help="Entries (default: every "
                                                                      "downloadable one).")] = None,
                     debug: Annotated[bool, typer.Option("--debug", help="Full tracebacks.")] = False) -> None:
    """Download into the Hugging Face cache (HF_HOME) and verify sha256."""
    with _errors_to_exit(debug):
        from facefix import weights

        for name, path in weights.download(names or None).items():
            typer.echo(f"{name}: {path}")


@weights_app.command("verify")
def weights_verify(names: Annotated[list[str] | None, typer.Argument(help="Entries (default: all).")] = None) -> None:
    """Re-hash present files against the manifest's sha256; exit 1 on any mismatch."""
    with _errors_to_exit(False):
        from facefix import weights

        results = weights.verify(names or None)
        for r in results:
            typer.echo(f"{r.name:<28} {r.status:<9} {r.message}")
        bad = [r for r in results if r.status == "mismatch"]
    raise typer.Exit(EXIT_SOME_FAILED if bad else EXIT_OK)


@weights_app.command("path")
def weights_path(name: Annotated[str, typer.Argument(help="Entry name (see `facefix weights list`).")]) -> None:
    """Print where an entry's file is (or would be downloaded to)."""
    with _errors_to_exit(False):
        from facefix import weights

        if name not in weights.load_manifest().names():
            raise UsageError(f"unknown weights entry {name!r} (see `facefix weights list`)")
        typer.echo(str(weights.path(name)))


def _as_aligned_crop(rgb, path: Path):
    """An --aligned input as a 1024 crop: square required; other sizes resized with LANCZOS."""
    import numpy as np
    from PIL import Image

    h, w = rgb.shape[:2]
    if h != w:
        raise UsageError(f"{path}: --aligned inputs must be square FFHQ crops, got {w}x{h}")
    if h == 1024:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((1024, 1024), Image.LANCZOS))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
