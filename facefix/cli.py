"""The ``facefix`` command line (Typer): parse options, build the pipeline once, run it per input, report.

This is the one place where errors become lines on stderr and exit codes (``shared/design/cli.md``):
0 every input succeeded, 1 some inputs failed (each reported, the others still written), 2 usage error,
3 internal error (a bug in facefix, not a bad input; the run still reports every input), 130 interrupted (Ctrl-C),
143 terminated (SIGTERM, handled like Ctrl-C: files being written are removed, finished outputs stay).
A :class:`FacefixError` is one line; any other exception is "internal error ... rerun with --debug", and
``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from facefix import __version__
from facefix.batch import InputFile
from facefix.errors import FacefixError, InputError, UsageError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM
SAVE_CHOICES = ("aligned", "mask", "latent", "grid")

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


@dataclass
class InputReport:
    """One row of ``facefix-report.json``."""

    input: str
    status: str = "ok"  # ok | skipped | failed
    outputs: list[str] = field(default_factory=list)
    faces: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Accumulate the wall time of a stage (load, detect, encode, render, write) in ``timings``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)


def _parse_save(save: str | None) -> set[str]:
    if not save:
        return set()
    items = {s.strip() for s in save.split(",") if s.strip()}
    bad = items - set(SAVE_CHOICES)
    if bad:
        raise UsageError(f"--save {save!r}: unknown item(s) {', '.join(sorted(bad))}; choose from "
                         f"{','.join(SAVE_CHOICES)}")
    return items


def _inputs(items: list[str], shard: str | None, output: Path, labels: list[str] | None = None) -> list[InputFile]:
    from facefix.batch import collect_inputs, parse_shard, select_shard

    selected = select_shard(collect_inputs(items, exclude=[output], labels=labels or []), parse_shard(shard))
    if not selected:
        raise UsageError("no input images found" + (" in this shard" if shard else ""))
    return selected


def _run_inputs(inputs: list[InputFile], out_dir: Path, work: Callable[[InputFile, InputReport], None], quiet: bool,
                as_json: bool, command: str, options: dict[str, Any]) -> int:
    """Run ``work`` per input; one bad input never stops the others. Writes facefix-report.json.

    Progress: a rich bar on a terminal, one plain line per input otherwise (logs, CI), nothing with --quiet.
    """
    from facefix.batch import input_error
    from facefix.image_io import atomic_write_bytes

    reports: list[InputReport] = []
    bugs = 0
    live = not quiet and sys.stderr.isatty()
    progress = None
    if live:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        progress.start()
        task = progress.add_task(command, total=len(inputs))
    try:
        for i, item in enumerate(inputs, 1):
            rep = InputReport(input=str(item.path))
            t0 = time.perf_counter()
            try:
                work(item, rep)
            except FacefixError as e:
                rep.status, rep.error = "failed", input_error(item.path, e)
            except MemoryError:
                rep.status, rep.error = "failed", f"{item.path}: out of memory (try --batch-size 1 or --device cpu)"
            except Exception as e:  # noqa: BLE001 - recorded per input, the run goes on
                rep.status, rep.error = "failed", f"{item.path}: internal error: {type(e).__name__}: {e}"
                bugs += 1
                if options.get("debug"):
                    traceback.print_exc()
            rep.seconds = round(time.perf_counter() - t0, 3)
            reports.append(rep)
            if rep.status == "failed":
                _err(rep.error or "failed")
            elif progress is not None:
                stages = " ".join(f"{k} {v:.1f}s" for k, v in rep.timings.items())
                progress.update(task, description=f"{command} {item.key} ({stages})")
            elif not quiet:
                stages = ", ".join(f"{k} {v:.1f} s" for k, v in rep.timings.items())
                typer.echo(f"[{i}/{len(inputs)}] {item.path}: {rep.status} ({rep.seconds:.1f} s"
                           f"{': ' + stages if stages else ''})", err=True)
            if progress is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    failed = [r for r in reports if r.status == "failed"]
    report = {"facefix": __version__, "command": command, "options": options,
              "summary": {"inputs": len(reports), "ok": sum(r.status == "ok" for r in reports),
                          "skipped": sum(r.status == "skipped" for r in reports), "failed": len(failed)},
              "inputs": [asdict(r) for r in reports]}
    text = json.dumps(report, indent=2)
    try:
        atomic_write_bytes(out_dir / "facefix-report.json", text.encode())
    except FacefixError as e:
        _err(str(e))
        failed = failed or [InputReport(input="facefix-report.json", status="failed", error=str(e))]
    if as_json:
        typer.echo(text)
    if not quiet:
        s = report["summary"]
        typer.echo(f"facefix: {s['ok']} ok, {s['skipped']} skipped, {s['failed']} failed -> {out_dir}", err=True)
    if failed:
        _err(f"{len(failed)} of {len(reports)} input(s) failed: " +
             "; ".join(str(r.error) for r in failed[:5]) + (" ..." if len(failed) > 5 else ""))
        return EXIT_INTERNAL if bugs else EXIT_SOME_FAILED
    return EXIT_OK


def _make_output_dir(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"-o {output}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(output, os.W_OK):
        raise UsageError(f"-o {output}: the output folder is not writable")


Inputs = Annotated[list[str], typer.Argument(
    help="Image files, folders (searched recursively; images recognised by content), glob patterns, or - to "
         "read paths from stdin.", show_default=False)]
OutDir = Annotated[Path, typer.Option("-o", "--output", help="Output folder; created if missing. Outputs keep "
                                      "the inputs' folder structure below it.")]
# -- model options (shared by invert and edit; names fixed by shared/design/cli.md) --------------------------------
GeneratorOpt = Annotated[Path | None, typer.Option(
    "--generator", help="StyleGAN2 checkpoint (rosinality .pt). Default: the encoder file's own decoder.")]
EncoderOpt = Annotated[Path | None, typer.Option(
    "--encoder", help="e4e or ReStyle-e4e checkpoint (.pt). Default: the manifest's file, downloaded once to the "
    "Hugging Face cache.")]
SammOpt = Annotated[Path | None, typer.Option(
    "--samm", help="SAMM weights: the official net_g_*.pth or a facefix training checkpoint. None are published; "
    "without them a training-free mask is used.")]
EncoderTypeOpt = Annotated[str, typer.Option("--encoder-type", help="e4e or restyle.")]
RestyleItersOpt = Annotated[int, typer.Option("--restyle-iters", help="ReStyle refinement steps.", min=1, max=20)]
MaskOpt = Annotated[str, typer.Option(
    "--mask", help="How out-of-domain regions (background, hair, accessories) are found and kept from the input: "
    "samm (needs --samm), error (smoothed reconstruction error of the unedited inversion), face (everything "
    "outside a feathered landmark face hull), none (pure GAN output), auto (samm if weights are given, else "
    "face; error for --aligned inputs).")]
MaskFromOpt = Annotated[str, typer.Option(
    "--mask-from", help="edited: SAMM recomputes flow and mask on each edited pass (as the paper); original: "
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


@dataclass
class _RunSpec:
    """Everything invert and edit share, after parsing."""

    output: Path
    aligned: bool
    which_face: str | int
    paste: bool
    extras: set[str]
    mask: str
    mask_from: str
    out_res: int
    seed: int | None
    overwrite: bool
    batch_size: int | None  # None: 4 on a GPU, 1 on the CPU
    cycle_align: int | None
    latent: Path | None = None
    variants: list[Any] = field(default_factory=list)  # facefix.edits.Variant; empty for invert
    sweep: bool = False


def _load_pipeline(generator: Path | None, encoder: Path | None, samm: Path | None, encoder_type: str,
                   restyle_iters: int, device: str, offline: bool, cycle_align: int | None):
    from facefix.pipeline import FacefixPipeline
    from facefix.runtime import tune_malloc

    tune_malloc()
    return FacefixPipeline.from_pretrained(generator=generator, encoder=encoder, encoder_type=encoder_type,
                                           restyle_iters=restyle_iters, device=device,
                                           offline=True if offline else None, samm=samm, cycle_align=cycle_align)


def _check_common(mask: str, mask_from: str, resolution: int, save: str | None) -> set[str]:
    from facefix.pipeline import MASK_FROM, MASK_MODES

    if mask not in MASK_MODES:
        raise UsageError(f"--mask {mask!r}: expected one of {', '.join(MASK_MODES)}")
    if mask_from not in MASK_FROM:
        raise UsageError(f"--mask-from {mask_from!r}: expected edited or original")
    if resolution not in (256, 512, 1024):
        raise UsageError(f"--resolution {resolution}: expected 1024, 512 or 256")
    return _parse_save(save)


def _resolve_mask_mode(pipe, spec: _RunSpec, quiet: bool) -> str:
    """``auto`` -> samm / face / error, with a one-line notice when no SAMM weights are loaded."""
    if spec.mask != "auto":
        pipe.resolve_mask(spec.mask, True)  # checks samm availability up front (usage error, exit 2)
        return spec.mask
    if pipe.samm is not None:
        return "samm"
    mode = "error" if spec.aligned else "face"
    if not quiet:
        _err(f"no SAMM weights (none are published; pass --samm FILE or train them with `facefix train samm`): "
             f"using the training-free '{mode}' mask (choose with --mask error|face|none)")
    return mode


def _mask_np(out: Any, k: int) -> Any:
    """Face k's mask of a PipelineOutput as float32 [R,R] (1 = input pixel), or None without a mask."""
    return None if out.mask is None else out.mask[k, 0].float().cpu().numpy()


def _grid(tiles: list[Any], size: int = 256) -> Any:
    """uint8 [H,W,3] or [H,W] tiles -> one row, each resized to size x size."""
    import numpy as np
    from PIL import Image

    row = []
    for t in tiles:
        im = Image.fromarray(t).convert("RGB").resize((size, size), Image.BILINEAR)
        row.append(np.asarray(im))
    return np.concatenate(row, axis=1)


def _save_gif(path: Path, frames: list[Any], ms: int = 250) -> None:
    """Animated GIF (ping-pong so the sweep loops smoothly), written atomically."""
    from PIL import Image

    from facefix.image_io import atomic_write

    ims = [Image.fromarray(f) for f in frames]
    seq = ims + ims[-2:0:-1]
    atomic_write(path, lambda f: seq[0].save(f, format="GIF", save_all=True, append_images=seq[1:], duration=ms,
                                             loop=0), what="animation")


@dataclass
class _Loaded:
    """An input after the CPU-side stages (decode, detect, align), ready for the models."""

    photo: Any
    alignments: list[Any]
    crops: list[Any]
    landmarks: Any  # [n,68,2] crop px, or None when the mask does not need them
    timings: dict[str, float]


@dataclass
class _Job:
    """One input of a batch group: its CPU-side data, planned outputs and, once its group ran, its results.

    Per face k and variant j: ``results[j][k]`` uint8 [R,R,3]; ``masks[j][k]`` float [R,R] (1 = input pixel) or
    None; ``inv_imgs[k]``/``ref_masks[k]`` the unedited rendering (what --save mask and the grid show);
    ``w_saved[k]`` the inversion [1,L,D]."""

    item: InputFile
    got: _Loaded
    tags: list[str]
    photo_suffix: str
    planned: list[Path]
    complete: bool
    latents: list[Any]
    timings: dict[str, float] = field(default_factory=dict)
    results: list[list[Any]] = field(default_factory=list)
    masks: list[list[Any]] = field(default_factory=list)
    inv_imgs: list[Any] = field(default_factory=list)
    ref_masks: list[Any] = field(default_factory=list)
    w_saved: list[Any] = field(default_factory=list)
    error: Exception | None = None

    @property
    def n(self) -> int:
        return len(self.got.crops)


def _process(pipe, spec: _RunSpec, mask_mode: str, items: list[InputFile]) -> Callable[[InputFile, InputReport],
                                                                                       None]:
    """The per-input job of invert and edit: load, align, encode once, render the inversion and every edit
    variant, paste back, write. Outputs are planned first, so existing ones are skipped and inputs never
    overwritten.

    Batching: inputs are taken in consecutive groups of ``--batch-size`` (by position in the input list), and
    the faces of a group are encoded and rendered together, up to ``batch_size`` faces per model call. Batched
    float arithmetic differs from batch 1 in the last bits, so groups depend only on the input list: a group with
    any work left is computed whole (its finished inputs are recomputed, not rewritten), and a resumed run writes
    the same bytes as an uninterrupted one.

    Decoding, detection and alignment of the next inputs run in a background thread while the models work on the
    current group (PIL, dlib's C++ and torch release the GIL); only that thread uses the dlib detector."""
    import numpy as np
    import torch

    from facefix.align import FaceDetector, align_face, detect_faces, paste_back
    from facefix.batch import safe_label
    from facefix.edits import apply_edits
    from facefix.image_io import load_image, save_image, suffix_for, to_uint8
    from facefix.latents import load_latent, save_latent
    from facefix.pipeline import Inversion, PipelineOutput

    out = spec.output
    editing = bool(spec.variants)
    variants = spec.variants or [None]
    labels = [safe_label(v.label) for v in variants] if spec.sweep else [""]
    extra_files = {"aligned": ".aligned.png", "mask": ".mask.png", "latent": ".latent.pt", "grid": ".grid.png"}
    size = spec.batch_size or 1
    detector_box: list[FaceDetector] = []
    position = {item: i for i, item in enumerate(items)}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facefix-load")
    pending: dict[InputFile, Future] = {}
    group_jobs: dict[int, dict[InputFile, _Job | Exception]] = {}

    def detector() -> FaceDetector:
        if not detector_box:
            detector_box.append(FaceDetector())
        return detector_box[0]

    def load(item: InputFile) -> _Loaded:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        photo = load_image(item.path)
        t1 = time.perf_counter()
        timings["load"] = round(t1 - t0, 3)
        landmarks = None
        if spec.aligned:
            alignments, crops = [None], [_as_aligned_crop(photo.rgb, item.path)]
            if mask_mode == "face":
                landmarks = np.stack([detect_faces(c, detector(), "best", f"{item.path} (aligned crop)")[0]
                                      .landmarks for c in crops])
        else:
            found = detect_faces(photo.rgb, detector(), spec.which_face, str(item.path))
            alignments = [align_face(photo.rgb, f) for f in found]
            crops = [a.crop for a in alignments]
            if mask_mode == "face":
                landmarks = np.stack([a.crop_landmarks() for a in alignments])
        timings["detect"] = round(time.perf_counter() - t1, 3)
        return _Loaded(photo, alignments, crops, landmarks, timings)

    def loaded(item: InputFile) -> _Loaded:
        """This input's CPU stages (already running if prefetched); starts those of the next ``size`` inputs."""
        fut = pending.pop(item, None) or pool.submit(load, item)
        at = position[item]
        for nxt in items[at + 1: at + 1 + size]:
            if nxt not in pending:
                pending[nxt] = pool.submit(load, nxt)
        return fut.result()

    def face_path(job: _Job, k: int, suffix: str) -> Path:
        return Path(f"{out / job.item.key}{job.tags[k]}{suffix}")

    def main_path(job: _Job, k: int, j: int) -> Path:
        lab = f"_{labels[j]}" if spec.sweep else ""
        return Path(f"{out / job.item.key}{lab}{job.photo_suffix}") if spec.paste else face_path(job, k, f"{lab}.png")

    def plan(item: InputFile) -> _Job:
        """Load an input, name its outputs, read its saved codes (--latent)."""
        got = loaded(item)
        n = len(got.crops)
        tags = [f"_face{spec.which_face if isinstance(spec.which_face, int) else k}" if n > 1 or
                isinstance(spec.which_face, int) else "" for k in range(n)]
        job = _Job(item, got, tags, suffix_for(got.photo), [], False, [], dict(got.timings))
        planned = sorted({main_path(job, k, j) for k in range(n) for j in range(len(variants))}, key=str)
        for key, suffix in extra_files.items():
            if key in spec.extras and not (key == "aligned" and spec.aligned):
                planned += [face_path(job, k, suffix) for k in range(n)]
        if spec.sweep:
            planned += [face_path(job, k, suffix) for suffix in (".sweep.png", ".sweep.gif") for k in range(n)]
        if any(p.resolve() == item.path.resolve() for p in planned):
            raise UsageError(f"{item.path}: an output would overwrite the input; choose another -o")
        job.planned, job.complete = planned, all(p.exists() for p in planned)
        if spec.latent is not None:
            src = spec.latent if spec.latent.is_file() else None
            for k in range(n):
                f = src or spec.latent / f"{item.key}{tags[k]}{extra_files['latent']}"
                w = load_latent(f, pipe.generator.n_latent, pipe.generator.style_dim)
                if w.shape[0] != 1:
                    raise InputError(f"{f}: holds {w.shape[0]} codes, expected 1 per face")
                job.latents.append(w)
        job.results, job.masks = [[None] * n for _ in variants], [[None] * n for _ in variants]
        job.inv_imgs, job.ref_masks, job.w_saved = [None] * n, [None] * n, [None] * n
        return job

    def compute(chunk: list[tuple[_Job, int]]) -> None:
        """Encode and render faces (job, k) as one batch; fills the jobs' results and encode/render timings."""
        x, x256 = pipe.prepare([job.got.crops[k] for job, k in chunk])
        lms = None if mask_mode != "face" else np.stack([job.got.landmarks[k] for job, k in chunk])
        t0 = time.perf_counter()
        if spec.latent is not None:
            feats = pipe.encode(x256, return_features=True).features if mask_mode == "samm" else {}
            inv = Inversion(torch.cat([job.latents[k] for job, k in chunk]).to(pipe.device), feats)
        else:
            inv = pipe.encode(x256)
        t1 = time.perf_counter()
        rng = torch.Generator().manual_seed(spec.seed) if spec.seed is not None else None
        need_ref = not editing or spec.mask_from == "original" or mask_mode == "error" or \
            "grid" in spec.extras or "mask" in spec.extras
        ref = pipe.render(x, inv, mask=mask_mode, landmarks=lms, generator=rng, out_res=spec.out_res,
                          cycle_align=spec.cycle_align) if need_ref else None
        reuse = ref if (spec.mask_from == "original" or mask_mode == "error") else None
        outs: list[PipelineOutput] = []
        for v in variants:
            if v is None:
                assert ref is not None
                outs.append(ref)
                continue
            if rng is not None:
                rng.manual_seed(spec.seed)  # the same noise for every variant: only the edit differs
            outs.append(pipe.render(x, inv, w_plus=apply_edits(inv.w_plus, v.edits), mask=mask_mode,
                                    reference=reuse, landmarks=lms, generator=rng, out_res=spec.out_res,
                                    cycle_align=spec.cycle_align, style_edits=v.edits))
        t2 = time.perf_counter()
        for i, (job, k) in enumerate(chunk):
            for stage, dt in (("encode", t1 - t0), ("render", t2 - t1)):  # a batch's time, shared per face
                job.timings[stage] = round(job.timings.get(stage, 0.0) + dt / len(chunk), 3)
            if ref is not None:
                job.inv_imgs[k], job.ref_masks[k] = to_uint8(ref.image[i].cpu()), _mask_np(ref, i)
            for j, o in enumerate(outs):
                job.results[j][k], job.masks[j][k] = to_uint8(o.image[i].cpu()), _mask_np(o, i)
            job.w_saved[k] = inv.w_plus[i:i + 1].cpu()

    def run_group(g: int) -> dict[InputFile, _Job | Exception]:
        """Plan every input of group g and, unless all are finished, compute all their faces in batches.
        Errors stay with their input (a failed model batch fails the inputs it held), raised at its turn."""
        jobs: dict[InputFile, _Job | Exception] = {}
        for item in items[g * size:(g + 1) * size]:
            try:
                jobs[item] = plan(item)
            except Exception as e:  # noqa: BLE001 - reported when this input's turn comes
                jobs[item] = e
        live = [j for j in jobs.values() if isinstance(j, _Job)]
        if spec.overwrite or not all(j.complete for j in live):
            faces = [(j, k) for j in live for k in range(j.n)]
            for lo in range(0, len(faces), size):
                try:
                    compute(faces[lo:lo + size])
                except Exception as e:  # noqa: BLE001
                    for j, _ in faces[lo:lo + size]:
                        j.error = e
        return jobs

    def work(item: InputFile, rep: InputReport) -> None:
        g = position[item] // size
        if g not in group_jobs:
            group_jobs.clear()  # the previous group is written: free its images
            group_jobs[g] = run_group(g)
        job = group_jobs[g][item]
        if isinstance(job, Exception):
            raise job
        rep.timings.update(job.timings)
        rep.faces, rep.outputs = job.n, [str(p) for p in job.planned]
        if not spec.overwrite and job.complete:
            rep.status = "skipped"
            return
        if job.error is not None:
            raise job.error
        photo, crops, n = job.got.photo, job.got.crops, job.n
        (out / item.key).parent.mkdir(parents=True, exist_ok=True)
        with rep.stage("write"):
            for j in range(len(variants)):
                if spec.paste:
                    # paste only where the face came from the generator: the photo keeps its own pixels elsewhere
                    keep = [None if m is None else 1.0 - m for m in job.masks[j]]
                    save_image(main_path(job, 0, j), paste_back(photo.rgb, job.results[j], job.got.alignments, keep),
                               like=photo)
                else:
                    for k in range(n):
                        save_image(main_path(job, k, j), job.results[j][k])
            for k in range(n):
                if "aligned" in spec.extras and not spec.aligned:
                    save_image(face_path(job, k, ".aligned.png"), crops[k])
                if "latent" in spec.extras:
                    save_latent(face_path(job, k, ".latent.pt"), job.w_saved[k])
                m = job.ref_masks[k] if job.inv_imgs[k] is not None else job.masks[0][k]
                m_img = np.zeros(crops[k].shape[:2], np.uint8) if m is None else \
                    np.clip(np.round(m * 255), 0, 255).astype(np.uint8)
                if "mask" in spec.extras:
                    save_image(face_path(job, k, ".mask.png"), np.repeat(m_img[..., None], 3, axis=2))
                if "grid" in spec.extras:
                    tiles = [crops[k], job.inv_imgs[k], m_img] + ([job.results[j][k] for j in range(len(variants))]
                                                                 if editing else [])
                    save_image(face_path(job, k, ".grid.png"), _grid(tiles))
                if spec.sweep:
                    frames = [_grid([job.results[j][k]]) for j in range(len(variants))]
                    save_image(face_path(job, k, ".sweep.png"), np.concatenate(frames, axis=1))
                    _save_gif(face_path(job, k, ".sweep.gif"), frames)

    return work


def _run(command: str, inputs: list[str], spec: _RunSpec, model: dict[str, Any], shard: str | None, quiet: bool,
         as_json: bool, debug: bool) -> int:
    from facefix.batch import remove_stale_temps, safe_label

    items = _inputs(inputs, shard, spec.output, [safe_label(v.label) for v in spec.variants] if spec.sweep else [])
    _make_output_dir(spec.output)
    remove_stale_temps(spec.output, items)
    pipe = _load_pipeline(**model)
    if spec.variants:  # text edits: fs3 must fit this generator; a usage error before any photo is tried
        try:
            pipe.style_offsets(spec.variants[0].edits)
        except InputError as e:
            raise UsageError(str(e)) from None
    spec.out_res = min(spec.out_res, pipe.generator.size)
    spec.batch_size = spec.batch_size or (1 if pipe.device.type == "cpu" else 4)
    mask_mode = _resolve_mask_mode(pipe, spec, quiet)
    if spec.latent is not None and mask_mode == "samm" and pipe.encoder_type != "e4e":
        raise UsageError("--latent with SAMM needs --encoder-type e4e (ReStyle's SAMM features depend on its "
                         "iterations, which a saved code does not record)")
    work = _process(pipe, spec, mask_mode, items)
    options = {"aligned": spec.aligned, "face": str(spec.which_face), "encoder_type": pipe.encoder_type,
               "mask": mask_mode, "mask_from": spec.mask_from, "samm": str(model["samm"]) if model["samm"] else None,
               "device": str(pipe.device), "resolution": spec.out_res, "seed": spec.seed, "shard": shard,
               "edits": [v.label for v in spec.variants], "debug": debug}
    return _run_inputs(items, spec.output, work, quiet, as_json, command, options)


@app.command()
def invert(
    inputs: Inputs,
    output: OutDir = Path("facefix-out"),
    aligned: AlignedOpt = False,
    generator: GeneratorOpt = None,
    encoder: EncoderOpt = None,
    samm: SammOpt = None,
    encoder_type: EncoderTypeOpt = "e4e",
    restyle_iters: RestyleItersOpt = 5,
    mask: MaskOpt = "auto",
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
        extras = _check_common(mask, "edited", resolution, save)
        spec = _RunSpec(output, aligned, _parse_face(face), not (aligned or no_paste_back), extras, mask, "edited",
                        resolution, seed, overwrite, batch_size, cycle_align)
        model = {"generator": generator, "encoder": encoder, "samm": samm, "encoder_type": encoder_type,
                 "restyle_iters": restyle_iters, "device": device, "offline": offline, "cycle_align": cycle_align}
        code = _run("invert", inputs, spec, model, shard, quiet, as_json, debug)
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
    encoder_type: EncoderTypeOpt = "e4e",
    restyle_iters: RestyleItersOpt = 5,
    mask: MaskOpt = "auto",
    mask_from: MaskFromOpt = "edited",
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
        extras = _check_common(mask, mask_from, resolution, save)
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
        spec = _RunSpec(output, aligned, _parse_face(face), not (aligned or no_paste_back), extras, mask, mask_from,
                        resolution, seed, overwrite, batch_size, cycle_align, latent, variants, len(variants) > 1)
        model = {"generator": generator, "encoder": encoder, "samm": samm, "encoder_type": encoder_type,
                 "restyle_iters": restyle_iters, "device": device, "offline": offline, "cycle_align": cycle_align}
        code = _run("edit", inputs, spec, model, shard, quiet, as_json, debug)
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
        which_face = _parse_face(face)
        items = _inputs(inputs, shard, output)
        _make_output_dir(output)
        from facefix.batch import remove_stale_temps

        remove_stale_temps(output, items)
        from facefix.align import FaceDetector, align_face, detect_faces
        from facefix.image_io import atomic_write_bytes, load_image, save_image

        detector = FaceDetector()

        def work(item: InputFile, rep: InputReport) -> None:
            with rep.stage("load"):
                rgb = load_image(item.path).rgb
            with rep.stage("detect"):
                found = detect_faces(rgb, detector, which_face, str(item.path))
            rep.faces = len(found)
            for k, f in enumerate(found):
                k_out = which_face if isinstance(which_face, int) else k
                crop_path = output / f"{item.key}_face{k_out}.png"
                json_path = crop_path.with_suffix(".json")
                rep.outputs += [str(crop_path), str(json_path)]
                if not overwrite and crop_path.exists() and json_path.exists():
                    continue
                with rep.stage("align"):
                    a = align_face(rgb, f, output_size=size)
                crop_path.parent.mkdir(parents=True, exist_ok=True)
                with rep.stage("write"):
                    save_image(crop_path, a.crop, compress_level=1)  # zlib 4 was most of align's time
                    atomic_write_bytes(json_path, json.dumps({"input": str(item.path), **a.to_dict()},
                                                             indent=1).encode())

        code = _run_inputs(items, output, work, quiet, as_json, "align", {"face": face, "size": size,
                                                                           "shard": shard})
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
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except KeyboardInterrupt as e:
        sys.exit(_interrupted(e))


if __name__ == "__main__":
    main()
