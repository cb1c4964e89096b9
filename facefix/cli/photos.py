"""``facefix invert``, ``edit`` and ``align``: options parsed into :class:`facefix.photo.PhotoOptions` and edit
variants, then :mod:`facefix.batch` runs them over the inputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from facefix.cli.core import (
    AlignedOpt,
    BatchOpt,
    CycleOpt,
    DebugOpt,
    DeviceOpt,
    EncoderOpt,
    EncoderTypeOpt,
    FaceOpt,
    GeneratorOpt,
    Inputs,
    JsonOpt,
    MaskFromOpt,
    MaskOpt,
    NoPasteOpt,
    OfflineOpt,
    OutDir,
    OverwriteOpt,
    QuietOpt,
    ResolutionOpt,
    RestyleItersOpt,
    SammOpt,
    SaveOpt,
    SeedOpt,
    ShardOpt,
    _chosen,
    _err,
    _errors_to_exit,
    _inputs,
    _parse_face,
    _parse_save,
    _run_inputs,
    app,
)
from facefix.config import EncoderType, MaskFrom, MaskMode
from facefix.errors import InputError, UsageError

if TYPE_CHECKING:
    from facefix.edits import Variant
    from facefix.photo import PhotoOptions


def _run_photos(command: str, inputs: list[str], model: dict[str, Any], options: PhotoOptions, extras: set[str],
                output: Path, overwrite: bool, shard: str | None, quiet: bool, as_json: bool, debug: bool,
                edits: Sequence[Variant] = (), latent: Path | None = None) -> int:
    """invert and edit: load the models once (``model``: from_pretrained's arguments), then
    ``facefix.batch.PhotoRun`` per input."""
    from facefix.batch import PhotoRun, safe_label
    from facefix.photo import check_saved_codes
    from facefix.pipeline import FacefixPipeline
    from facefix.runtime import tune_malloc

    items = _inputs(inputs, shard, output, [safe_label(v.label) for v in edits] if len(edits) > 1 else [])
    tune_malloc()
    pipe = FacefixPipeline.from_pretrained(**model)
    if edits:  # text edits: fs3 must fit this generator; a usage error before any photo is tried
        try:
            pipe.style_offsets(edits[0].edits)
        except InputError as e:
            raise UsageError(str(e)) from None
    opts = options.for_pipeline(pipe)  # checks --mask samm against the loaded weights (usage error, exit 2)
    if options.mask == MaskMode.auto and pipe.samm is None and not quiet:
        _err(f"no SAMM weights (none are published; pass --samm FILE or train them with `facefix train samm`): "
             f"using the training-free '{opts.mask}' mask (choose with --mask error|face|none)")
    if latent is not None:
        try:
            check_saved_codes(pipe, opts)
        except UsageError as e:
            raise UsageError(f"--latent with --encoder-type {pipe.encoder_type}: {e}") from None
    report = {"aligned": opts.aligned, "face": str(opts.face), "encoder_type": pipe.encoder_type,
              "mask": str(opts.mask), "mask_from": str(opts.mask_from),
              "samm": str(model["samm"]) if model["samm"] else None, "device": str(pipe.device),
              "resolution": opts.out_res, "seed": opts.seed, "shard": shard, "edits": [v.label for v in edits],
              "debug": debug}
    with PhotoRun(pipe, items, opts, edits, output, extras, overwrite, latent) as work:
        return _run_inputs(command, report, items, output, work, quiet, as_json, debug)


def _photo_options(aligned: bool, face: str, no_paste_back: bool, mask: str, mask_from: str, resolution: int,
                   seed: int | None, cycle_align: int | None, batch_size: int | None,
                   save: str | None) -> tuple[PhotoOptions, set[str]]:
    """The options invert and edit share, checked: (photo options, --save items)."""
    from facefix.photo import PhotoOptions

    mask, mask_from = _chosen(MaskMode, mask, "--mask"), _chosen(MaskFrom, mask_from, "--mask-from")
    if resolution not in (256, 512, 1024):
        raise UsageError(f"--resolution {resolution}: expected 1024, 512 or 256")
    extras = _parse_save(save)
    return PhotoOptions(_parse_face(face), aligned, not no_paste_back, mask, mask_from, resolution, seed,
                        cycle_align, batch_size), extras


def _model_args(generator: Path | None, encoder: Path | None, samm: Path | None, encoder_type: str,
                restyle_iters: int, device: str, offline: bool, cycle_align: int | None) -> dict[str, Any]:
    """The model options invert and edit share, checked, as ``FacefixPipeline.from_pretrained``'s arguments."""
    return {"generator": generator, "encoder": encoder, "samm": samm,
            "encoder_type": _chosen(EncoderType, encoder_type, "--encoder-type"), "restyle_iters": restyle_iters,
            "device": device, "offline": True if offline else None, "cycle_align": cycle_align}


@app.command()
def invert(
    inputs: Inputs,
    output: OutDir = Path("facefix-out"),
    aligned: AlignedOpt = False,
    generator: GeneratorOpt = None,
    encoder: EncoderOpt = None,
    samm: SammOpt = None,
    encoder_type: EncoderTypeOpt = EncoderType.e4e,
    restyle_iters: RestyleItersOpt = 5,
    mask: MaskOpt = MaskMode.auto,
    cycle_align: CycleOpt = None,
    device: DeviceOpt = "auto",
    resolution: ResolutionOpt = 1024,
    seed: SeedOpt = None,
    offline: OfflineOpt = False,
    face: FaceOpt = "best",
    no_paste_back: NoPasteOpt = False,
    save: SaveOpt = None,
    overwrite: OverwriteOpt = False,
    shard: ShardOpt = None,
    batch_size: BatchOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Invert faces into StyleGAN2's W+ space and write the reconstruction, blended into the photo.

    Outputs under OUT, named after each input's path below its input folder (KEY = a/b/photo for
    IN/a/b/photo.jpg): OUT/KEY.<ext> (the photo with the re-synthesised face pasted back, same format), or with
    --aligned / --no-paste-back OUT/KEY[_faceK].png (the aligned result). --save adds OUT/KEY[_faceK].aligned.png,
    .mask.png, .latent.pt, .grid.png. _faceK is added when several faces are processed. OUT/facefix-report.json
    records every input. Exit code 0: all ok; 1: some inputs failed; 2: usage error; 3: internal error.
    """
    with _errors_to_exit(debug):
        options, extras = _photo_options(aligned, face, no_paste_back, mask, MaskFrom.edited, resolution, seed,
                                         cycle_align, batch_size, save)
        model = _model_args(generator, encoder, samm, encoder_type, restyle_iters, device, offline, cycle_align)
        code = _run_photos("invert", inputs, model, options, extras, output, overwrite, shard, quiet, as_json, debug)
    raise typer.Exit(code)


@app.command()
def edit(
    inputs: Inputs,
    age: Annotated[str | None, typer.Option(help="InterFaceGAN age: W+ += F x unit direction on all 18 rows "
                                            "(e4e convention; useful range about -5..5; + is older). FROM:TO:N sweeps "
                                            "N values.")] = None,
    smile: Annotated[str | None, typer.Option(help="InterFaceGAN smile factor F (or sweep FROM:TO:N).")] = None,
    pose: Annotated[str | None, typer.Option(help="InterFaceGAN pose (yaw) factor F (or sweep FROM:TO:N).")] = None,
    direction: Annotated[list[str] | None, typer.Option(
        # "\\[": --help is rendered as Rich markup, where "[@...]" would be read as a tag and vanish
        help="FILE[:F]\\[@A-B]: any direction file (.pt/.npy; [512], [18,512], ...), factor F (default 1), W+ rows "
        "A..B inclusive (default all). Repeatable.")] = None,
    ganspace: Annotated[list[str] | None, typer.Option(
        help="NAME[=V] sets the face's coordinate on the edit's PCA component to V (in std units; default the "
        "edit's strength; V=0 is the FFHQ mean, not a no-op); NAME+=D moves it by D from where the face is. "
        "See `facefix directions list`. Repeatable.")] = None,
    styleclip: Annotated[list[str] | None, typer.Option(
        help="NAME[=S]: StyleCLIP latent mapper, w + S x mapper(w) (default S 0.1). Repeatable.")] = None,
    text: Annotated[str | None, typer.Option(
        help="StyleCLIP global direction towards a prompt, e.g. --text \"a face with curly hair\": the CLIP text "
        "difference to --neutral, mapped to StyleSpace through StyleCLIP's fs3 (W+ is left as is). Needs pip install "
        "'facefix\\[clip]'; CLIP ViT-B/32 (605 MB) and fs3 (12 MB) are downloaded once.")] = None,
    neutral: Annotated[str | None, typer.Option(
        help="What the face is before the --text edit (default \"a face\"); the edit is the CLIP difference "
        "target - neutral, so describe only the change in --text.", show_default=False)] = None,
    alpha: Annotated[str | None, typer.Option(
        help="Strength of --text, in style standard deviations of the most relevant channel (default 3; about -6..6 "
        "stays natural; negative = away from the prompt). FROM:TO:N sweeps N values (--alpha -5:5:11).",
        show_default=False)] = None,
    beta: Annotated[float | None, typer.Option(
        help="Disentanglement threshold of --text: only style channels whose CLIP relevance (a cosine) is at least "
        "beta change (default 0.15; 0.08..0.3; higher = fewer channels, a narrower edit).", show_default=False)
    ] = None,
    clip: Annotated[Path | None, typer.Option(
        help="CLIP text model folder for --text (config.json, vocab.json, merges.txt, model.safetensors or "
        "pytorch_model.bin). Default: OpenAI CLIP ViT-B/32 from the manifest, downloaded once.")] = None,
    fs3: Annotated[Path | None, typer.Option(
        help="StyleCLIP fs3.npy for --text (CLIP relevance of each style channel; [6048, 512] for the 1024 px FFHQ "
        "generator). Default: the pinned file, downloaded once.")] = None,
    latent: Annotated[Path | None, typer.Option(
        help="Start from saved W+ codes instead of encoding: a .pt file (one input), or the -o folder of an earlier "
        "`facefix invert --save latent` run (looked up by the same names).")] = None,
    output: OutDir = Path("facefix-out"),
    aligned: AlignedOpt = False,
    generator: GeneratorOpt = None,
    encoder: EncoderOpt = None,
    samm: SammOpt = None,
    encoder_type: EncoderTypeOpt = EncoderType.e4e,
    restyle_iters: RestyleItersOpt = 5,
    mask: MaskOpt = MaskMode.auto,
    mask_from: MaskFromOpt = MaskFrom.edited,
    cycle_align: CycleOpt = None,
    device: DeviceOpt = "auto",
    resolution: ResolutionOpt = 1024,
    seed: SeedOpt = None,
    offline: OfflineOpt = False,
    face: FaceOpt = "best",
    no_paste_back: NoPasteOpt = False,
    save: SaveOpt = None,
    overwrite: OverwriteOpt = False,
    shard: ShardOpt = None,
    batch_size: BatchOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Edit faces: encode once, apply the edits to W+, re-synthesise, keep out-of-domain regions from the input,
    paste back.

    Example: facefix edit photo.jpg --age 3 --smile -1.5 -o out/. Several edits combine into one image; one of
    them may be a sweep (--age -4:4:9, or --text "a face with curly hair" --alpha -5:5:11), which writes
    OUT/KEY_<edit>.<ext> per value plus OUT/KEY.sweep.png (a strip) and OUT/KEY.sweep.gif. Other outputs are named
    as for `facefix invert`. `facefix directions list` explains every edit's values and useful ranges.
    """
    with _errors_to_exit(debug):
        options, extras = _photo_options(aligned, face, no_paste_back, mask, mask_from, resolution, seed,
                                         cycle_align, batch_size, save)
        from facefix.edits import build_edits

        try:
            variants = build_edits(age=age, smile=smile, pose=pose, directions=direction or [],
                                   ganspace=ganspace or [], styleclip=styleclip or [], text=text, neutral=neutral,
                                   alpha=alpha, beta=beta, clip=clip, fs3=fs3, offline=True if offline else None)
        except InputError as e:  # a bad --direction file: no photo was tried, so exit 2 (usage), not 1 (failed)
            raise UsageError(str(e)) from None
        if not any(v.edits for v in variants):
            raise UsageError("no edit given: add e.g. --age 3, --ganspace NAME, --direction FILE "
                             "(see `facefix directions list`)")
        if latent is not None and not latent.exists():
            raise UsageError(f"--latent {latent}: no such file or folder")
        model = _model_args(generator, encoder, samm, encoder_type, restyle_iters, device, offline, cycle_align)
        code = _run_photos("edit", inputs, model, options, extras, output, overwrite, shard, quiet, as_json, debug,
                           variants, latent)
    raise typer.Exit(code)


@app.command()
def align(
    inputs: Inputs,
    output: OutDir = Path("facefix-out"),
    face: Annotated[str, typer.Option(help="Which detected face(s): best (largest), all, or N (0-based, "
                                      "left to right).")] = "best",
    size: Annotated[int, typer.Option(help="Crop size in px (FFHQ: 1024).", min=64, max=4096)] = 1024,
    overwrite: OverwriteOpt = False,
    shard: ShardOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Detect faces (dlib, 68 landmarks) and write FFHQ-aligned crops with their transforms.

    Outputs per face: OUT/KEY_faceK.png (the crop) and OUT/KEY_faceK.json (quad, landmarks, and the 3x3
    crop_from_photo / photo_from_crop matrices, (x, y) pixel coordinates), K = 0, 1, ... left to right.
    """
    with _errors_to_exit(debug):
        from facefix.batch import AlignRun

        which_face = _parse_face(face)
        items = _inputs(inputs, shard, output)
        work = AlignRun(output, which_face, size, overwrite)
        code = _run_inputs("align", {"face": face, "size": size, "shard": shard}, items, output, work, quiet,
                           as_json, debug)
    raise typer.Exit(code)
