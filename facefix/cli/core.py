"""The pieces every ``facefix`` command shares: the Typer app, the error -> exit code mapping, progress display,
the run loop's reporting, and the option declarations whose names are a stable interface."""

from __future__ import annotations

import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from facefix import __version__
from facefix.config import Choice, EncoderType, MaskFrom, MaskMode
from facefix.errors import FacefixError, UsageError

if TYPE_CHECKING:
    from facefix.batch import InputFile, InputReport

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


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except KeyboardInterrupt as e:
        sys.exit(_interrupted(e))
