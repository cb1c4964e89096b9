"""``facefix directions``, ``train`` and ``weights``: the commands around the models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from facefix.cli import core
from facefix.cli.core import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    DebugOpt,
    DeviceOpt,
    EncoderOpt,
    GeneratorOpt,
    JsonOpt,
    OfflineOpt,
    QuietOpt,
    _errors_to_exit,
    app,
)
from facefix.errors import UsageError

if TYPE_CHECKING:
    from facefix.weights import ProgressCallback


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
    if not core._terminal():  # looked up on the module, so tests can replace it
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
