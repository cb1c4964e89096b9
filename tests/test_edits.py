"""Edits on W+ codes: real direction files, exact arithmetic, GANSpace forms, StyleCLIP mappers, parsers, goldens."""

from __future__ import annotations

import hashlib
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facefix import edits as E
from facefix.errors import InputError, UsageError, WeightsError
from tests.conftest import golden, stats

REAL = E.DATA_DIR  # the published files, byte for byte (SHA256)
SHA256 = {  # facefix/data/README.md
    "age.pt": "50074516b1629707d89b5e43d6b8abd1792212fa3b961a87a11323d6a5222ae0",
    "smile.pt": "817a7e732b59dee9eba862bec8bd7e8373568443bc9f9731a21cf9b0356f0653",
    "pose.pt": "736e0eacc8488fa0b020a2e7bd256b957284c364191dfea693705e5d06d43e7d",
    "ffhq_pca.pt": "4d7f9df1c96180d9026b9cb8d04753579fbf385f321a9d0e263641601c5e5d36",
    "ganspace_named_edits.tsv": "d406eae5db3576ef200705f035c2578c55121d664760a9798cc5748f4c251ee1",
}


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture()
def w_plus() -> torch.Tensor:
    """Two W+ codes with the spread of real e4e codes (mean ~0.5, std ~1)."""
    return torch.randn(2, 18, 512, generator=torch.Generator().manual_seed(7)) + 0.5


# -------------------------------------------------------------------------------- shipped data


@pytest.mark.parametrize("name", sorted(SHA256))
def test_packaged_data_is_the_published_files(name):
    shipped = (E.DATA_DIR / name).read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == SHA256[name]
    assert SHA256[name] in (E.DATA_DIR / "README.md").read_text()


# -------------------------------------------------------------------------------- direction files


def test_real_directions_age_smile_in_w():
    for name in ("age", "smile"):
        d = E.load_direction(REAL / f"{name}.pt")
        assert d.shape == (1, 512) and d.dtype == torch.float32
        assert abs(float(d.norm()) - 1.0) < 1e-5
        assert torch.equal(d, E.load_builtin_direction(name))


def test_real_pose_is_w_plus_pickled_on_gpu():
    path = REAL / "pose.pt"
    if not torch.cuda.is_available():  # proves the file really is a CUDA pickle
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    d = E.load_direction(path)
    assert d.shape == (18, 512) and d.device.type == "cpu"
    assert torch.equal(d, d[:1].expand(18, -1))  # 18 identical rows
    assert torch.allclose(d.norm(dim=1), torch.ones(18), atol=1e-5)
    assert torch.equal(d, E.load_builtin_direction("pose"))


@pytest.mark.parametrize("shape,expected", [([512], (1, 512)), ([1, 512], (1, 512)), ([18, 512], (18, 512)),
                                            ([1, 18, 512], (18, 512)), ([1, 9216], (18, 512))])
@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_direction_shapes(tmp_path, shape, expected, suffix):
    t = torch.randn(shape, dtype=torch.float64)
    path = tmp_path / f"d{suffix}"
    torch.save(t, path) if suffix == ".pt" else np.save(path, t.numpy())
    d = E.load_direction(path)
    assert d.shape == expected and d.dtype == torch.float32
    assert torch.equal(d.flatten(), t.float().flatten())


def _evil_file(path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))
    with open(path, "wb") as f:
        pickle.dump(Evil(), f)


@pytest.mark.parametrize("make,match", [
    (lambda p: torch.save(torch.randn(2, 512), p), r"shape \[2, 512\]"),
    (lambda p: torch.save(torch.randn(511), p), r"shape \[511\]"),
    (lambda p: torch.save(torch.randn(17, 512), p), r"shape \[17, 512\]"),
    (lambda p: torch.save(torch.tensor([math.nan] + [0.0] * 511), p), "NaN or inf"),
    (lambda p: torch.save(torch.full((1, 512), math.inf), p), "NaN or inf"),
    (lambda p: torch.save(torch.zeros(1, 512), p), "all zeros"),
    (lambda p: torch.save(torch.ones(512, dtype=torch.int64), p), "expected float"),
    (lambda p: torch.save({"direction": torch.randn(512)}, p), "found dict"),
    (_evil_file, "pickled code"),
    (lambda p: p.write_bytes(b"not a pickle at all"), "refusing|corrupt"),
])
def test_malformed_direction_pt(tmp_path, make, match):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(InputError, match=match) as err:
        E.load_direction(path)
    assert "bad.pt" in one_line(err)


def test_malformed_direction_npy(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "nan.npy", np.full((1, 512), np.nan, dtype=np.float32))
    np.save(tmp_path / "size.npy", np.ones((3, 512), dtype=np.float32))
    for name, match in [("obj.npy", "not a plain numeric"), ("nan.npy", "NaN"), ("size.npy", "shape"),
                        ("missing.npy", "no such direction file")]:
        with pytest.raises(InputError, match=match) as err:
            E.load_direction(tmp_path / name)
        assert name in one_line(err)


# -------------------------------------------------------------------------------- InterFaceGAN arithmetic


def test_interfacegan_exact_on_all_rows(w_plus):
    age, pose = E.load_builtin_direction("age"), E.load_builtin_direction("pose")
    out = E.DirectionEdit("age", age, 3.0).apply(w_plus)
    assert torch.equal(out, w_plus + 3.0 * age)
    assert torch.allclose(out[:, 5] - w_plus[:, 5], out[:, 17] - w_plus[:, 17], atol=1e-6)  # same step, every row
    assert abs(float((out - w_plus)[0, 0].norm()) - 3.0) < 1e-4  # unit direction: |step| = factor
    out = E.DirectionEdit("pose", pose, -2.5).apply(w_plus)
    assert torch.equal(out, w_plus + (-2.5) * pose[None])


@pytest.mark.parametrize("name", ["age", "pose"])
def test_interfacegan_row_range(w_plus, name):
    d = E.load_builtin_direction(name)
    spec = E.parse_direction_spec(f"{name}.pt:1.5@4-7")
    out = E.DirectionEdit(name, d, spec.values[0], spec.rows).apply(w_plus)
    rows = d if d.shape[0] == 1 else d[4:8]
    assert torch.equal(out[:, 4:8], w_plus[:, 4:8] + 1.5 * rows)
    assert torch.equal(out[:, :4], w_plus[:, :4]) and torch.equal(out[:, 8:], w_plus[:, 8:])
    with pytest.raises(UsageError, match="rows 4-18"):
        E.DirectionEdit(name, d, 1.0, (4, 18)).apply(w_plus)


def test_combined_builtins_and_file(w_plus, tmp_path):
    age, smile, pose = (E.load_builtin_direction(n) for n in ("age", "smile", "pose"))
    extra = torch.randn(1, 18, 512, generator=torch.Generator().manual_seed(3))
    torch.save(extra, tmp_path / "extra.pt")
    (variant,) = E.build_edits(age="+3", smile=-1.5, pose="2", directions=[f"{tmp_path / 'extra.pt'}:0.5@10-17"])
    assert variant.label == "age+3,smile-1.5,pose+2,extra+0.5@10-17"
    out = E.apply_edits(w_plus, variant.edits)
    expected = w_plus + 3.0 * age + (-1.5) * smile + 2.0 * pose
    expected[:, 10:] = expected[:, 10:] + 0.5 * extra[0, 10:]
    assert torch.equal(out, expected)
    assert not torch.equal(out, w_plus)


def test_apply_edits_leaves_input_alone(w_plus):
    before = w_plus.clone()
    (variant,) = E.build_edits(age=2, directions=[], ganspace=["eye_openness", "smile+=3"])
    E.apply_edits(w_plus, variant.edits)
    assert torch.equal(w_plus, before)
    assert torch.equal(E.apply_edits(w_plus, []), w_plus)
    with pytest.raises(ValueError):
        E.apply_edits(w_plus[0], variant.edits)


# -------------------------------------------------------------------------------- GANSpace


def e4e_ganspace(pca, latents, pca_idx, start, end, strength):
    """e4e ``editings/ganspace.py`` (edit + get_delta), restated on the CPU, one latent [18,512] at a time."""
    out = []
    for latent in latents:
        w_centered = latent - pca["mean"]
        lat_comp, lat_std = pca["comp"], pca["std"]
        w_coord = torch.sum(w_centered[0].reshape(-1) * lat_comp[pca_idx].reshape(-1)) / lat_std[pca_idx]
        delta = (strength - w_coord) * lat_comp[pca_idx] * lat_std[pca_idx]
        delta_padded = torch.zeros(latent.shape)
        delta_padded[start:end] += delta.repeat(end - start, 1)
        out.append(latent + delta_padded)
    return torch.stack(out)


@pytest.fixture(scope="module")
def pca_dict():
    return torch.load(REAL / "ffhq_pca.pt", map_location="cpu", weights_only=True)


def test_named_edit_table():
    table = E.ganspace_named_edits()
    assert len(table) == 42 and len(E.ganspace_named_edits(REAL / "ganspace_named_edits.tsv")) == 42
    assert table["eye_openness"] == E.GanspaceNamedEdit("eye_openness", 54, 7, 8, 20.0)
    assert table["white_hair"] == E.GanspaceNamedEdit("white_hair", 57, 7, 10, -24.0)
    assert table["show_front_teeth"] == E.GanspaceNamedEdit("show_front_teeth", 59, 4, 5, 40.0)
    assert table["overexposed"] == E.GanspaceNamedEdit("overexposed", 27, 8, 18, 15.0)
    assert all(0 <= e.start < e.end <= 18 and 0 <= e.component < 80 for e in table.values())
    pca = E.load_ganspace_pca()
    assert pca.mean.shape == (1, 512) and pca.comp.shape == (80, 1, 512) and pca.std.shape == (80,)


@pytest.mark.parametrize("name,value", [("eye_openness", None), ("face_roundness", 0.0), ("overexposed", -7.5),
                                        ("white_hair", None), ("head_angle_up", 12.0)])
def test_ganspace_absolute_matches_e4e(w_plus, pca_dict, name, value):
    row = E.ganspace_named_edits()[name]
    spec = name if value is None else f"{name}={value}"
    (variant,) = E.build_edits(ganspace=[spec])
    out = E.apply_edits(w_plus, variant.edits)
    target = row.strength if value is None else value
    ref = e4e_ganspace(pca_dict, w_plus, row.component, row.start, row.end, target)
    assert (out - ref).abs().max() < 1e-5
    assert not torch.equal(out, w_plus)  # even value 0 moves the face (to the PCA mean along the component)
    outside = torch.ones(18, dtype=torch.bool)
    outside[row.start:row.end] = False
    assert torch.equal(out[:, outside], w_plus[:, outside])  # rows outside the edit's range untouched
    edit = variant.edits[0]
    if row.start == 0:  # row 0 is edited, so each face now sits exactly at the target coordinate
        assert torch.allclose(edit.coordinate(out), torch.full((2,), float(target)), atol=1e-3)


def test_ganspace_relative(w_plus, pca_dict):
    row = E.ganspace_named_edits()["face_roundness"]  # rows 0-4
    (rel,) = E.build_edits(ganspace=["face_roundness+=-5"])
    edit = rel.edits[0]
    out = E.apply_edits(w_plus, rel.edits)
    comp, std = pca_dict["comp"][row.component, 0], pca_dict["std"][row.component]
    assert torch.allclose(out[:, 0:5], w_plus[:, 0:5] + (-5.0) * comp * std, atol=1e-6)
    assert torch.equal(out[:, 5:], w_plus[:, 5:])
    # a step of D from where each face is == the absolute form with target coord + D
    coord = edit.coordinate(w_plus)
    assert torch.allclose(edit.coordinate(out), coord - 5.0, atol=1e-3)
    for i in range(2):
        ref = e4e_ganspace(pca_dict, w_plus[i:i + 1], row.component, 0, 5, float(coord[i]) - 5.0)
        assert (out[i:i + 1] - ref).abs().max() < 1e-5
    # `-=` is the same step negated
    (neg,) = E.build_edits(ganspace=["face_roundness-=5"])
    assert torch.equal(E.apply_edits(w_plus, neg.edits), out)


def test_ganspace_relative_zero_is_a_no_op(w_plus):
    (variant,) = E.build_edits(ganspace=["eye_openness+=0", "overexposed+=0"])
    assert torch.equal(E.apply_edits(w_plus, variant.edits), w_plus)
    (absolute,) = E.build_edits(ganspace=["eye_openness=0"])
    assert not torch.equal(E.apply_edits(w_plus, absolute.edits), w_plus)


# -------------------------------------------------------------------------------- golden: e4e InterFaceGAN edit


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_golden_e4e_edit_codes(tmp_path, suffix):
    d = golden("e4e_edit.npz")
    path = tmp_path / f"golden_direction{suffix}"
    torch.save(torch.from_numpy(d["direction"]), path) if suffix == ".pt" else np.save(path, d["direction"])
    a, b = (float(f) for f in d["factors"])
    variants = E.build_edits(directions=[f"{path}:{a:g}:{b:g}:2"])  # the golden's two factors, as a sweep
    assert [v.label for v in variants] == ["golden_direction-3", "golden_direction+3"]
    w_in = torch.from_numpy(d["wplus_in"])
    out = torch.cat([E.apply_edits(w_in, v.edits) for v in variants])
    np.testing.assert_allclose(out.numpy(), d["wplus_edit"], rtol=0, atol=1e-6)


@torch.no_grad()
def test_golden_e4e_edit_images(g1024):
    """The edited codes through the 1024 recipe generator reproduce the golden images (~10 s on 2 CPU threads)."""
    d = golden("e4e_edit.npz")
    w_in, direction = torch.from_numpy(d["wplus_in"]), torch.from_numpy(d["direction"])
    w = torch.cat([E.apply_edits(w_in, [E.DirectionEdit("golden", direction, float(f))]) for f in d["factors"]])
    img = g1024.synthesis(w)
    np.testing.assert_allclose(img[:, :, ::16, ::16].numpy(), d["edit1024_sub16"], rtol=0, atol=1e-4)
    np.testing.assert_allclose([stats(img[j:j + 1]) for j in range(2)], d["edit1024_stats"], rtol=1e-4)
    np.testing.assert_allclose(F.adaptive_avg_pool2d(img, 256).numpy(), d["edit256"], rtol=0, atol=1e-4)


# -------------------------------------------------------------------------------- StyleCLIP mappers

PUBLISHED_KEYS = [f"mapper.{g}_mapping.mapping.{i}.{p}" for g in ("course", "medium") for i in range(1, 5)
                  for p in ("weight", "bias")]


def reference_levels_mapper(sd: dict, w: torch.Tensor) -> torch.Tensor:
    """StyleCLIP ``LevelsMapper.forward`` restated with plain ops from a published state dict (no facefix code):
    PixelNorm over dim 1 (the group's rows), then 4 x [x @ (W * 0.01/sqrt(512))^T, + b*0.01 per feature,
    leaky_relu(0.2) * sqrt(2)]; a missing group gives zeros."""
    parts = []
    for group, rows in (("course", slice(0, 4)), ("medium", slice(4, 8)), ("fine", slice(8, None))):
        x = w[:, rows]
        if f"mapper.{group}_mapping.mapping.1.weight" not in sd:
            parts.append(torch.zeros_like(x))
            continue
        x = x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)
        for i in range(1, 5):
            wt, b = sd[f"mapper.{group}_mapping.mapping.{i}.weight"], sd[f"mapper.{group}_mapping.mapping.{i}.bias"]
            x = F.leaky_relu(F.linear(x, wt * (0.01 / math.sqrt(512))) + b * 0.01, 0.2) * math.sqrt(2)
        parts.append(x)
    return torch.cat(parts, dim=1)


def write_published_mapper(path, fine: bool, seed: int = 0, opts: dict | None = None) -> dict:
    """A mapper checkpoint in the published StyleCLIP format: {'state_dict': mapper.* + decoder.*, 'opts': {...}}."""
    g = torch.Generator().manual_seed(seed)
    groups = ("course", "medium", "fine") if fine else ("course", "medium")
    sd = {}
    for group in groups:
        for i in range(1, 5):
            sd[f"mapper.{group}_mapping.mapping.{i}.weight"] = torch.randn(512, 512, generator=g) * 100  # lr_mul 0.01
            sd[f"mapper.{group}_mapping.mapping.{i}.bias"] = torch.randn(512, generator=g) * 10
    sd["decoder.style.1.weight"] = torch.randn(4, 4, generator=g)  # the bundled generator is ignored
    opts = opts if opts is not None else {"mapper_type": "LevelsMapper", "no_coarse_mapper": False,
                                          "no_medium_mapper": False, "no_fine_mapper": not fine,
                                          "description": "mohawk hairstyle", "stylegan_size": 1024}
    torch.save({"state_dict": sd, "opts": opts}, path)
    return sd


def test_mapper_published_layout_loads_and_runs(tmp_path, w_plus):
    sd = write_published_mapper(tmp_path / "mohawk.pt", fine=False)
    mapper = E.load_styleclip_mapper(tmp_path / "mohawk.pt")
    assert sorted("mapper." + k for k in mapper.state_dict()) == sorted(PUBLISHED_KEYS)
    assert mapper.groups == (True, True, False) and not mapper.training
    (variant,) = E.build_edits(styleclip=[f"{tmp_path / 'mohawk.pt'}=0.08"])
    assert variant.label == "mohawk=0.08"
    with torch.no_grad():
        out = E.apply_edits(w_plus, variant.edits)
    ref = w_plus + 0.08 * reference_levels_mapper(sd, w_plus)
    assert (out - ref).abs().max() < 1e-4
    assert (out[:, :8] - w_plus[:, :8]).abs().max() > 1e-3  # the mapper does something
    assert torch.equal(out[:, 8:], w_plus[:, 8:])  # no fine group: rows 8-17 untouched


def test_mapper_by_name_default_strength_and_full_groups(tmp_path, w_plus, monkeypatch):
    sd = write_published_mapper(tmp_path / "beyonce.pt", fine=True, seed=1)
    monkeypatch.setenv("FACEFIX_STYLECLIP_BEYONCE", str(tmp_path / "beyonce.pt"))
    (variant,) = E.build_edits(styleclip=["beyonce"])
    assert variant.label == "beyonce=0.1"
    with torch.no_grad():
        out = E.apply_edits(w_plus, variant.edits)
    assert (out - (w_plus + 0.1 * reference_levels_mapper(sd, w_plus))).abs().max() < 1e-4
    assert (out[:, 8:] - w_plus[:, 8:]).abs().max() > 1e-3
    row = next(r for r in E.list_directions() if r.name == "beyonce")
    assert row.available and row.rows == "0-17"


def test_mapper_only_state_dict_and_bad_files(tmp_path):
    sd = write_published_mapper(tmp_path / "full.pt", fine=True)
    torch.save({k[len("mapper."):]: v for k, v in sd.items() if k.startswith("mapper.")}, tmp_path / "bare.pt")
    assert E.load_styleclip_mapper(tmp_path / "bare.pt").groups == (True, True, True)
    write_published_mapper(tmp_path / "flags.pt", fine=True, opts={"no_fine_mapper": True})
    bad = {k: v for k, v in sd.items() if not k.endswith("mapping.4.bias")}
    torch.save({"state_dict": bad}, tmp_path / "partial.pt")
    torch.save({"state_dict": {**sd, "mapper.course_mapping.mapping.1.weight": torch.ones(3, 3)}}, tmp_path / "s.pt")
    torch.save({"state_dict": {"decoder.x": torch.ones(1)}}, tmp_path / "none.pt")
    for name, match in [("flags.pt", "disagree"), ("partial.pt", "missing"), ("s.pt", "shape"),
                        ("none.pt", "no StyleCLIP")]:
        with pytest.raises(WeightsError, match=match) as err:
            E.load_styleclip_mapper(tmp_path / name)
        assert name in one_line(err)


def test_mapper_name_without_file_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("FACEFIX_STYLECLIP_MOHAWK", raising=False)
    monkeypatch.setenv("FACEFIX_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match="FACEFIX_STYLECLIP_MOHAWK") as err:
        E.build_edits(styleclip=["mohawk"], offline=True)
    one_line(err)
    row = next(r for r in E.list_directions() if r.name == "mohawk")
    assert not row.available and row.rows == "0-7 (no fine group)" and row.default == "0.1"


# -------------------------------------------------------------------------------- parsers


@pytest.mark.parametrize("text,expected", [
    ("3", 3.0), ("+3", 3.0), ("-1.5", -1.5), (".5", 0.5), ("2e-1", 0.2), (" 4 ", 4.0), (2, 2.0), (-0.5, -0.5),
    ("-4:4:9", [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]), ("0:1:2", [0.0, 1.0]),
    ("0.1:0.3:3", [0.1, 0.2, 0.3]),
])
def test_parse_value_good(text, expected):
    got = E.parse_value(text)
    if isinstance(expected, list):
        assert isinstance(got, list) and got == pytest.approx(expected, abs=1e-12)
        assert (got[0], got[-1]) == (expected[0], expected[-1])  # end points exact
    else:
        assert got == expected and isinstance(got, float)


@pytest.mark.parametrize("text", ["", "abc", "3x", "1:2", "1:2:1", "1:2:1000", "1:2:2.5", "nan", "inf", "1e999",
                                  "--3", "1,5", float("nan")])
def test_parse_value_bad(text):
    with pytest.raises(UsageError) as err:
        E.parse_value(text, "--age")
    assert one_line(err).startswith("--age")


@pytest.mark.parametrize("kw,match", [
    ({"age": "1e30"}, r"--age 1e\+30: too large; the limit is 100 and the useful range is about -5\.\.5"),
    ({"smile": "-4:1000:3"}, "--smile 1000: too large"),  # a sweep's end
    ({"pose": -101}, "--pose -101: too large"),
    ({"ganspace": ["eye_openness=1e6"]}, r"--ganspace eye_openness 1e\+06: too large; the limit is 400 and the "
                                         r"useful range is about -40\.\.40"),
    ({"ganspace": ["eye_openness-=-401"]}, "--ganspace eye_openness -401: too large"),
    ({"styleclip": ["mohawk=20"]}, r"--styleclip mohawk 20: too large; the limit is 10 and the useful range is "
                                   r"0\.\.0\.15"),
])
def test_absurd_values_are_refused_with_the_useful_range(kw, match):
    with pytest.raises(UsageError, match=match) as err:
        E.build_edits(**kw)
    one_line(err)


def test_direction_file_limit_is_on_how_far_w_moves(tmp_path):
    """The limit is on |factor| x the direction's length, so a short direction may take a large factor."""
    short = tmp_path / "short.pt"
    torch.save(torch.full((512,), 0.01 / math.sqrt(512)), short)  # length 0.01
    assert E.build_edits(directions=[f"{short}:5000"])[0].edits[0].factor == 5000
    with pytest.raises(UsageError, match=r"factor 20000 x the direction's length 0\.01 = 200: too large"):
        E.build_edits(directions=[f"{short}:20000"])
    raw = tmp_path / "raw.pt"
    torch.save(torch.full((512,), 10.0), raw)  # length 226: even the default factor 1 is too far
    with pytest.raises(UsageError, match="factor 1 x the direction's length 226"):
        E.build_edits(directions=[str(raw)])


@pytest.mark.parametrize("text,path,values,rows", [
    ("a.pt", "a.pt", None, None),
    ("path.pt:2.5@4-7", "path.pt", (2.5,), (4, 7)),
    ("dirs/v.npy@5", "dirs/v.npy", None, (5, 5)),
    ("C:\\dirs\\glasses.pth:-1", "C:\\dirs\\glasses.pth", (-1.0,), None),
    ("odd@name/x.PT:+3", "odd@name/x.PT", (3.0,), None),
    ("pose.pt:-2:2:5@0-5", "pose.pt", (-2.0, -1.0, 0.0, 1.0, 2.0), (0, 5)),
    ("my.pt.backup.pt:1", "my.pt.backup.pt", (1.0,), None),
])
def test_parse_direction_spec_good(text, path, values, rows):
    spec = E.parse_direction_spec(text)
    assert (spec.kind, spec.target, spec.values, spec.rows) == ("direction", path, values, rows)


@pytest.mark.parametrize("text,match", [
    ("x.txt", "FILE"), ("x.pt:", "empty factor"), ("x.pt:abc", "factor"), ("x.pt@7-4", "rows 7-4"),
    ("x.pt@4-18", "rows 4-18"), ("x.pt@a-b", "row range"), ("x.pt@", "row range"), ("x.pt:1:2", "factor"),
])
def test_parse_direction_spec_bad(text, match):
    with pytest.raises(UsageError, match=match) as err:
        E.parse_direction_spec(text)
    one_line(err)


@pytest.mark.parametrize("text,values,relative", [
    ("eye_openness", None, False), ("eye_openness=20", (20.0,), False), ("eye_openness=-5", (-5.0,), False),
    ("eye_openness+=-5", (-5.0,), True), ("eye_openness+=5", (5.0,), True), ("eye_openness-=5", (-5.0,), True),
    ("eye_openness=-10:30:3", (-10.0, 10.0, 30.0), False),
])
def test_parse_ganspace_spec_good(text, values, relative):
    spec = E.parse_ganspace_spec(text)
    assert (spec.target, spec.values, spec.relative) == ("eye_openness", values, relative)


@pytest.mark.parametrize("text,match", [
    ("eye_opennes=3", "did you mean eye_openness"), ("eye_openness==3", "not a number|expected"),
    ("eye_openness+=", "missing value"), ("=3", "expected NAME"), ("eye openness", "expected NAME"),
    ("eye_openness=x", "number"),
])
def test_parse_ganspace_spec_bad(text, match):
    with pytest.raises(UsageError, match=match) as err:
        E.parse_ganspace_spec(text)
    one_line(err)


def test_parse_styleclip_spec():
    assert E.parse_styleclip_spec("mohawk") == E.EditSpec("styleclip", "mohawk")
    assert E.parse_styleclip_spec("mohawk=0.08") == E.EditSpec("styleclip", "mohawk", (0.08,))
    assert E.parse_styleclip_spec("m/x.pt=0:0.1:3").values == (0.0, 0.05, 0.1)
    for text, match in [("mohawkk", "did you mean mohawk"), ("mohawk=", "missing strength"),
                        ("mohawk=abc", "expected a number"), ("=0.1", "expected NAME")]:
        with pytest.raises(UsageError, match=match) as err:
            E.parse_styleclip_spec(text)
        one_line(err)


# -------------------------------------------------------------------------------- sweeps, listing


def test_sweep_expands_one_edit(w_plus):
    variants = E.build_edits(age="-4:4:9", smile="1", ganspace=["lipstick+=2"])
    assert len(variants) == 9
    assert [v.label.split(",")[0] for v in variants] == ["age-4", "age-3", "age-2", "age-1", "age+0", "age+1",
                                                         "age+2", "age+3", "age+4"]
    assert all(v.label.endswith(",smile+1,lipstick+=2") for v in variants)
    assert variants[0].edits[0].direction is variants[8].edits[0].direction  # loaded once, shared
    age = E.load_builtin_direction("age")
    for k, v in enumerate(variants):
        out = E.apply_edits(w_plus, v.edits[:1])
        assert torch.equal(out, w_plus + float(k - 4) * age)
    with pytest.raises(UsageError, match="only one edit can be swept") as err:
        E.build_edits(age="-4:4:9", ganspace=["smile=-10:10:3"])
    one_line(err)


def test_no_edits_is_one_identity_variant(w_plus):
    (variant,) = E.build_edits()
    assert variant == E.Variant("", ())
    assert torch.equal(E.apply_edits(w_plus, variant.edits), w_plus)


def test_list_directions():
    rows = E.list_directions()
    kinds = [r.kind for r in rows]
    assert (kinds.count("interfacegan"), kinds.count("ganspace"), kinds.count("styleclip"),
            kinds.count("styleclip-text")) == (3, 42, 14, 1)
    age = rows[0]
    assert (age.name, age.useful_range, age.rows) == ("age", "about -5..5", "0-17")
    eye = next(r for r in rows if r.name == "eye_openness")
    assert (eye.default, eye.rows, eye.available) == ("20", "7-7", True) and "target coordinate" in eye.value
    assert {r.name for r in rows if r.kind == "styleclip"} == set(E.STYLECLIP_MAPPERS)
