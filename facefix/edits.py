"""Latent edits on W+ codes: InterFaceGAN directions, GANSpace named edits, StyleCLIP latent mappers and
StyleCLIP global (text) directions.

Pure functions on W+ [N,L,D] (N faces, L = 18 rows at 1024 px, D = 512): nothing here calls the generator, prints
or downloads (StyleCLIP mappers, fs3 and CLIP are located through :func:`facefix.weights.resolve`, which may fetch a
pinned file). The CLI parses each flag with a ``parse_*`` function, calls :func:`build_edits` once, and renders every
returned :class:`Variant` from one encoding: ``G(apply_edits(w_plus, variant.edits))``, with the variant's text edits
as StyleSpace offsets (``pipe.render(..., style_edits=variant.edits)``).

Conventions (those of e4e, GANSpace and StyleCLIP, which published these files):

- **InterFaceGAN / any direction file** (e4e convention): ``w[:, rows] += factor * direction``. The shipped
  directions are unit vectors (pose: 18 identical unit rows); no renormalisation, all 18 rows unless a row range
  ``A-B`` (inclusive) is given. PTI and SFE add ``factor / 2 * direction``, so their factors are twice ours.
- **GANSpace** (e4e ``editings/ganspace.py``): the value is an *absolute target coordinate* along PCA component
  ``k``, in units of that component's std, measured on W+ row 0 of each face::

      coord = <w[0] - mean, comp[k]> / std[k]
      w[start:end] += (value - coord) * comp[k] * std[k]          # end exclusive

  so ``value = 0`` moves the face to the PCA mean along ``k`` (not a no-op). The relative form ``NAME+=D`` adds
  ``D * comp[k] * std[k]`` (= the absolute form with ``value = coord + D``); ``D = 0`` is an exact no-op.
- **StyleCLIP latent mappers** (StyleCLIP ``mapper/scripts/inference.py``): ``w + strength * mapper(w)``, default
  strength 0.1; a mapper without its fine group leaves rows 8-17 unchanged.
- **StyleCLIP global directions** (``--text``, :mod:`facefix.styleclip`): W+ is left alone; the generator's styles
  get ``s(w) + alpha * direction * s_std`` (alpha in style std units, default 3; relevance threshold beta, default
  0.15), so a sweep ``--alpha -5:5:11`` works as the other sweeps.

Edits apply in order; the order :func:`build_edits` uses is: ``--age``, ``--smile``, ``--pose``, ``--direction``\\ s,
``--ganspace``, ``--styleclip``, ``--text``. Directions commute; a GANSpace target is measured after them, so it still
holds on the final code; mappers are non-linear and go last among W+ edits; a text edit acts on the styles of the
final W+ code.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from facefix import styleclip as text_dirs
from facefix import weights
from facefix.errors import InputError, UsageError, WeightsError
from facefix.models.stylegan2 import EqualLinear, PixelNorm

__all__ = [
    "DATA_DIR",
    "BUILTIN_DIRECTIONS",
    "STYLECLIP_MAPPERS",
    "STYLECLIP_DEFAULT_STRENGTH",
    "Edit",
    "DirectionEdit",
    "GanspaceEdit",
    "MapperEdit",
    "TextEdit",
    "GanspaceNamedEdit",
    "GanspacePCA",
    "LevelsMapper",
    "EditSpec",
    "Variant",
    "DirectionInfo",
    "load_direction",
    "load_builtin_direction",
    "load_ganspace_pca",
    "ganspace_named_edits",
    "load_styleclip_mapper",
    "resolve_styleclip_mapper",
    "apply_edits",
    "parse_value",
    "parse_direction_spec",
    "parse_ganspace_spec",
    "parse_styleclip_spec",
    "parse_text_spec",
    "style_edits",
    "build_edits",
    "list_directions",
]

#: Package data: the e4e direction files, the GANSpace PCA and named-edit table (see ``data/README.md``).
DATA_DIR = Path(__file__).with_name("data")
BUILTIN_DIRECTIONS = {"age": "age.pt", "smile": "smile.pt", "pose": "pose.pt"}
GANSPACE_PCA_FILE = "ffhq_pca.pt"
GANSPACE_EDITS_FILE = "ganspace_named_edits.tsv"

N_LATENT = 18
STYLE_DIM = 512
MAX_SWEEP_STEPS = 240  # 10 s of animation at 24 fps; more is almost certainly a typo
# The largest edit values accepted, 10-20x beyond any useful edit: only typos (1e30, a lost decimal point) are
# refused, which would otherwise render noise or NaN and still be written as a result.
MAX_DIRECTION_STEP = 100.0  # |factor| x direction length, i.e. how far W+ moves; useful about 5 (unit directions)
MAX_GANSPACE_VALUE = 400.0  # std units; useful about -40..40
MAX_STYLECLIP_STRENGTH = 10.0  # useful 0..0.15

#: The 14 published StyleCLIP mappers -> (coarse, medium, fine) groups present. Fine is absent for 7 of them
#: (StyleRes ``styleclip_mapping_configs.csv``, SFE ``latent_editor.py``); the loader reads the groups from the file.
STYLECLIP_MAPPERS: dict[str, tuple[bool, bool, bool]] = {
    name: (True, True, name not in {"afro", "angry", "bobcut", "bowlcut", "curly_hair", "mohawk", "surprised"})
    for name in ("afro", "angry", "beyonce", "bobcut", "bowlcut", "curly_hair", "depp", "hilary_clinton", "mohawk",
                 "purple_hair", "surprised", "taylor_swift", "trump", "zuckerberg")
}
STYLECLIP_DEFAULT_STRENGTH = 0.1
#: W+ rows of each LevelsMapper group (end exclusive; ``None`` = to the last row).
MAPPER_GROUPS = (("course", 0, 4), ("medium", 4, 8), ("fine", 8, None))

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUM_RE = re.compile(_NUM)
_SWEEP_RE = re.compile(rf"({_NUM}):({_NUM}):(\d+)")
_DIRECTION_SPEC_RE = re.compile(r"(?P<path>.+?\.(?:pt|pth|npy))(?::(?P<value>[^@]*))?(?:@(?P<rows>.*))?",
                                re.IGNORECASE)
_ROWS_RE = re.compile(r"(\d+)(?:-(\d+))?")
_GANSPACE_SPEC_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>\+=|-=|=)(?P<value>.*))?")


# -------------------------------------------------------------------------------- loading files


def _to_direction(t: Tensor, where: str, n_latent: int, style_dim: int) -> Tensor:
    """Check and reshape a loaded array -> float32 [1,D] (W) or [L,D] (W+)."""
    if not t.is_floating_point():
        raise InputError(f"{where}: direction has dtype {str(t.dtype).replace('torch.', '')}, expected float")
    shape = list(t.shape)
    core = list(shape)
    while len(core) > 1 and core[0] == 1:  # drop leading batch dims: [1,18,512] -> [18,512], [1,9216] -> [9216]
        core.pop(0)
    if core == [style_dim]:
        out = t.reshape(1, style_dim)
    elif core in ([n_latent, style_dim], [n_latent * style_dim]):
        out = t.reshape(n_latent, style_dim)
    else:
        raise InputError(
            f"{where}: direction has shape {shape}, expected [{style_dim}], [1,{style_dim}], "
            f"[{n_latent},{style_dim}], [1,{n_latent},{style_dim}] or [1,{n_latent * style_dim}]"
        )
    out = out.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(out).all():
        raise InputError(f"{where}: direction contains NaN or inf")
    if not out.any():
        raise InputError(f"{where}: direction is all zeros")
    return out


def load_direction(path: str | Path, n_latent: int = N_LATENT, style_dim: int = STYLE_DIM) -> Tensor:
    """Read a latent direction from a ``.pt`` / ``.pth`` (tensor, loaded weights-only on CPU, GPU pickles
    included) or ``.npy`` file (no pickles).

    Accepted shapes: [D], [1,D] (W: broadcast to every row), [L,D], [1,L,D] or flattened [1,L*D] (W+).
    Returns float32 [1,D] or [L,D] on the CPU, values as stored (no renormalisation).
    Raises :class:`InputError` (one line naming the file) for a missing file, pickled code, non-tensor content,
    a wrong size, NaN/inf or an all-zero direction.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such direction file")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as err:  # object arrays need pickle: refused
            raise InputError(f"{p}: not a plain numeric .npy array ({str(err).splitlines()[0][:120]})") from err
        except OSError as err:
            raise InputError(f"{p}: unreadable .npy file ({str(err).splitlines()[0][:120]})") from err
        if arr.dtype.kind != "f":
            raise InputError(f"{p}: direction has dtype {arr.dtype}, expected float")
        obj: object = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        try:
            obj = weights.safe_torch_load(p)
        except WeightsError as err:  # same one-line message, but a direction file is an input, not a checkpoint
            raise InputError(str(err).replace("checkpoint", "direction file")) from err
    if not isinstance(obj, Tensor):
        raise InputError(f"{p}: expected a direction tensor, found {type(obj).__name__}")
    return _to_direction(obj, str(p), n_latent, style_dim)


def load_builtin_direction(name: str) -> Tensor:
    """The shipped InterFaceGAN direction ``age`` / ``smile`` ([1,512], W) or ``pose`` ([18,512], W+)."""
    if name not in BUILTIN_DIRECTIONS:
        raise UsageError(f"unknown built-in direction {name!r}; known: {', '.join(BUILTIN_DIRECTIONS)}")
    return load_direction(DATA_DIR / BUILTIN_DIRECTIONS[name])


@dataclass(frozen=True, eq=False)
class GanspacePCA:
    """GANSpace PCA of W: ``mean`` [1,D], ``comp`` [K,1,D] (unit rows), ``std`` [K] (decreasing). float32, CPU."""

    mean: Tensor
    comp: Tensor
    std: Tensor

    @property
    def n_components(self) -> int:
        return int(self.comp.shape[0])


def load_ganspace_pca(path: str | Path | None = None) -> GanspacePCA:
    """Read an e4e-format ``ffhq_pca.pt`` (default: the shipped copy). :class:`InputError` if malformed."""
    p = Path(path) if path is not None else DATA_DIR / GANSPACE_PCA_FILE
    try:
        obj = weights.safe_torch_load(p)
    except WeightsError as err:
        raise InputError(str(err)) from err
    if not isinstance(obj, Mapping) or not {"mean", "comp", "std"} <= set(obj):
        raise InputError(f"{p}: expected a GANSpace PCA dict with keys mean, comp, std")
    mean, comp, std = (obj[k] for k in ("mean", "comp", "std"))
    if not all(isinstance(t, Tensor) for t in (mean, comp, std)):
        raise InputError(f"{p}: GANSpace PCA entries must be tensors")
    k = std.shape[0] if std.ndim == 1 else -1
    d = mean.shape[-1]
    if mean.shape != (1, d) or comp.shape != (k, 1, d) or k < 1:
        raise InputError(f"{p}: GANSpace PCA shapes mean {list(mean.shape)}, comp {list(comp.shape)}, "
                         f"std {list(std.shape)}; expected [1,D], [K,1,D], [K]")
    mean, comp, std = (t.detach().to("cpu", torch.float32).contiguous() for t in (mean, comp, std))
    if not all(torch.isfinite(t).all() for t in (mean, comp, std)) or not (std > 0).all():
        raise InputError(f"{p}: GANSpace PCA contains NaN/inf or a non-positive std")
    return GanspacePCA(mean=mean, comp=comp, std=std)


@dataclass(frozen=True)
class GanspaceNamedEdit:
    """One row of the named-edit table: component ``component``, W+ rows ``start:end`` (end exclusive), and
    the default target coordinate ``strength`` (std units)."""

    name: str
    component: int
    start: int
    end: int
    strength: float


def ganspace_named_edits(path: str | Path | None = None) -> dict[str, GanspaceNamedEdit]:
    """The named GANSpace edits (default: the shipped 42-row table), in file order.

    Format: tab-separated ``name, pc, start, end, strength`` with an optional header row (CRLF line ends are fine).
    """
    p = Path(path) if path is not None else DATA_DIR / GANSPACE_EDITS_FILE
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: cannot read the GANSpace edit table ({err})") from err
    table: dict[str, GanspaceNamedEdit] = {}
    for lineno, line in enumerate(lines, 1):
        cells = [c.strip() for c in line.split("\t")]
        if not line.strip() or (lineno == 1 and cells[0].lower() == "name"):
            continue
        try:
            name, pc, start, end, strength = cells
            row = GanspaceNamedEdit(name, int(pc), int(start), int(end), float(strength))
        except ValueError:
            raise InputError(f"{p}:{lineno}: expected 5 tab-separated fields: name, pc, start, end, strength") \
                from None
        if not (row.component >= 0 and 0 <= row.start < row.end <= N_LATENT and math.isfinite(row.strength)):
            raise InputError(f"{p}:{lineno}: bad component or layer range for {name!r}")
        table[name] = row
    return table


# -------------------------------------------------------------------------------- StyleCLIP mapper modules


class Mapper(nn.Module):
    """One StyleCLIP mapper group: PixelNorm + 4 x (EqualLinear(D, D, lr_mul=0.01) + fused lrelu).

    Input/output [N,R,D] (R = the group's W+ rows). As in the published code, PixelNorm normalises over dim 1,
    i.e. across the group's rows, not across features (StyleCLIP issue #82); the mappers were trained that way,
    so it is kept. The bias is per feature (StyleCLIP's ``fused_leaky_relu`` for 3-D input), which is what
    EqualLinear on the flattened [N*R,D] computes.
    """

    def __init__(self, style_dim: int = STYLE_DIM, n_layers: int = 4, lr_mul: float = 0.01):
        super().__init__()
        # Attribute names are the checkpoint keys: mapping.0 is PixelNorm (no weights), mapping.1..4 EqualLinear.
        self.mapping = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activation=True) for _ in range(n_layers)])

    def forward(self, x: Tensor) -> Tensor:
        """x: [N,R,D] -> [N,R,D]."""
        n, r, d = x.shape
        h = self.mapping[0](x).reshape(n * r, d)
        for layer in list(self.mapping)[1:]:
            h = layer(h)
        return h.reshape(n, r, d)


class LevelsMapper(nn.Module):
    """StyleCLIP ``LevelsMapper``: one :class:`Mapper` per W+ row group, coarse 0-3, medium 4-7, fine 8-17.

    A missing group outputs zeros, so ``w + s * mapper(w)`` leaves its rows unchanged. The state-dict keys are
    the published ones, typo included: ``course_mapping.mapping.{1..4}.{weight,bias}``, ``medium_mapping…``,
    ``fine_mapping…`` (prefixed ``mapper.`` inside the checkpoint's ``state_dict``).
    """

    def __init__(self, coarse: bool = True, medium: bool = True, fine: bool = True, style_dim: int = STYLE_DIM):
        super().__init__()
        if not (coarse or medium or fine):
            raise ValueError("a LevelsMapper needs at least one group")
        if coarse:
            self.course_mapping = Mapper(style_dim)  # sic: the published key spelling
        if medium:
            self.medium_mapping = Mapper(style_dim)
        if fine:
            self.fine_mapping = Mapper(style_dim)

    @property
    def groups(self) -> tuple[bool, bool, bool]:
        """(coarse, medium, fine) present."""
        return tuple(hasattr(self, f"{g}_mapping") for g, _, _ in MAPPER_GROUPS)  # type: ignore[return-value]

    def forward(self, w_plus: Tensor) -> Tensor:
        """w_plus: [N,L,D] (L > 8; 18 for FFHQ) -> the mapper's residual [N,L,D]."""
        parts = []
        for group, start, end in MAPPER_GROUPS:
            x = w_plus[:, start:end]
            module = getattr(self, f"{group}_mapping", None)
            parts.append(module(x) if module is not None else torch.zeros_like(x))
        return torch.cat(parts, dim=1)

    def extra_repr(self) -> str:
        names = ("coarse", "medium", "fine")
        return "groups=" + ",".join(g for g, on in zip(names, self.groups, strict=True) if on)


def load_styleclip_mapper(path: str | Path) -> LevelsMapper:
    """Load a StyleCLIP LevelsMapper checkpoint -> eval-mode module on the CPU, gradients off.

    Accepts the published format ``{'state_dict': {'mapper.*', 'decoder.*'}, 'opts': {...}}`` (the decoder is
    ignored) and mapper-only state dicts (StyleRes's re-saved files). The groups present are read from the keys
    and checked against ``opts['no_*_mapper']`` when present. :class:`WeightsError` (one line) otherwise.
    """
    p = Path(path)
    ckpt = weights.safe_torch_load(p)
    if not isinstance(ckpt, Mapping):
        raise WeightsError(f"{p}: expected a StyleCLIP mapper checkpoint (a dict), found {type(ckpt).__name__}")
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{p}: 'state_dict' is not a dict")
    if any(isinstance(k, str) and k.startswith("mapper.") for k in sd):
        sd = {k[len("mapper."):]: v for k, v in sd.items() if k.startswith("mapper.")}
    sd = {k: v for k, v in sd.items() if isinstance(k, str) and k.split(".")[0].endswith("_mapping")}
    present = tuple(any(k.startswith(f"{g}_mapping.") for k in sd) for g, _, _ in MAPPER_GROUPS)
    if not any(present):
        raise WeightsError(f"{p}: no StyleCLIP LevelsMapper weights (expected keys like "
                           "mapper.course_mapping.mapping.1.weight)")
    opts = ckpt.get("opts")
    if isinstance(opts, Mapping):
        if opts.get("mapper_type", "LevelsMapper") != "LevelsMapper":
            raise WeightsError(f"{p}: mapper_type {opts['mapper_type']!r} is not supported (only LevelsMapper)")
        flags = tuple(not opts.get(f"no_{g}_mapper", False) for g in ("coarse", "medium", "fine"))
        if flags != present:
            raise WeightsError(f"{p}: the opts' no_*_mapper flags {flags} disagree with the weights {present}")
    mapper = LevelsMapper(*present)
    expected = mapper.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise WeightsError(f"{p}: not a StyleCLIP LevelsMapper ({what})")
    for key, ref in expected.items():
        value = sd[key]
        if not isinstance(value, Tensor) or value.shape != ref.shape:
            got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise WeightsError(f"{p}: {key} has shape {got}, expected {list(ref.shape)}")
        if not torch.isfinite(value).all():
            raise WeightsError(f"{p}: {key} contains NaN or inf")
    mapper.load_state_dict({k: sd[k].float() for k in expected}, strict=True)
    return mapper.eval().requires_grad_(False)


def _looks_like_file(target: str) -> bool:
    return target.lower().endswith((".pt", ".pth")) or "/" in target or "\\" in target


def resolve_styleclip_mapper(name: str, offline: bool | None = None) -> Path:
    """Local file of a mapper: ``name`` itself when it is a path, else manifest entry ``styleclip_<name>`` via
    :func:`facefix.weights.resolve` (env ``FACEFIX_STYLECLIP_<NAME>``, ``$FACEFIX_WEIGHTS_DIR``, the cache)."""
    if _looks_like_file(name):
        p = Path(name).expanduser()
        if not p.is_file():
            raise InputError(f"{p}: no such StyleCLIP mapper file")
        return p
    if name not in STYLECLIP_MAPPERS:
        raise UsageError(f"--styleclip {name}: unknown mapper{_suggest(name, STYLECLIP_MAPPERS)}; known: "
                         f"{', '.join(STYLECLIP_MAPPERS)} (or pass a mapper .pt file)")
    return weights.resolve(f"styleclip_{name}", None, offline)


# -------------------------------------------------------------------------------- edits


class Edit:
    """Base of the edit types: ``apply(w_plus [N,L,D]) -> [N,L,D]`` (new tensor) and a short ``label``."""

    @property
    def label(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, w_plus: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError


def _fmt(v: float, sign: bool = False) -> str:
    return f"{v:+g}" if sign else f"{v:g}"


@dataclass(frozen=True, eq=False)
class DirectionEdit(Edit):
    """InterFaceGAN-style linear edit: ``w[:, a:b+1] += factor * direction`` (all rows when ``rows`` is None).

    ``direction``: [1,D] (same vector on every row) or [L,D] (per row; with ``rows``, rows a..b of it are used).
    """

    name: str
    direction: Tensor
    factor: float = 1.0
    rows: tuple[int, int] | None = None  # inclusive W+ row range

    @property
    def label(self) -> str:
        rows = f"@{self.rows[0]}-{self.rows[1]}" if self.rows else ""
        return f"{self.name}{_fmt(self.factor, sign=True)}{rows}"

    def apply(self, w_plus: Tensor) -> Tensor:
        n_rows = w_plus.shape[1]
        d = self.direction.to(device=w_plus.device, dtype=w_plus.dtype)
        if d.shape[0] not in (1, n_rows):
            raise UsageError(f"{self.name}: direction has {d.shape[0]} W+ rows, the latent code has {n_rows}")
        if self.rows is None:
            return w_plus + self.factor * d
        a, b = self.rows
        if not 0 <= a <= b < n_rows:
            raise UsageError(f"{self.name}: W+ rows {a}-{b} out of range 0-{n_rows - 1}")
        out = w_plus.clone()
        out[:, a:b + 1] = w_plus[:, a:b + 1] + self.factor * (d if d.shape[0] == 1 else d[a:b + 1])
        return out


@dataclass(frozen=True, eq=False)
class GanspaceEdit(Edit):
    """GANSpace edit along PCA component ``component`` on W+ rows ``start:end`` (end exclusive).

    Absolute (``relative=False``, e4e): ``coord = <w[:,0] - mean, comp> / std``;
    ``w[:, start:end] += (value - coord) * comp * std`` -- per face, so every face lands on coordinate ``value``.
    Relative: ``w[:, start:end] += value * comp * std`` (a step of ``value`` std units from where the face is).
    ``comp``, ``mean``: [D]; ``std``: 0-d, float32.
    """

    name: str
    component: int
    start: int
    end: int
    value: float
    relative: bool
    comp: Tensor
    mean: Tensor
    std: Tensor

    @property
    def label(self) -> str:
        return f"{self.name}+={_fmt(self.value)}" if self.relative else f"{self.name}={_fmt(self.value)}"

    def coordinate(self, w_plus: Tensor) -> Tensor:
        """Current coordinate of each face along the component, from row 0: [N] (std units)."""
        comp, mean, std = (t.to(device=w_plus.device, dtype=w_plus.dtype) for t in (self.comp, self.mean, self.std))
        return ((w_plus[:, 0] - mean) * comp).sum(-1) / std

    def apply(self, w_plus: Tensor) -> Tensor:
        n_rows = w_plus.shape[1]
        if self.end > n_rows:
            raise UsageError(f"{self.name}: changes W+ rows {self.start}-{self.end - 1}, the code has {n_rows} rows")
        comp, std = (t.to(device=w_plus.device, dtype=w_plus.dtype) for t in (self.comp, self.std))
        if self.relative:
            delta = (self.value * comp * std).expand(w_plus.shape[0], -1)  # [N,D]
        else:
            delta = (self.value - self.coordinate(w_plus))[:, None] * comp * std  # [N,D], e4e's operation order
        out = w_plus.clone()
        out[:, self.start:self.end] = w_plus[:, self.start:self.end] + delta[:, None]
        return out


@dataclass(frozen=True, eq=False)
class MapperEdit(Edit):
    """StyleCLIP latent mapper: ``w + strength * mapper(w)``. The mapper is moved to ``w``'s device on use."""

    name: str
    mapper: LevelsMapper
    strength: float = STYLECLIP_DEFAULT_STRENGTH

    @property
    def label(self) -> str:
        return f"{self.name}={_fmt(self.strength)}"

    def apply(self, w_plus: Tensor) -> Tensor:
        param = next(self.mapper.parameters())
        if param.device != w_plus.device or param.dtype != w_plus.dtype:
            self.mapper.to(device=w_plus.device, dtype=w_plus.dtype)
        return w_plus + self.strength * self.mapper(w_plus)


@dataclass(frozen=True, eq=False)
class TextEdit(Edit):
    """StyleCLIP global direction (``--text``): ``apply`` leaves W+ unchanged; the renderer adds
    ``alpha * direction * s_std`` to the generator's styles (:func:`facefix.styleclip.style_offsets`)."""

    prompt: str
    neutral: str
    direction: text_dirs.GlobalDirection
    alpha: float = text_dirs.DEFAULT_ALPHA

    @property
    def label(self) -> str:
        return f"text{_fmt(self.alpha, sign=True)}"

    def apply(self, w_plus: Tensor) -> Tensor:
        return w_plus


def style_edits(edits: Iterable[Edit]) -> list[tuple[text_dirs.GlobalDirection, float]]:
    """The StyleSpace part of a variant: ``(direction, alpha)`` of each :class:`TextEdit`, in order."""
    return [(e.direction, e.alpha) for e in edits if isinstance(e, TextEdit)]


def apply_edits(w_plus: Tensor, edits: Iterable[Edit]) -> Tensor:
    """Apply ``edits`` in order. w_plus: [N,L,D] (not modified) -> edited [N,L,D], same device and dtype."""
    if w_plus.ndim != 3:
        raise ValueError(f"w_plus must be [N,L,D], got shape {list(w_plus.shape)}")
    out = w_plus
    for edit in edits:
        out = edit.apply(out)
    return out


# -------------------------------------------------------------------------------- parsing CLI strings


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _number(text: str, what: str) -> float:
    if not _NUM_RE.fullmatch(text) or not math.isfinite(value := float(text)):
        raise UsageError(f"{what} {text!r}: not a number")
    return value


def _check_limit(values: Iterable[float], what: str, limit: float, useful: str, scale: float = 1.0) -> None:
    """UsageError unless every ``|value| x scale`` is at most ``limit`` (``scale``: a direction file's length)."""
    v = max(values, key=abs)  # of a sweep, the end the user typed
    if abs(v) * scale > limit:
        size = "" if abs(scale - 1) < 1e-3 else f" x the direction's length {scale:.3g} = {abs(v) * scale:.3g}"
        raise UsageError(f"{what} {v:g}{size}: too large; the limit is {limit:g} and the useful range is "
                         f"{useful} (see `facefix directions list`)")


def parse_value(text: str | float, what: str = "value", limit: float | None = None,
                useful: str = "") -> float | list[float]:
    """A number (``3``, ``+3``, ``-1.5``, ``2e-1``) -> float, or a sweep ``A:B:N`` -> N evenly spaced floats
    from A to B inclusive (2 <= N <= 240). ``what`` (e.g. ``"--age"``) starts the :class:`UsageError` message.
    ``limit``: the largest |value| accepted (sweep ends included); the error quotes ``useful``, the useful range."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text):
            raise UsageError(f"{what} {text}: not a finite number")
        values = [float(text)]
    elif _NUM_RE.fullmatch(s := str(text).strip()):
        values = [_number(s, what)]
    else:
        m = _SWEEP_RE.fullmatch(s)
        if m is None:
            raise UsageError(f"{what} {text!r}: expected a number (3, -1.5, +2) or a sweep FROM:TO:N (-4:4:9)")
        a, b, n = _number(m[1], what), _number(m[2], what), int(m[3])
        if not 2 <= n <= MAX_SWEEP_STEPS:
            raise UsageError(f"{what} {text!r}: a sweep needs 2 to {MAX_SWEEP_STEPS} steps, got {n}")
        values = [a + (b - a) * i / (n - 1) for i in range(n)]
        values[-1] = b  # exact end point despite rounding
    if limit is not None:
        _check_limit(values, what, limit, useful)
    return values if len(values) > 1 else values[0]


@dataclass(frozen=True)
class EditSpec:
    """One parsed edit flag, before any file is read.

    kind: ``"direction"`` (``target`` = built-in name or file), ``"ganspace"`` (named edit), ``"styleclip"``
    (mapper name or file) or ``"text"`` (prompt; values = alpha). ``values``: the value, or the N values of a sweep;
    ``None`` = the edit's default.
    ``rows``: direction only, inclusive W+ rows. ``relative``: GANSpace ``+=`` / ``-=`` form.
    """

    kind: str
    target: str
    values: tuple[float, ...] | None = None
    rows: tuple[int, int] | None = None
    relative: bool = False

    @property
    def is_sweep(self) -> bool:
        return self.values is not None and len(self.values) > 1


def _values(parsed: float | list[float]) -> tuple[float, ...]:
    return tuple(parsed) if isinstance(parsed, list) else (parsed,)


def parse_direction_spec(text: str, n_latent: int = N_LATENT) -> EditSpec:
    """``FILE[:F][@A-B]`` (``--direction``): a .pt/.pth/.npy file, factor F (default 1; a sweep ``A:B:N`` is
    allowed) and an optional inclusive W+ row range (``@4-7``, or ``@5`` for one row).
    Examples: ``gender.npy``, ``dirs/glasses.pt:2.5``, ``pose.pt:-4:4:9@0-5``."""
    m = _DIRECTION_SPEC_RE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--direction {text!r}: expected FILE[:FACTOR][@A-B] with a .pt, .pth or .npy file")
    values = None
    if m["value"] is not None:
        if not m["value"]:
            raise UsageError(f"--direction {text!r}: empty factor after ':'")
        values = _values(parse_value(m["value"], f"--direction {m['path']}: factor"))
    rows = None
    if m["rows"] is not None:
        r = _ROWS_RE.fullmatch(m["rows"].strip())
        if r is None:
            raise UsageError(f"--direction {text!r}: row range must be A-B (e.g. @4-7), got {m['rows']!r}")
        a, b = int(r[1]), int(r[2] if r[2] is not None else r[1])
        if not 0 <= a <= b < n_latent:
            raise UsageError(f"--direction {text!r}: rows {a}-{b} must satisfy 0 <= A <= B <= {n_latent - 1}")
        rows = (a, b)
    return EditSpec("direction", m["path"], values, rows)


def parse_ganspace_spec(text: str, table: Mapping[str, GanspaceNamedEdit] | None = None) -> EditSpec:
    """``NAME`` (target = the edit's strength), ``NAME=V`` (absolute target coordinate V), ``NAME+=D`` /
    ``NAME-=D`` (relative step). V and D may be sweeps ``A:B:N``. Names are checked against ``table``
    (default: the shipped named edits)."""
    m = _GANSPACE_SPEC_RE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--ganspace {text!r}: expected NAME, NAME=VALUE or NAME+=STEP")
    table = ganspace_named_edits() if table is None else table
    name = m["name"]
    if name not in table:
        raise UsageError(f"--ganspace {name}: unknown edit{_suggest(name, table)}; `facefix directions list` shows "
                         f"all {len(table)}")
    if m["op"] is None:
        return EditSpec("ganspace", name)
    if not m["value"].strip():
        raise UsageError(f"--ganspace {text!r}: missing value after {m['op']!r}")
    values = _values(parse_value(m["value"], f"--ganspace {name}", MAX_GANSPACE_VALUE, "about -40..40"))
    if m["op"] == "-=":
        values = tuple(-v for v in values)
    return EditSpec("ganspace", name, values, relative=m["op"] != "=")


def parse_styleclip_spec(text: str) -> EditSpec:
    """``NAME[=S]`` (``--styleclip``): a published mapper name (or a mapper .pt file) and strength S (default
    0.1; a sweep ``A:B:N`` is allowed)."""
    name, eq, value = text.strip().rpartition("=") if "=" in text else (text.strip(), "", "")
    name = name.strip()
    if not name:
        raise UsageError(f"--styleclip {text!r}: expected NAME[=STRENGTH]")
    if not _looks_like_file(name) and name not in STYLECLIP_MAPPERS:
        raise UsageError(f"--styleclip {name}: unknown mapper{_suggest(name, STYLECLIP_MAPPERS)}; known: "
                         f"{', '.join(STYLECLIP_MAPPERS)} (or pass a mapper .pt file)")
    if not eq:
        return EditSpec("styleclip", name)
    if not value.strip():
        raise UsageError(f"--styleclip {text!r}: missing strength after '='")
    return EditSpec("styleclip", name, _values(parse_value(value, f"--styleclip {name}", MAX_STYLECLIP_STRENGTH,
                                                           "0..0.15")))


def parse_text_spec(prompt: str, alpha: str | float | None = None) -> EditSpec:
    """``--text PROMPT`` with ``--alpha A`` (default 3; a sweep ``A:B:N`` is allowed)."""
    if not prompt.strip():
        raise UsageError("--text: empty prompt (e.g. --text \"a face with curly hair\")")
    values = None if alpha is None else _values(parse_value(alpha, "--alpha"))
    return EditSpec("text", prompt.strip(), values)


# -------------------------------------------------------------------------------- building variants


class Variant(NamedTuple):
    """One image to render: a label (``"age+3,eye_openness=20"``; display text, not sanitised for file names)
    and the edits to apply, in order."""

    label: str
    edits: tuple[Edit, ...]


def _spec_list(items: Iterable[str | EditSpec], parse) -> list[EditSpec]:
    return [item if isinstance(item, EditSpec) else parse(item) for item in items]


def build_edits(
    *,
    age: str | float | None = None,
    smile: str | float | None = None,
    pose: str | float | None = None,
    directions: Sequence[str | EditSpec] = (),
    ganspace: Sequence[str | EditSpec] = (),
    styleclip: Sequence[str | EditSpec] = (),
    text: str | None = None,
    neutral: str | None = None,
    alpha: str | float | None = None,
    beta: float | None = None,
    clip: str | Path | None = None,
    fs3: str | Path | None = None,
    offline: bool | None = None,
    n_latent: int = N_LATENT,
) -> list[Variant]:
    """Parse the edit flags, load each file once, and expand a sweep.

    Args:
        age, smile, pose: InterFaceGAN factor (``3``, ``"-1.5"``) or sweep string (``"-4:4:9"``); None = unused.
        directions, ganspace, styleclip: raw flag values (``"d.pt:2@4-7"``, ``"eye_openness+=5"``,
            ``"mohawk=0.08"``) or already-parsed :class:`EditSpec`\\ s, in command-line order.
        text: ``--text`` prompt (StyleCLIP global direction, :mod:`facefix.styleclip`); ``neutral`` its neutral
            prompt (default ``"a face"``), ``alpha`` its strength or sweep (default 3), ``beta`` its relevance
            threshold (default 0.15), ``clip`` a CLIP text model folder and ``fs3`` an ``fs3.npy`` file (default: the
            manifest's pinned files).
        offline: passed to :func:`facefix.weights.resolve` for StyleCLIP mappers, fs3 and CLIP.
        n_latent: W+ rows of the generator (direction files and row ranges are checked against it).
    Returns:
        One :class:`Variant` per image: a single one (possibly with no edits), or N for a sweep ``A:B:N``, all
        sharing the same loaded tensors and mapper modules.
    Raises:
        UsageError for bad syntax, unknown names, more than one swept edit, text options without ``--text`` or a
        missing CLIP extra; InputError / WeightsError for unreadable direction, PCA, mapper, fs3 or CLIP files.
    """
    text_options = {"--neutral": neutral, "--alpha": alpha, "--beta": beta, "--clip": clip, "--fs3": fs3}
    if text is None and any(v is not None for v in text_options.values()):
        raise UsageError(f"{next(k for k, v in text_options.items() if v is not None)} needs --text PROMPT")
    specs: list[EditSpec] = []
    for name, value in (("age", age), ("smile", smile), ("pose", pose)):
        if value is not None:
            specs.append(EditSpec("direction", name, _values(parse_value(value, f"--{name}"))))
    specs += _spec_list(directions, lambda s: parse_direction_spec(s, n_latent))
    specs += _spec_list(ganspace, parse_ganspace_spec)
    specs += _spec_list(styleclip, parse_styleclip_spec)
    if text is not None:
        specs.append(parse_text_spec(text, alpha))
    swept = [s for s in specs if s.is_sweep]
    if len(swept) > 1:
        raise UsageError("only one edit can be swept (FROM:TO:N) per run; got sweeps for "
                         + ", ".join(s.target for s in swept))

    # One factory per spec: value -> Edit, with its files loaded once here.
    factories = []
    pca: GanspacePCA | None = None
    table: dict[str, GanspaceNamedEdit] | None = None
    for spec in specs:
        if spec.kind == "direction":
            if spec.target in BUILTIN_DIRECTIONS:  # --age/--smile/--pose (a --direction target is always a file)
                direction, name = load_builtin_direction(spec.target), spec.target
            else:
                direction, name = load_direction(spec.target, n_latent), Path(spec.target).stem
            _check_limit(spec.values or (1.0,), f"--{name}" if spec.target in BUILTIN_DIRECTIONS else
                         f"--direction {spec.target}: factor", MAX_DIRECTION_STEP, "about -5..5 for a unit direction",
                         float(direction.norm(dim=-1).max()))
            factories.append((spec, 1.0, lambda v, s=spec, d=direction, n=name: DirectionEdit(n, d, v, s.rows)))
        elif spec.kind == "ganspace":
            pca = pca or load_ganspace_pca()
            table = table or ganspace_named_edits()
            if spec.target not in table:
                raise UsageError(f"--ganspace {spec.target}: unknown edit{_suggest(spec.target, table)}")
            row = table[spec.target]
            if row.component >= pca.n_components:
                raise InputError(f"{spec.target}: component {row.component} not in the PCA file "
                                 f"({pca.n_components} components)")
            comp, mean, std = pca.comp[row.component, 0], pca.mean[0], pca.std[row.component]
            factories.append((spec, row.strength, lambda v, s=spec, r=row, c=comp, m=mean, sd=std: GanspaceEdit(
                r.name, r.component, r.start, r.end, v, s.relative, c, m, sd)))
        elif spec.kind == "styleclip":
            mapper = load_styleclip_mapper(resolve_styleclip_mapper(spec.target, offline))
            name = Path(spec.target).stem if _looks_like_file(spec.target) else spec.target
            factories.append((spec, STYLECLIP_DEFAULT_STRENGTH,
                              lambda v, n=name, mp=mapper: MapperEdit(n, mp, v)))
        elif spec.kind == "text":
            direction, neutral_text = _text_direction(spec.target, neutral, beta, clip, fs3, offline)
            factories.append((spec, text_dirs.DEFAULT_ALPHA, lambda v, t=spec.target, nt=neutral_text,
                              d=direction: TextEdit(t, nt, d, v)))
        else:
            raise UsageError(f"unknown edit kind {spec.kind!r}")

    steps = swept[0].values if swept else (None,)
    variants = []
    for step in steps:
        edits = []
        for spec, default, make in factories:
            value = step if spec.is_sweep else (spec.values[0] if spec.values else default)
            edits.append(make(value))
        variants.append(Variant(",".join(e.label for e in edits), tuple(edits)))
    return variants


def _text_direction(prompt: str, neutral: str | None, beta: float | None, clip: str | Path | None,
                    fs3: str | Path | None, offline: bool | None) -> tuple[text_dirs.GlobalDirection, str]:
    """Load fs3 and CLIP (checking the extra and fetching the pinned files first), embed the prompts, threshold."""
    neutral = text_dirs.DEFAULT_NEUTRAL if neutral is None else neutral.strip()
    try:
        beta = text_dirs.DEFAULT_BETA if beta is None else float(beta)
    except (TypeError, ValueError):
        raise UsageError(f"--beta {beta!r}: not a number") from None
    if not neutral:
        raise UsageError("--neutral: empty prompt (the default is \"a face\")")
    if not (math.isfinite(beta) and 0 < beta < 1):
        raise UsageError(f"--beta {beta:g}: expected a relevance threshold between 0 and 1 (useful 0.08..0.3)")
    if importlib.util.find_spec("transformers") is None:
        raise UsageError("--text needs the optional CLIP text model (transformers), which is not installed: "
                         "pip install 'facefix[clip]'")
    fs3_file = weights.resolve(text_dirs.FS3_ENTRY, override=fs3, offline=offline)
    model = text_dirs.load_clip_text(clip, offline)
    delta_t = model.text_delta(prompt, neutral, text_dirs.prompt_templates())
    return text_dirs.global_direction(text_dirs.load_fs3(fs3_file), delta_t, beta), neutral


# -------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class DirectionInfo:
    """One row of ``facefix directions list``."""

    name: str
    kind: str          # interfacegan | ganspace | styleclip (latent mapper) | styleclip-text (global direction)
    usage: str         # the flag to use
    value: str         # what the number means
    useful_range: str
    default: str
    rows: str          # W+ rows changed, inclusive
    available: bool
    note: str = ""


def list_directions() -> list[DirectionInfo]:
    """Everything ``facefix edit`` can apply: 3 InterFaceGAN directions, the named GANSpace edits, the 14
    StyleCLIP mappers (with whether each file is on disk) and StyleCLIP global text directions (available when the
    CLIP extra is installed). Never downloads or hashes."""
    rows = [
        DirectionInfo(name, "interfacegan", f"--{name} F", "F x unit direction added to W+ (e4e convention; "
                      "PTI/SFE factors are 2x ours)", "about -5..5", "none (F required)", "0-17", True,
                      f"{BUILTIN_DIRECTIONS[name]}, shipped")
        for name in BUILTIN_DIRECTIONS
    ]
    for e in ganspace_named_edits().values():
        rows.append(DirectionInfo(
            e.name, "ganspace", f"--ganspace {e.name}[=V] | {e.name}+=D",
            f"V = target coordinate on PC{e.component} in std units (0 = FFHQ mean, not a no-op); D = relative step",
            "about -40..40", _fmt(e.strength), f"{e.start}-{e.end - 1}", True, ""))
    for name, (_, _, fine) in STYLECLIP_MAPPERS.items():
        try:
            path = weights.path(f"styleclip_{name}")
        except WeightsError:
            path = None
        present = path is not None and path.is_file()
        note = str(path) if present else f"downloaded on first use (about 141 MB; `facefix weights download " \
            f"styleclip_{name}`), or set FACEFIX_STYLECLIP_{name.upper()} / pass a .pt file"
        rows.append(DirectionInfo(
            name, "styleclip", f"--styleclip {name}[=S]", "S in w + S x mapper(w) (a learned W+ residual)", "0..0.15",
            _fmt(STYLECLIP_DEFAULT_STRENGTH), "0-17" if fine else "0-7 (no fine group)", present, note))
    rows.append(DirectionInfo(
        "text", "styleclip-text", '--text "PROMPT" [--neutral "a face"] [--alpha A] [--beta B]',
        f"A = style std units the most relevant channel moves (s + A x direction x s_std; sweep A:B:N); B = CLIP "
        f"relevance threshold (default {_fmt(text_dirs.DEFAULT_BETA)}; useful 0.08..0.3, higher = fewer channels)",
        "about -6..6", _fmt(text_dirs.DEFAULT_ALPHA), "S-space (no W+ row)",
        importlib.util.find_spec("transformers") is not None,
        "needs pip install 'facefix[clip]'; CLIP ViT-B/32 (605 MB) and StyleCLIP's fs3.npy are downloaded on first "
        "use"))
    return rows
