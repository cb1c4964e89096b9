"""SAMM training: config, data stream, losses, a tiny run (loss falls, checkpoints reload, resume is exact) and
two gloo processes.

The runs use the small configuration (conftest ``small64_file``: a 64 px generator with 32 channels per level and
a ``SmallEncoder``), so SAMM's 32 and 64 px levels have 32 channels and a step costs tens of milliseconds: the tiny
run trains 30 steps. Only the CLI train -> edit test keeps the e4e file, because ``facefix edit`` runs e4e.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facefix.errors import InputError, UsageError, WeightsError
from facefix.train import (
    StepSampler,
    TrainConfig,
    active_levels,
    build_criterion,
    load_config,
    split_files,
    train_samm,
)
from tests.conftest import GOLDEN

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_samm.toml"
GRACE = GOLDEN / "align" / "grace_hopper_aligned1024.png"
# A cheap configuration that still runs the whole recipe path (the lr is raised so a few dozen steps show a change);
# the 64 px level joins after 10 steps, so the progressive schedule is exercised too.
TINY = {"lr": 1e-3, "batch_size": 1, "hflip": False, "num_workers": 0, "cycle_align": 1, "log_every": 1,
        "progressive_steps": [10, 1000, 1000]}


def write_faces(folder: Path, n: int, size: int = 64) -> Path:
    """n aligned-looking faces: the golden aligned crop and crops of skimage's astronaut, at ``size`` px."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    Image.open(GRACE).convert("RGB").resize((size, size), Image.LANCZOS).save(folder / "f0.png")
    astronaut = data.astronaut()
    for i in range(1, n):
        crop = astronaut[8 * i:256 + 8 * i, 120 + 8 * i:376 + 8 * i]
        Image.fromarray(crop).resize((size, size), Image.LANCZOS).save(folder / f"f{i}.png")
    return folder


def read_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- config -----------------------------------------------------------------------------------------------------


def test_example_config_is_the_default_recipe():
    cfg = load_config(EXAMPLE)
    assert cfg == TrainConfig()
    assert cfg.betas == (0.0, 0.99) and cfg.mask_area_tau[1024] == 0.2 and cfg.progressive_steps == (2000, 6000, 10000)


def test_config_errors_are_one_line_usage_errors(tmp_path):
    def bad(text: str, match: str) -> None:
        (tmp_path / "c.toml").write_text(text)
        with pytest.raises(UsageError, match=match) as info:
            load_config(tmp_path / "c.toml")
        assert "\n" not in str(info.value)

    bad("lrr = 1e-4\n", "unknown key 'lrr'")
    bad("[train]\nlr = 1e-4\n", "no \\[sections\\]")
    bad("batch_size = 2.5\n", "batch_size = 2.5: expected an integer")
    bad("hflip = 1\n", "expected true or false")
    bad("lr = -1.0\n", "lr must be > 0")
    bad("encoder_mode = 'restyle'\n", "encoder_mode must be one of official, e4e")
    bad("mask_area_tau = { 48 = 0.1 }\n", "unknown level '48'")
    bad("lr = \n", "not valid TOML")
    with pytest.raises(UsageError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(UsageError, match="option: max_steps must be >= 1"):
        load_config(None, {"max_steps": 0})


def test_config_values_paths_and_overrides(tmp_path):
    (tmp_path / "c.toml").write_text("lr = 1\nvgg19_path = 'w/vgg.pth'\nmask_area_tau = { 32 = 0.5 }\n")
    cfg = load_config(tmp_path / "c.toml", {"max_steps": 7, "seed": None})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.max_steps == 7 and cfg.seed == 0
    assert cfg.vgg19_path == str((tmp_path / "w" / "vgg.pth").resolve())  # relative to the config file
    assert cfg.mask_area_tau == {32: 0.5, 64: 0.3, 128: 0.2, 256: 0.2, 1024: 0.2}  # merged over the defaults


# -- data and schedule ----------------------------------------------------------------------------------------


def test_data_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        split_files(tmp_path / "empty", TrainConfig())
    with pytest.raises(InputError, match="not a folder"):
        split_files(tmp_path / "nope", TrainConfig())
    write_faces(tmp_path / "two", 2)
    with pytest.raises(InputError, match="2 image\\(s\\) but val_images = 4"):
        split_files(tmp_path / "two", TrainConfig())
    train, val = split_files(tmp_path / "two", TrainConfig(val_images=1))
    assert [p.name for p in train] == ["f1.png"] and [p.name for p in val] == ["f0.png"]


def test_step_sampler_resumes_mid_stream_and_shards_epochs():
    def take(sampler: StepSampler, n: int) -> list[tuple[int, bool]]:
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(StepSampler(5, 2, seed=3), 30)
    assert take(StepSampler(5, 2, seed=3, start_step=7), 16) == full[14:]  # step 7 starts at entry 14
    assert sorted(i for i, _ in full[:5]) == list(range(5))  # every epoch is a permutation
    assert any(f for _, f in full) and not all(f for _, f in full)
    r0, r1 = (take(StepSampler(6, 1, seed=0, rank=r, world_size=2), 3) for r in (0, 1))
    assert sorted(i for i, _ in r0 + r1) == list(range(6))  # the two ranks split each epoch


def test_progressive_levels_follow_the_official_schedule():
    assert active_levels(0, (2000, 6000, 10000), 1024) == (32,)
    assert active_levels(1999, (2000, 6000, 10000), 1024) == (32,)
    assert active_levels(2000, (2000, 6000, 10000), 1024) == (32, 64)  # iteration 2001 > 2000
    assert active_levels(10000, (2000, 6000, 10000), 1024) == (32, 64, 128, 256)
    assert active_levels(10000, (2000, 6000, 10000), 64) == (32, 64)  # only levels the generator has


# -- losses and metrics ---------------------------------------------------------------------------------------


def _torchvision_vgg19_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the layout of torchvision's vgg19-dcbb9e9d.pth (the classifier shrunk: ignored)."""
    g = torch.Generator().manual_seed(seed)
    widths = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
    state, i, c = {}, 0, 3
    for v in widths:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(v, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(v)
        i, c = i + 2, v
    state["classifier.6.weight"] = torch.zeros(10, 4)
    return state


def test_missing_loss_weights_give_one_notice_and_vgg_loads_and_contributes(tmp_path):
    lines: list[str] = []
    crit = build_criterion(TrainConfig(), torch.device("cpu"), lines.append)
    assert len(lines) == 1 and "perceptual + style" in lines[0] and "identity" in lines[0]
    assert crit.perceptual is None and crit.identity is None
    lines.clear()
    build_criterion(TrainConfig(perceptual_weight=0, style_weight=0, id_weight=0), torch.device("cpu"), lines.append)
    assert lines == []  # nothing is disabled that was asked for

    torch.save(_torchvision_vgg19_state(), tmp_path / "vgg19-dcbb9e9d.pth")
    crit = build_criterion(TrainConfig(vgg19_path=str(tmp_path / "vgg19-dcbb9e9d.pth")), torch.device("cpu"),
                           lines.append)
    assert len(lines) == 1 and "perceptual" not in lines[0] and "identity" in lines[0]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    aligns = {32: torch.rand(1, 3, 32, 32)}
    terms = crit(y, x, aligns, torch.rand(1, 1, 32, 32))
    assert {"pixel", "perceptual", "style", "mask_binary", "mask_area", "total"} == set(terms)
    assert terms["perceptual"] > 0 and terms["style"] > 0
    torch.autograd.grad(terms["perceptual"] + terms["style"], y)  # differentiable w.r.t. the output
    assert crit(x, x, aligns, torch.zeros(1, 1, 32, 32))["perceptual"] == 0

    bad = _torchvision_vgg19_state()
    del bad["features.34.weight"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="missing features.34.weight"):
        build_criterion(TrainConfig(vgg19_path=str(tmp_path / "bad.pth")), torch.device("cpu"), lines.append)


def test_ir_se50_has_the_model_ir_se50_layout():
    from facefix.losses import IRSE50, face_crop

    with torch.device("meta"):
        sd = IRSE50().state_dict()
    assert sd["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert sd["body.23.res_layer.5.fc2.weight"].shape == (512, 32, 1, 1)
    assert sd["output_layer.3.weight"].shape == (512, 512 * 7 * 7) and "output_layer.4.running_var" in sd
    assert face_crop(torch.zeros(2, 3, 1024, 1024)).shape == (2, 3, 112, 112)


def test_ssim_and_psnr_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from facefix.losses import psnr, ssim

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 40, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(2, 3, 40, 40, generator=g)).clamp(-1, 1)
    ours_ssim, ours_psnr = ssim(y, x), psnr(y, x)
    for i in range(2):
        a, b = (np.round((t[i].permute(1, 2, 0).numpy() + 1) * 127.5) / 255 for t in (y, x))
        ref = structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
        assert abs(float(ours_ssim[i]) - ref) < 1e-5
        assert abs(float(ours_psnr[i]) - peak_signal_noise_ratio(b, a, data_range=1.0)) < 1e-3


# -- training runs ----------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """The small configuration's ops are tiny: a second thread only adds synchronisation, and on a busy machine
    its stalls made this test 10-30x slower. The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_run_loss_falls_checkpoints_reload_and_resume_is_exact(tmp_path, small64_file, one_thread):
    """30 steps on one image (plus one held out) with the small configuration: the loss falls, the EMA file
    reloads bit-exactly, and resuming the step-15 state gives exactly the 30-step run's final state."""
    import json

    from facefix.checkpoints import load_encoder, load_samm

    data = write_faces(tmp_path / "faces", 2)
    opts = {**TINY, "max_steps": 30, "val_images": 1, "ckpt_every": 15, "keep_states": 3}
    cfg = load_config(None, {**opts, "val_every": 30})
    lines: list[str] = []
    final = train_samm(cfg, data, tmp_path / "run", encoder_path=small64_file, device="cpu", log=lines.append)
    run = tmp_path / "run"
    assert final == run / "samm_step30.pt"
    assert sum("losses disabled" in s for s in lines) == 1

    records = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"]["total"] for r in records if "loss" in r]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses  # same image each step
    assert any("levels 32,64" in s for s in lines) and any("levels 32 |" in s for s in lines)
    val = [r["val"] for r in records if "val" in r]
    assert len(val) == 1 and val[0]["psnr"] > 5 and 0 < val[0]["ssim"] <= 1
    assert Image.open(run / "val" / "step30.png").size == (4 * 64, 64)
    step_lines = [s for s in lines if s.startswith("step ")]
    assert len(step_lines) == 30 and "img/s" in step_lines[0] and "fwd" in step_lines[0] and "bwd" in step_lines[0]

    state = read_state(run / "state_step30.pt")
    assert state["step"] == 30 and state["world_size"] == 1
    samm = load_samm(final, load_encoder(small64_file).generator)  # facefix format: the CLI's --samm reads it
    assert samm.config["cycle_align"] == 1 and samm.config["channel_max"] == 32 and samm.encoder_mode == "official"
    assert_same_tensors(samm.state_dict(), state["ema"])
    assert_same_tensors(load_samm(run / "samm_latest.pt").state_dict(), state["ema"])
    assert not all(torch.equal(state["ema"][k], state["samm"][k]) for k in state["samm"])

    # resume: a new folder holding only the step-15 state continues at step 15 and ends where the run did
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    os.link(run / "state_step15.pt", resumed / "state_step15.pt")
    with pytest.raises(UsageError, match="already holds a training run"):
        train_samm(cfg, data, resumed, encoder_path=small64_file, device="cpu", log=lines.append)
    lines.clear()
    train_samm(load_config(None, {**opts, "val_every": 0}), data, resumed, encoder_path=small64_file, resume=True,
               device="cpu", log=lines.append)
    assert any("resuming from" in s and "at step 15" in s for s in lines)
    assert [s.split(" |")[0] for s in lines if s.startswith("step ")] == [f"step {i}/30" for i in range(16, 31)]
    state_b = read_state(resumed / "state_step30.pt")
    for key in ("samm", "ema"):
        assert_same_tensors(state_b[key], state[key])
    assert state_b["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()
    for k, st in state["optimizer"]["state"].items():
        assert_same_tensors(state_b["optimizer"]["state"][k], st)
    assert state_b["scheduler"] == state["scheduler"]

    with pytest.raises(UsageError, match="trained with cycle_align = 1"):
        train_samm(load_config(None, {**opts, "max_steps": 31, "cycle_align": 2}), data, resumed,
                   encoder_path=small64_file, resume=True, device="cpu", log=lines.append)


def _ddp_worker(rank: int, world: int, port: int, data: str, e4e: str, out: str) -> None:
    """One torchrun-like process: env as torchrun sets it, then the library's own set-up and one step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from facefix.train import SAMMTrainer, init_distributed, load_models

    info, device, created = init_distributed("cpu")
    assert created and info.world_size == world and dist.get_backend() == "gloo"
    cfg = load_config(None, {**TINY, "max_steps": 1, "val_images": 0})
    generator, encoder, latent_avg = load_models(e4e, None, cfg.encoder_mode)
    lines: list[str] = []
    trainer = SAMMTrainer(cfg, generator, encoder, latent_avg, split_files(data, cfg)[0], [], out, device, info,
                          lines.append)
    init = {k: v.clone() for k, v in trainer.samm.state_dict().items()}
    trainer.train()
    torch.save({"init": init, "samm": trainer.samm.state_dict(), "lines": lines}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_keep_identical_weights(tmp_path, small64_file):
    import torch.multiprocessing as mp

    data = write_faces(tmp_path / "faces", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(data), str(small64_file), str(tmp_path / "run")), nprocs=2)
    r0, r1 = (read_state(tmp_path / "run" / f"rank{r}.pt") for r in (0, 1))
    assert_same_tensors(r0["samm"], r1["samm"])
    assert not torch.equal(r0["samm"]["feats_conv.3.weight"], r0["init"]["feats_conv.3.weight"])  # it trained
    assert torch.equal(r0["samm"]["feats_conv.0.weight"], r0["init"]["feats_conv.0.weight"])  # 256 px: unused
    assert any(s.startswith("step 1/1") for s in r0["lines"]) and r1["lines"] == []  # rank 0 logs alone
    assert (tmp_path / "run" / "samm_step1.pt").exists() and (tmp_path / "run" / "state_step1.pt").exists()


def test_cli_train_then_edit_with_the_trained_samm(tmp_path, e4e64_file):
    """`facefix train samm` writes weights that `facefix edit --samm` loads directly."""
    from tests.test_cli import run

    data = write_faces(tmp_path / "faces", 2)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("lr = 1e-3\nbatch_size = 1\nhflip = false\nnum_workers = 0\ncycle_align = 1\nval_images = 1\n"
                   "val_every = 1\nckpt_every = 1\nprogressive_steps = [1000, 1000, 1000]\n")
    r = run("train", "samm", "--data", data, "--config", cfg, "--encoder", e4e64_file, "--max-steps", "1",
            "--device", "cpu", "-o", tmp_path / "run")
    assert r.exit_code == 0, r.output
    weights = tmp_path / "run" / "samm_latest.pt"
    assert weights.is_file() and "SAMM weights" in r.output
    r = run("edit", data / "f0.png", "--aligned", "--age", "2", "--samm", weights, "--encoder", e4e64_file,
            "--save", "mask", "-o", tmp_path / "out", "-q", "--json")
    assert r.exit_code == 0, r.output
    assert '"mask": "samm"' in r.output
    assert (tmp_path / "out" / "f0.png").is_file() and (tmp_path / "out" / "f0.mask.png").is_file()
    # a second start into the same run folder without --resume is refused in one line
    r = run("train", "samm", "--data", data, "--config", cfg, "--encoder", e4e64_file, "--max-steps", "1",
            "-o", tmp_path / "run")
    assert r.exit_code == 2 and "already holds a training run" in r.output


def test_loss_weights_come_from_the_manifest_when_on_disk(tmp_path, monkeypatch):
    torch.save(_torchvision_vgg19_state(), tmp_path / "vgg.pth")
    monkeypatch.setenv("FACEFIX_VGG19", str(tmp_path / "vgg.pth"))  # the manifest entry's override
    monkeypatch.delenv("FACEFIX_IR_SE50", raising=False)
    lines: list[str] = []
    crit = build_criterion(TrainConfig(), torch.device("cpu"), lines.append)
    assert crit.perceptual is not None and crit.identity is None
    assert len(lines) == 1 and "perceptual" not in lines[0] and "facefix weights download ir_se50" in lines[0]


def test_data_folder_finds_images_as_the_cli_does(tmp_path):
    """Training images are found by content, as `facefix invert FOLDER` finds its inputs."""
    from facefix.train import list_images

    img = Image.new("RGB", (8, 8))
    (tmp_path / "a").mkdir()
    img.save(tmp_path / "a" / "x.png")
    img.save(tmp_path / "noext", format="PNG")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    img.save(tmp_path / ".hidden" / "y.png")
    assert list_images(tmp_path) == [tmp_path / "a" / "x.png", tmp_path / "noext"]
