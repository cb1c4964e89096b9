"""The ``facefix`` command line (Typer): options, help text, progress and exit codes over the library.

Each command parses its options and hands them to the library: :mod:`facefix.photo` edits a photo,
:mod:`facefix.batch` runs it over the inputs (outputs, groups, prefetch, report). This is the one place where errors
become lines on stderr and exit codes: 0 every input succeeded, 1 some inputs failed
(each reported, the others still written), 2 usage error, 3 internal error (a bug in facefix, not a bad input; the
run still reports every input), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM, handled like Ctrl-C: files being
written are removed, finished outputs stay). A :class:`FacefixError` is one line; any other exception is "internal
error ... rerun with --debug", and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from facefix import __version__
from facefix.config import Choice, EncoderType, MaskFrom, MaskMode
from facefix.errors import FacefixError, InputError, UsageError

if TYPE_CHECKING:
    from facefix.batch import InputFile, InputReport
    from facefix.edits import Variant
    from facefix.photo import PhotoOptions
    from facefix.weights import ProgressCallback

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM
C = TypeVar("C", bound=Choice)

app = typer.Typer(
    name="facefix",
    help="Edit faces in real photos: FFHQ alignment, e4e/ReStyle inversion into StyleGAN2, paste-back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 all inputs ok; 1 some inputs failed (each reported, the others written); 2 usage error; "
           "3 internal error (a bug: rerun with --debug and report it); 130 interrupted; 143 terminated (SIGTERM).",
)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so the same cleanup runs (temp files of atomic writes)."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not interrupt the cleanup of the first
    raise _Terminated


def _err(msg: str) -> None:
    # one line whatever a file name holds: newlines and other control characters are shown escaped
    typer.echo("facefix: " + re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m[0])[1:-1], msg), err=True)


def _interrupted(e: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM: one line, and the exit code shells expect (128 + the signal's number)."""
    terminated = isinstance(e, _Terminated)
    _err("terminated" if terminated else "interrupted")
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


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
    except KeyboardInterrupt as e:
        raise typer.Exit(_interrupted(e)) from None
    except BrokenPipeError:  # `facefix weights list | head`: the reader left, nothing to report
        sys.stderr.close()
        raise typer.Exit(EXIT_OK) from None
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into a line
        if debug:
            traceback.print_exc()
        else:
            _err(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        raise typer.Exit(EXIT_INTERNAL) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"facefix {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """facefix: photo in, photo out."""


def _terminal() -> bool:
    """Whether stderr is a terminal: live progress bars there, plain lines (or nothing) otherwise."""
    return sys.stderr.isatty()


def _choice(choices: type[Choice], flag: str, help: str) -> Any:
    """An option taking one of ``choices``' values: --help and shell completion list them; :func:`_chosen` checks
    the value (a facefix usage error, like the other option checks)."""

    def complete(incomplete: str) -> list[str]:
        return [v for v in choices.values() if v.startswith(incomplete)]

    return typer.Option(flag, help=help, metavar="[" + "|".join(choices) + "]", autocompletion=complete)


def _chosen(choices: type[C], value: str, flag: str) -> C:
    try:
        return choices(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected one of {', '.join(choices)}") from None


def _parse_save(save: str | None) -> set[str]:
    from facefix.batch import EXTRA_OUTPUTS

    if not save:
        return set()
    items = {s.strip() for s in save.split(",") if s.strip()}
    bad = items - set(EXTRA_OUTPUTS)
    if bad:
        raise UsageError(f"--save {save!r}: unknown item(s) {', '.join(sorted(bad))}; choose from "
                         f"{','.join(EXTRA_OUTPUTS)}")
    return items


def _parse_face(face: str) -> str | int:
    if face in ("best", "all"):
        return face
    if face.isdigit():
        return int(face)
    raise UsageError(f"--face {face!r}: expected best, all or a face number N (0-based, left to right)")


def _inputs(items: list[str], shard: str | None, output: Path, labels: Sequence[str] = ()) -> list[InputFile]:
    """The inputs of this shard (``labels``: a sweep's, part of output names), with the output folder created and
    the temp files a killed earlier run left for their outputs removed."""
    from facefix.batch import make_output_dir, remove_stale_temps, select_inputs

    selected = select_inputs(items, shard, exclude=[output], labels=labels)
    try:
        make_output_dir(output)
    except UsageError as e:
        raise UsageError(f"-o {e}") from None
    remove_stale_temps(output, selected)
    return selected


def _run_inputs(command: str, options: dict[str, Any], inputs: list[InputFile], out_dir: Path,
                work: Callable[[InputFile, InputReport], None], quiet: bool, as_json: bool, debug: bool) -> int:
    """Run ``work`` per input (``facefix.batch.run_inputs``), show progress, write the report; the exit code.

    Progress: a rich bar on a terminal, one plain line per input otherwise (logs, CI), nothing with --quiet.
    """
    from facefix.batch import describe_error, run_inputs

    def describe(item: InputFile, err: Exception) -> str:
        if isinstance(err, MemoryError):
            return f"{item.path}: out of memory (try --batch-size 1 or --device cpu)"
        if debug and not isinstance(err, FacefixError):
            traceback.print_exc()
        return describe_error(item, err)

    with _input_progress(command, len(inputs), quiet) as done:
        run = run_inputs(command, options, inputs, work, done, describe)
    errors = [str(r.error) for r in run.failed]
    try:
        run.write(out_dir)
    except FacefixError as e:
        _err(str(e))
        errors = errors or [str(e)]
    if as_json:
        typer.echo(run.to_json())
    if not quiet:
        s = run.summary()
        typer.echo(f"facefix: {s['ok']} ok, {s['skipped']} skipped, {s['failed']} failed -> {out_dir}", err=True)
    if errors:
        _err(f"{len(errors)} of {len(run.inputs)} input(s) failed: " + "; ".join(errors[:5]) +
             (" ..." if len(errors) > 5 else ""))
        return EXIT_INTERNAL if run.internal_errors else EXIT_SOME_FAILED
    return EXIT_OK


@contextmanager
def _input_progress(command: str, total: int, quiet: bool) -> Iterator[Callable[[int, InputFile, InputReport], None]]:
    """A ``done(i, item, row)`` callback that shows each finished input; failures always get their line."""
    progress = None
    if not quiet and _terminal():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        task = progress.add_task(command, total=total)

    def done(i: int, item: InputFile, rep: InputReport) -> None:
        if rep.status == "failed":
            _err(rep.error or "failed")
        elif progress is not None:
            stages = " ".join(f"{k} {v:.1f}s" for k, v in rep.timings.items())
            progress.update(task, description=f"{command} {item.key} ({stages})")
        elif not quiet:
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in rep.timings.items())
            typer.echo(f"[{i}/{total}] {item.path}: {rep.status} ({rep.seconds:.1f} s"
                       f"{': ' + stages if stages else ''})", err=True)
        if progress is not None:
            progress.advance(task)

    if progress is None:
        yield done
        return
    with progress:
        yield done


Inputs = Annotated[list[str], typer.Argument(
    help="Image files, folders (searched recursively; images recognised by content), glob patterns, or - to "
         "read paths from stdin.", show_default=False)]
OutDir = Annotated[Path, typer.Option("-o", "--output", help="Output folder; created if missing. Outputs keep "
                                      "the inputs' folder structure below it.")]
# -- model options (shared by invert and edit; their names are a stable interface) ---------------------------------
GeneratorOpt = Annotated[Path | None, typer.Option(
    "--generator", help="StyleGAN2 checkpoint (rosinality .pt). Default: the encoder file's own decoder.")]
EncoderOpt = Annotated[Path | None, typer.Option(
    "--encoder", help="e4e or ReStyle-e4e checkpoint (.pt). Default: the manifest's file, downloaded once to the "
    "Hugging Face cache.")]
SammOpt = Annotated[Path | None, typer.Option(
    "--samm", help="SAMM weights: the official net_g_*.pth or a facefix training checkpoint. None are published; "
    "without them a training-free mask is used.")]
EncoderTypeOpt = Annotated[str, _choice(EncoderType, "--encoder-type", "e4e or restyle.")]
RestyleItersOpt = Annotated[int, typer.Option("--restyle-iters", help="ReStyle refinement steps.", min=1, max=20)]
MaskOpt = Annotated[str, _choice(
    MaskMode, "--mask", "How out-of-domain regions (background, hair, accessories) are found and kept from the input: "
    "samm (needs --samm), error (smoothed reconstruction error of the unedited inversion), face (everything "
    "outside a feathered landmark face hull), none (pure GAN output), auto (samm if weights are given, else "
    "face; error for --aligned inputs).")]
MaskFromOpt = Annotated[str, _choice(
    MaskFrom, "--mask-from", "edited: SAMM recomputes flow and mask on each edited pass (as the paper); original: "
    "reuse the unedited inversion's (one SAMM pass per photo, then only the generator per edit).")]
CycleOpt = Annotated[int | None, typer.Option("--cycle-align", help="SAMM alignment cycles, 1-3 (default: the "
                                                                     "checkpoint's, 2).", min=1, max=3)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps.")]
ResolutionOpt = Annotated[int, typer.Option(
    "--resolution", help="Output size of the aligned result in px: 1024, 512 or 256 (early exit of the generator; "
    "smaller is faster; SAMM's 256 px level needs >= 256).")]
SeedOpt = Annotated[int | None, typer.Option(
    "--seed", help="Random generator noise from this seed instead of the checkpoint's fixed noise "
    "(default: deterministic).")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network (as HF_HUB_OFFLINE=1).")]
AlignedOpt = Annotated[bool, typer.Option(
    "--aligned", help="Inputs are already FFHQ-aligned square crops (resized to 1024 if needed): no detection, "
    "no paste-back.")]
FaceOpt = Annotated[str, typer.Option("--face", help="Which detected face(s): best (largest), all, or N "
                                      "(0-based, left to right).")]
NoPasteOpt = Annotated[bool, typer.Option("--no-paste-back", help="Write the aligned result only, not the full "
                                          "photo.")]
SaveOpt = Annotated[str | None, typer.Option(
    "--save", help="Extra outputs, comma-separated: aligned (the input's FFHQ crop), mask (PNG, white = kept from "
    "the input), latent (the inversion's W+ .pt, float32 [1,18,512]), grid (input | inversion | mask | edits).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip inputs "
                                            "whose outputs all exist, so a re-run resumes).")]
ShardOpt = Annotated[str | None, typer.Option("--shard", help="I/N: process only the I-th (0-based) of N "
                                              "deterministic parts of the inputs (job arrays).")]
BatchOpt = Annotated[int | None, typer.Option(
    "--batch-size", help="Faces per model call: the faces of up to N consecutive photos are encoded and rendered "
    "together. Default: 4 on a GPU, 1 on the CPU (no faster per image there, and memory grows with N). Results "
    "depend on N in the last bits only; a resumed run with the same N writes the same bytes.", min=1,
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the run report as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Full tracebacks.")]


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
        model = {"generator": generator, "encoder": encoder, "samm": samm,
                 "encoder_type": _chosen(EncoderType, encoder_type, "--encoder-type"), "restyle_iters": restyle_iters,
                 "device": device, "offline": True if offline else None, "cycle_align": cycle_align}
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
        model = {"generator": generator, "encoder": encoder, "samm": samm,
                 "encoder_type": _chosen(EncoderType, encoder_type, "--encoder-type"), "restyle_iters": restyle_iters,
                 "device": device, "offline": True if offline else None, "cycle_align": cycle_align}
        code = _run_photos("edit", inputs, model, options, extras, output, overwrite, shard, quiet, as_json, debug,
                           variants, latent)
    raise typer.Exit(code)


directions_app = typer.Typer(help="Edit directions: what `facefix edit` can apply.", no_args_is_help=True)
app.add_typer(directions_app, name="directions")


@directions_app.command("list")
def directions_list(as_json: JsonOpt = False) -> None:
    """InterFaceGAN directions, GANSpace named edits, StyleCLIP latent mappers and StyleCLIP global text
    directions, with what their values mean and useful ranges."""
    with _errors_to_exit(False):
        from facefix.edits import list_directions

        rows = list_directions()
        if as_json:
            typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
            return
        for r in rows:
            mark = "" if r.available else f"  ({r.note})"
            typer.echo(f"{r.kind:<14} {r.name:<22} default {r.default:<6} range {r.useful_range:<13} rows "
                       f"{r.rows:<21} {r.value}{mark}")


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


train_app = typer.Typer(help="Train facefix's models (SAMM).", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("samm")
def train_samm_cmd(
    data: Annotated[Path, typer.Option("--data", help="Folder of FFHQ-aligned face images (searched recursively; "
                                       "make one from raw photos with `facefix align`).", show_default=False)],
    config: Annotated[Path | None, typer.Option("--config", help="TOML config; missing keys keep the official "
                                                "E4E recipe (see examples/train_samm.toml).")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder: checkpoints samm_step*.pt "
                                         "(usable as --samm), state for --resume, metrics, validation images.")
                      ] = Path("facefix-train"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o from its newest state.")] = False,
    generator: GeneratorOpt = None,
    encoder: EncoderOpt = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps (overrides "
                                                  "the config).", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per step and process (overrides "
                                                   "the config; the recipe uses 2).", min=1)] = None,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train SAMM (frozen e4e + StyleGAN2; trainable alignment/mask modules) on aligned faces.

    One GPU: facefix train samm --data ffhq/ -o runs/samm. Several GPUs or machines: torchrun --nproc-per-node 8
    -m facefix train samm --data ffhq/ -o runs/samm (rank 0 logs and saves). The result loads with
    facefix edit --samm runs/samm/samm_latest.pt.
    """
    with _errors_to_exit(debug):
        from facefix.train import load_config, train_samm

        cfg = load_config(config, {"max_steps": max_steps, "batch_size": batch_size})
        log = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
        final = train_samm(cfg, data, output, generator_path=generator, encoder_path=encoder, resume=resume,
                           device=device, offline=True if offline else None, log=log)
        if not quiet:
            typer.echo(f"facefix: SAMM weights: {final}", err=True)


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
    """Every file facefix can use: present, downloadable (`download`) or neither (`-`), size, licence, status and
    purpose (no network, no hashing). Status: full (sha256 pinned), commit (pinned by its source's commit: checked
    against the Hub's metadata or git blob id of that commit, then against the sha256 recorded at download),
    bundled, incomplete (no pin: pass a path), unavailable."""
    with _errors_to_exit(False):
        from facefix import weights

        rows = weights.list_entries()
        if as_json:
            typer.echo(json.dumps([{**asdict(r), "path": str(r.path) if r.path else None} for r in rows], indent=2))
            return
        for r in rows:
            mark = "present" if r.present else "download" if r.downloadable else "-"
            typer.echo(f"{r.name:<28} {mark:<8} {_human_size(r.size):>9}  {r.status:<11} {r.licence:<24} {r.purpose}")


@weights_app.command("download")
def weights_download(names: Annotated[list[str] | None, typer.Argument(
                         help="Entries (default: every downloadable one that inference uses).")] = None,
                     debug: Annotated[bool, typer.Option("--debug", help="Full tracebacks.")] = False) -> None:
    """Download into the Hugging Face cache (HF_HOME) and verify sha256. Without names: the files invert and edit
    use (generator, encoder, edit directions, landmarks); the training-only ones (purpose "training" in `facefix
    weights list`: ir_se50, vgg19) only when named."""
    with _errors_to_exit(debug):
        from facefix import weights

        with _download_progress() as progress:
            paths = weights.download(names or None, progress=progress)
        for name, path in paths.items():
            typer.echo(f"{name}: {path}")


@contextmanager
def _download_progress() -> Iterator[ProgressCallback | None]:
    """A progress callback for URL downloads: a rich bar per file on a terminal, None (silent) otherwise. Hub
    downloads show huggingface_hub's own bar."""
    if not _terminal():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True))
    tasks: dict[str, Any] = {}

    def update(name: str, done: int, total: int | None) -> None:
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total)
        bars.update(tasks[name], completed=done, total=total)

    with bars:
        yield update


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


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except KeyboardInterrupt as e:
        sys.exit(_interrupted(e))


if __name__ == "__main__":
    main()
