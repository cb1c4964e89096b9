"""StyleCLIP global directions: StyleSpace edits against hyperstyle's generator, the direction against StyleCLIP's
formula (tests/golden/styleclip, see its README), style statistics, the CLIP text tower (a tiny random CLIP built
here), and `facefix edit --text` end to end over the 64 px e4e test checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facefix import styleclip
from facefix.errors import InputError, UsageError, WeightsError
from facefix.models.stylegan2 import Generator
from tests.test_cli import ALIGNED, run

GOLDEN = Path(__file__).with_name("golden") / "styleclip"
TINY_CLIP_DIM = 16


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / name) as d:
        return {k: d[k] for k in d.files}


def split(flat: np.ndarray | torch.Tensor, dims) -> list[torch.Tensor]:
    return list(torch.split(torch.as_tensor(np.asarray(flat)), [int(d) for d in dims]))


@pytest.fixture(scope="module")
def stats_home(tmp_path_factory) -> Path:
    """One HF_HOME per module, so each generator's style statistics are computed once."""
    return tmp_path_factory.mktemp("hf")


@pytest.fixture
def home(stats_home, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(stats_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return stats_home


# -------------------------------------------------------------------------------- package data, layout


def test_templates_are_the_published_file():
    data = styleclip.TEMPLATES_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == "9cf11dc6bfc24c775bd4a500a616fde36d9f19a7c61234bdd111606bd649a0ef"
    templates = styleclip.prompt_templates()
    assert len(templates) == 79 and all("{}" in t for t in templates)
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."


def test_stylespace_layout_1024_and_64(g64):
    g = Generator(1024)
    layers = g.style_layers()
    ref = golden("direction_1024.npz")["dims"]
    assert [layer.channels for layer in layers] == list(ref)  # StyleCLIP's layout: 15x512, 3x256, ..., 2x32
    assert [i for i, layer in enumerate(layers) if layer.torgb] == list(range(1, 26, 3))
    assert sum(layer.channels for layer in layers if not layer.torgb) == 6048  # the rows of StyleCLIP's fs3
    assert [layer.row for layer in layers][:8] == [0, 1, 1, 2, 3, 3, 4, 5] and layers[-1].row == 17
    assert layers[-1].name == "to_rgbs.7" and layers[2].conv is g.convs[0].conv
    assert len(g64.style_layers()) == 14


# -------------------------------------------------------------------------------- (a) S-space synthesis


def test_stylespace_edit_equals_hyperstyle_generator(g64):
    ref = golden("g64_stylespace.npz")
    wplus = torch.from_numpy(ref["wplus"])
    dims = ref["dims"]
    with torch.no_grad():
        styles = g64.styles(wplus)
        assert (torch.cat(styles, 1) - torch.from_numpy(ref["styles"])).abs().max() < 1e-5
        ds = split(ref["ds"], dims)
        assert (g64.synthesis(wplus) - torch.from_numpy(ref["img_orig"])).abs().max() < 1e-4
        for k, alpha in enumerate(ref["alphas"].tolist()):
            img = g64.synthesis(wplus, style_offsets=[alpha * d[None] for d in ds])
            diff = (img - torch.from_numpy(ref["img_edit"][k:k + 1])).abs().max()
            assert diff < 1e-4, (alpha, float(diff))
        # a batch of two (CPU split: shared-weight small levels, then per sample), per-sample offsets [2,C]
        alphas = ref["alphas"].tolist()
        per_sample = [torch.stack([a * d for a in alphas]) for d in ds]
        batch = g64.synthesis(wplus.expand(2, -1, -1), style_offsets=per_sample)
        assert (batch - torch.from_numpy(ref["img_edit"])).abs().max() < 1e-4
        # the hooked per-sample loop (SAMM's path) and autograd (grouped convolution) give the same
        hooked = g64.synthesis(wplus.expand(2, -1, -1), style_offsets=per_sample, feature_hook=lambda r, y: y)
        assert (hooked - torch.from_numpy(ref["img_edit"])).abs().max() < 1e-4
    with torch.enable_grad():
        grouped = g64.synthesis(wplus.expand(2, -1, -1), style_offsets=per_sample).detach()
    assert (grouped - torch.from_numpy(ref["img_edit"])).abs().max() < 1e-4
    # the edit is real: far from the unedited image
    assert (torch.from_numpy(ref["img_edit"]) - torch.from_numpy(ref["img_orig"])).abs().mean() > 0.1


def test_style_offsets_are_checked(g64):
    w = torch.zeros(1, 10, 512)
    with pytest.raises(ValueError, match="expected 14 style offsets"):
        g64.synthesis(w, style_offsets=[None] * 13)
    with pytest.raises(ValueError, match="convs.0 has shape"):
        g64.synthesis(w, style_offsets=[None, None, torch.zeros(1, 7)] + [None] * 11)


# -------------------------------------------------------------------------------- (b) the direction


def test_direction_equals_stylecliip_formula():
    """Original StyleCLIP (all 17 non-toRGB layers, times s_std; toRGB zero), not hyperstyle's first 11 only."""
    ref = golden("direction_1024.npz")
    g = Generator(1024)
    std = split(ref["s_std"], ref["dims"])
    stats = styleclip.StyleStats([torch.zeros_like(s) for s in std], std)
    for k, beta in enumerate(ref["betas"].tolist()):
        d = styleclip.global_direction(torch.from_numpy(ref["fs3"]), torch.from_numpy(ref["dt"]), beta)
        assert d.n_channels == ref["num_channels"][k]
        assert float(d.channels.abs().max()) == 1.0
        offsets = styleclip.style_offsets(g, [(d, 1.0)], stats)
        assert [o is None for o in offsets] == [layer.torgb for layer in g.style_layers()]
        flat = torch.cat([torch.zeros(layer.channels) if o is None else o[0]
                          for o, layer in zip(offsets, g.style_layers(), strict=True)])
        assert (flat - torch.from_numpy(ref["direction"][k])).abs().max() < 1e-6
        assert flat[-(16 + 32 + 32):].abs().max() > 0  # the finest layers are filled (hyperstyle leaves them 0)
        two = styleclip.style_offsets(g, [(d, 2.0), (d, -0.5)], stats)  # several text edits add up
        assert all(o is None or (o - 1.5 * p).abs().max() < 1e-6 for o, p in zip(two, offsets, strict=True))
    with pytest.raises(UsageError, match="--beta 0.99: no style channel") as err:
        styleclip.global_direction(torch.from_numpy(ref["fs3"]), torch.from_numpy(ref["dt"]), 0.99)
    one_line(err)
    with pytest.raises(InputError, match="same CLIP model"):
        styleclip.global_direction(torch.from_numpy(ref["fs3"]), torch.ones(4) / 2, 0.1)
    wrong = styleclip.GlobalDirection(torch.ones(100), 0.1, 100)
    with pytest.raises(InputError, match="fs3 has 100 rows, but this 1024 px generator has 6048") as err:
        styleclip.style_offsets(g, [(wrong, 1.0)], stats)
    one_line(err)


def test_fs3_loading(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((6, 4), np.float16))
    fs3 = styleclip.load_fs3(tmp_path / "ok.npy")
    assert fs3.dtype == torch.float32 and fs3.shape == (6, 4)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "vec.npy", np.ones(6, np.float32))
    np.save(tmp_path / "nan.npy", np.full((2, 2), np.nan, np.float32))
    for name, match in [("obj.npy", "not a plain"), ("vec.npy", "expected a float"), ("nan.npy", "NaN")]:
        with pytest.raises(InputError, match=match) as err:
            styleclip.load_fs3(tmp_path / name)
        assert name in one_line(err)


# -------------------------------------------------------------------------------- style statistics


def test_style_statistics_equal_sampled_styles(g64):
    """The closed form (moments of w through the affines) equals the std of explicitly computed styles."""
    n, psi = 3000, 0.7
    stats = styleclip.style_statistics(g64, n_samples=n, psi=psi, seed=3)
    z = torch.randn(n, 512, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w = g64.mapping(z)
        styles = g64.styles(w.mean(0) + psi * (w - w.mean(0)))
    for s, mean, std in zip(styles, stats.mean, stats.std, strict=True):
        assert (s.mean(0) - mean).abs().max() < 1e-5
        assert ((s.std(0, unbiased=False) - std).abs() / std).max() < 1e-4
    assert all(float(s.min()) > 0 for s in stats.std)


def test_style_statistics_are_cached_on_disk(tmp_path, g64, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    first = styleclip.cached_style_statistics(g64, n_samples=1000)
    files = list((tmp_path / "facefix" / "styleclip").glob("s_stats-*.safetensors"))
    assert len(files) == 1
    monkeypatch.setattr(styleclip, "style_statistics", lambda *a, **k: pytest.fail("recomputed"))
    again = styleclip.cached_style_statistics(g64, n_samples=1000)
    assert all(torch.equal(a, b) for a, b in zip(first.std + first.mean, again.std + again.mean, strict=True))
    monkeypatch.undo()
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    other = styleclip.cached_style_statistics(g64, n_samples=500)  # other settings: another file
    assert len(list(files[0].parent.glob("*.safetensors"))) == 2 and not torch.equal(other.std[0], first.std[0])
    files[0].write_bytes(b"garbage")  # unreadable: recomputed and rewritten
    fixed = styleclip.cached_style_statistics(g64, n_samples=1000)
    assert torch.equal(fixed.std[3], first.std[3]) and files[0].stat().st_size > 1000


# -------------------------------------------------------------------------------- CLIP text tower


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte -> unicode map (printable bytes as themselves, the rest shifted past 255)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b], n = chr(256 + n), n + 1
    return [out[b] for b in range(256)]


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny CLIP text model (2 layers, width 32, embeddings of size 16) with a byte-level
    vocabulary and no merges, saved as transformers saves it (config.json, model.safetensors) plus the tokenizer
    files facefix reads (vocab.json, merges.txt)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    cfg = CLIPTextConfig(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=TINY_CLIP_DIM,
                         bos_token_id=512, eos_token_id=513, pad_token_id=513)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModelWithProjection(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def test_clip_text_embeddings_and_delta(tiny_clip):
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    clip = styleclip.load_clip_text(tiny_clip)
    assert clip.dim == TINY_CLIP_DIM
    texts = ["a face", "a photo of a face with curly hair."]
    emb = clip.embed(texts)
    assert emb.shape == (2, TINY_CLIP_DIM) and torch.allclose(emb.norm(dim=1), torch.ones(2))
    # facefix's weights-only loading equals transformers' own loading of the folder, text by text (no padding)
    ref_model = CLIPTextModelWithProjection.from_pretrained(tiny_clip).eval()
    ref_tok = CLIPTokenizer.from_pretrained(tiny_clip)
    with torch.no_grad():
        for text, got in zip(texts, emb, strict=True):
            ref = ref_model(**ref_tok([text], return_tensors="pt")).text_embeds[0]
            assert (got - ref / ref.norm()).abs().max() < 1e-5
    templates = ["a photo of a {}.", "a drawing of the {}.", "{}"]
    p = clip.prompt_embedding("face", templates)
    manual = clip.embed([t.format("face") for t in templates]).mean(0)
    assert (p - manual / manual.norm()).abs().max() < 1e-6
    dt = clip.text_delta("face with curly hair", "face", templates)
    manual = clip.prompt_embedding("face with curly hair", templates) - p
    assert (dt - manual / manual.norm()).abs().max() < 1e-6
    with pytest.raises(UsageError, match="same point") as err:
        clip.text_delta("a face", "a face", templates)
    one_line(err)


def test_clip_weights_as_bin_and_bad_folders(tiny_clip, tmp_path):
    from safetensors.torch import load_file

    binned = tmp_path / "bin"
    shutil.copytree(tiny_clip, binned)
    state = load_file(str(binned / "model.safetensors"))
    (binned / "model.safetensors").unlink()
    torch.save({**state, "vision_model.x": torch.ones(2)}, binned / "pytorch_model.bin")  # a full CLIP's extra keys
    a, b = styleclip.load_clip_text(tiny_clip), styleclip.load_clip_text(binned)
    assert torch.equal(a.embed(["a face"]), b.embed(["a face"]))
    torch.save({k: v for k, v in state.items() if "layers.1." not in k}, binned / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="not this CLIP text model's weights") as err:
        styleclip.load_clip_text(binned)
    one_line(err)
    (binned / "merges.txt").unlink()
    with pytest.raises(InputError, match="merges.txt is missing"):
        styleclip.load_clip_text(binned)
    with pytest.raises(InputError, match="not a folder"):
        styleclip.load_clip_text(tmp_path / "nowhere")


def test_full_clip_checkpoint_layout(tiny_clip, tmp_path):
    """OpenAI's files: a full CLIP config (model_type clip, legacy eos_token_id 2: pooling at the highest token id,
    which is CLIP's end token) and a CLIPModel state dict with the vision tower, as a pickle."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, pad_token_id=1,
                          eos_token_id=2)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=TINY_CLIP_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        full = CLIPModel(config).eval()
    folder = tmp_path / "openai-like"
    folder.mkdir()
    raw = config.to_dict() | {"text_config_dict": None, "vision_config_dict": None}  # keys of the 2021 file
    (folder / "config.json").write_text(json.dumps(raw))
    torch.save(full.state_dict(), folder / "pytorch_model.bin")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_clip / name, folder / name)
    clip = styleclip.load_clip_text(folder)
    assert clip.dim == TINY_CLIP_DIM
    ids = clip.tokenizer(["a face with curly hair"], return_tensors="pt")["input_ids"]
    assert int(ids[0, -1]) == 513 == int(ids.max())
    with torch.no_grad():
        ref = full.text_projection(full.text_model(input_ids=ids).pooler_output)[0]
    assert (clip.embed(["a face with curly hair"])[0] - ref / ref.norm()).abs().max() < 1e-5


def test_missing_clip_extra_is_one_line(monkeypatch, tiny_clip):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if `pip install 'facefix[clip]'` had not been run
    with pytest.raises(UsageError, match=r"pip install 'facefix\[clip\]'") as err:
        styleclip.load_clip_text(tiny_clip)
    one_line(err)
    from facefix.edits import build_edits

    with pytest.raises(UsageError, match=r"pip install 'facefix\[clip\]'"):
        build_edits(text="a face with curly hair", clip=tiny_clip)


# -------------------------------------------------------------------------------- the CLI end to end


@pytest.fixture
def crop(tmp_path) -> Path:
    """The aligned test photo, copied into its own input folder."""
    (tmp_path / "in").mkdir()
    return Path(shutil.copy(ALIGNED, tmp_path / "in" / "face.png"))


@pytest.fixture(scope="module")
def fs3_small(tmp_path_factory) -> Path:
    """A synthetic fs3 for the 64 px test generator (e4e64): 9 non-toRGB layers x 512 channels, unit rows of the tiny
    CLIP's size."""
    rng = np.random.RandomState(7)
    fs3 = rng.randn(9 * 512, TINY_CLIP_DIM).astype(np.float32)
    path = tmp_path_factory.mktemp("fs3") / "fs3.npy"
    np.save(path, fs3 / np.linalg.norm(fs3, axis=1, keepdims=True))
    return path


def test_cli_text_edit_end_to_end(tmp_path, crop, e4e64_file, tiny_clip, fs3_small, home):
    from facefix.edits import apply_edits, build_edits
    from facefix.image_io import load_image, to_uint8
    from facefix.pipeline import FacefixPipeline

    text = ("--text", "a face with curly hair", "--clip", tiny_clip, "--fs3", fs3_small, "--beta", "0.2")
    r = run("edit", crop, "--aligned", "--encoder", e4e64_file, *text, "--alpha", "4", "--mask", "none",
            "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    out = np.asarray(Image.open(tmp_path / "out" / "face.png"))

    pipe = FacefixPipeline.from_pretrained(encoder=e4e64_file, device="cpu")
    x, x256 = pipe.prepare(load_image(ALIGNED).rgb)
    inv = pipe.encode(x256)
    (variant,) = build_edits(text="a face with curly hair", alpha=4, beta=0.2, clip=tiny_clip, fs3=fs3_small,
                             n_latent=pipe.generator.n_latent)
    assert variant.label == "text+4"
    (edit,) = variant.edits
    assert torch.equal(apply_edits(inv.w_plus, variant.edits), inv.w_plus)  # W+ untouched: the styles move
    assert edit.neutral == "a face" and 0 < edit.direction.n_channels < 9 * 512
    expected = pipe.render(x, inv, w_plus=apply_edits(inv.w_plus, variant.edits), mask="none",
                           style_edits=variant.edits)
    assert np.array_equal(out, to_uint8(expected.image[0]))
    plain = to_uint8(pipe.render(x, inv, mask="none").image[0])
    assert np.abs(out.astype(int) - plain.astype(int)).mean() > 2  # the text edit changed the face
    report = json.loads((tmp_path / "out" / "facefix-report.json").read_text())
    assert report["options"]["edits"] == ["text+4"]


def test_cli_text_sweep_over_alpha(tmp_path, crop, e4e64_file, tiny_clip, fs3_small, home):
    r = run("edit", crop, "--aligned", "--encoder", e4e64_file, "--text", "a face with curly hair", "--clip",
            tiny_clip, "--fs3", fs3_small, "--beta", "0.2", "--alpha", "-3:3:3", "--mask", "none", "-o",
            tmp_path / "sw", "-q")
    assert r.exit_code == 0, r.output
    frames = [np.asarray(Image.open(tmp_path / "sw" / f"face_text{v}.png")) for v in ("-3", "+0", "+3")]
    assert len({f.tobytes() for f in frames}) == 3
    r = run("invert", crop, "--aligned", "--encoder", e4e64_file, "--mask", "none", "-o", tmp_path / "inv", "-q")
    assert r.exit_code == 0, r.output
    assert np.array_equal(frames[1], np.asarray(Image.open(tmp_path / "inv" / "face.png")))  # alpha 0 = no edit
    assert np.asarray(Image.open(tmp_path / "sw" / "face.sweep.png")).shape == (256, 3 * 256, 3)
    assert Image.open(tmp_path / "sw" / "face.sweep.gif").n_frames == 4


@pytest.mark.parametrize("args,msg", [
    (["--alpha", "2"], "--alpha needs --text"),
    (["--text", "  "], "empty prompt"),
    (["--text", "curly hair", "--beta", "1.5"], "--beta 1.5"),
    (["--text", "curly hair", "--beta", "0.99"], "no style channel"),
    (["--text", "curly hair", "--alpha", "1:2"], "--alpha"),
    (["--text", "curly hair", "--fs3", "WRONG"], "fs3 has 300 rows"),
])
def test_cli_text_usage_errors(tmp_path, crop, e4e64_file, tiny_clip, fs3_small, home, args, msg):
    np.save(tmp_path / "wrong.npy", np.ones((300, TINY_CLIP_DIM), np.float32) / 4)
    args = [str(tmp_path / "wrong.npy") if a == "WRONG" else a for a in args]
    extra = [] if "--fs3" in args else ["--fs3", fs3_small]
    r = run("edit", crop, "--aligned", "--encoder", e4e64_file, "--clip", tiny_clip, *extra, *args, "-o", tmp_path)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("facefix:")]
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in r.output


def test_cli_text_without_clip_extra(tmp_path, crop, e4e64_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    r = run("edit", crop, "--aligned", "--encoder", e4e64_file, "--text", "a face with curly hair", "-o", tmp_path)
    assert r.exit_code == 2 and "pip install 'facefix[clip]'" in r.output and "Traceback" not in r.output


def test_directions_list_describes_text_directions():
    from facefix.edits import list_directions

    (row,) = [r for r in list_directions() if r.kind == "styleclip-text"]
    assert row.usage.startswith('--text "PROMPT"') and "--alpha" in row.usage and "--beta" in row.usage
    assert "std" in row.value and "threshold" in row.value and row.default == "3" and row.available
    r = run("directions", "list")
    assert r.exit_code == 0 and any(ln.startswith("styleclip-text") for ln in r.output.splitlines())
