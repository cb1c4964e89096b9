"""LPIPS (v0.1 "lin", AlexNet and VGG16 trunks) without the real weights: random files in the official layouts.

The layouts are written out here independently of ``facefix.losses``: torchvision's ``alexnet().features`` /
``vgg16().features`` keys and the ``lpips`` package's ``weights/v0.1/{alex,vgg}.pth`` (``lin{l}.model.1.weight``
[1,C,1,1], as read from lpips 0.1.4). A plain-ops re-computation of the formula is the numeric reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facefix.errors import UsageError, WeightsError
from facefix.losses import LPIPS, load_lpips
from facefix.train import TrainConfig, build_lpips, load_config

# the trunk up to the last LPIPS tap: ("conv", features index, out, in, kernel, stride, padding), ("pool", k, s),
# "tap" = the ReLU output compared (every conv is followed by a ReLU)
ALEX = [("conv", 0, 64, 3, 11, 4, 2), "tap", ("pool", 3, 2), ("conv", 3, 192, 64, 5, 1, 2), "tap", ("pool", 3, 2),
        ("conv", 6, 384, 192, 3, 1, 1), "tap", ("conv", 8, 256, 384, 3, 1, 1), "tap",
        ("conv", 10, 256, 256, 3, 1, 1), "tap"]


def _vgg16() -> list:
    ops: list = []
    i, c_in = 0, 3
    for block, (width, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        if block:
            ops.append(("pool", 2, 2))
            i += 1
        for _ in range(convs):
            ops.append(("conv", i, width, c_in, 3, 1, 1))
            i, c_in = i + 2, width
        ops.append("tap")
    return ops


TRUNKS = {"alex": ALEX, "vgg": _vgg16()}
LIN_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)


def official_states(net: str, seed: int = 0) -> tuple[dict, dict]:
    """(torchvision trunk state, lpips lin state), deterministic random values (He-scaled convs; lin >= 0 as in
    the published files). The trunk file carries a classifier key, as the real one does."""
    g = torch.Generator().manual_seed(seed)
    trunk = {}
    for op in TRUNKS[net]:
        if op[0] == "conv":
            _, i, c_out, c_in, k, _, _ = op
            trunk[f"features.{i}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5
            trunk[f"features.{i}.bias"] = 0.1 * torch.randn(c_out, generator=g)
    trunk["classifier.1.weight"] = torch.zeros(4, 4)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) / c for k, c in enumerate(LIN_CHANNELS[net])}
    return trunk, lins


def write_files(folder: Path, net: str, seed: int = 0) -> tuple[Path, Path]:
    trunk, lins = official_states(net, seed)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(trunk, folder / f"{net}_trunk.pth")
    torch.save(lins, folder / f"{net}.pth")
    return folder / f"{net}_trunk.pth", folder / f"{net}.pth"


def reference(net: str, trunk: dict, lins: dict, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The LPIPS formula with plain ops, float64: scale, trunk, unit-normalise over C, weight, spatial mean, sum."""

    def taps(img: torch.Tensor) -> list[torch.Tensor]:
        h, out = (img.double() - SHIFT.double()) / SCALE.double(), []
        for op in TRUNKS[net]:
            if op == "tap":
                out.append(h)
            elif op[0] == "pool":
                h = F.max_pool2d(h, op[1], op[2])
            else:
                _, i, _, _, _, stride, pad = op
                h = F.relu(F.conv2d(h, trunk[f"features.{i}.weight"].double(), trunk[f"features.{i}.bias"].double(),
                                    stride, pad))
        return out

    total = torch.zeros(y.shape[0], dtype=torch.float64)
    for k, (fy, fx) in enumerate(zip(taps(y), taps(x), strict=True)):
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lins[f"lin{k}.model.1.weight"].double().reshape(1, -1, 1, 1)
        total += ((ny - nx).pow(2) * w).sum(1).mean(dim=(1, 2))
    return total


def images(n: int, size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    y = (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return y, x


@pytest.mark.parametrize(("net", "size"), [("alex", 64), ("vgg", 32)])
def test_official_layouts_load_and_match_the_formula(tmp_path, net, size):
    trunk_file, lin_file = write_files(tmp_path, net)
    model = load_lpips(trunk_file, lin_file)
    assert model.net == net and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    y, x = images(2, size)
    with torch.no_grad():
        d = model(y, x)
    assert d.shape == (2,) and d.dtype == torch.float32
    trunk, lins = official_states(net)
    torch.testing.assert_close(d.double(), reference(net, trunk, lins, y, x), rtol=1e-4, atol=1e-7)


def test_distance_is_zero_for_identical_images_symmetric_and_batch_consistent(tmp_path):
    model = load_lpips(*write_files(tmp_path, "alex"))
    y, x = images(3, 64)
    with torch.no_grad():
        d = model(y, x)
        assert torch.equal(model(x, x), torch.zeros(3))
        assert (d > 0).all()
        torch.testing.assert_close(model(x, y), d, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(model(y[1:2], x[1:2]), d[1:2], rtol=1e-5, atol=1e-8)
        # more change, larger distance (same noise direction, twice the amplitude)
        assert (model((x + 2 * (y - x)).clamp(-1, 1), x) > d).all()


def test_strict_loading_one_line_errors(tmp_path):
    trunk, lins = official_states("alex")

    def save(obj: object, name: str) -> Path:
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    good_trunk, good_lin = save(trunk, "trunk.pth"), save(lins, "lin.pth")
    cases = [
        (good_trunk, save({k: v for k, v in lins.items() if not k.startswith("lin3")}, "l3.pth"),
         r"l3\.pth: not a LPIPS v0\.1 lin \(alex\.pth\) state dict \(missing lin3\.model\.1\.weight\)"),
        (save({k.replace("features.10.", "features.11."): v for k, v in trunk.items()}, "renamed.pth"), good_lin,
         r"missing features\.10\.weight, features\.10\.bias; unexpected features\.11\.weight"),
        # a VGG16 trunk with the AlexNet lin file
        (save(official_states("vgg")[0], "vgg_trunk.pth"), good_lin,
         r"not a torchvision AlexNet \(alexnet-owt-7be5be79\.pth, the trunk of alex\.pth\) state dict \(missing "),
        (save({**trunk, "features.0.weight": trunk["features.0.weight"][:, :, :5, :5]}, "k5.pth"), good_lin,
         r"features\.0\.weight has shape \[64, 3, 5, 5\], a torchvision AlexNet .* needs \[64, 3, 11, 11\]"),
        (good_trunk, save({**lins, "lin5.model.1.weight": torch.zeros(1, 8, 1, 1)}, "squeeze.pth"),
         r"unexpected lin5\.model\.1\.weight"),
        (save([1, 2], "list.pth"), good_lin, r"expected a torchvision state dict, found list"),
    ]
    for trunk_file, lin_file, pattern in cases:
        with pytest.raises(WeightsError, match=pattern) as err:
            load_lpips(trunk_file, lin_file)
        assert "\n" not in str(err.value)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good_trunk.read_bytes()[:4000])
    with pytest.raises(WeightsError) as err:
        load_lpips(truncated, good_lin)
    assert "\n" not in str(err.value) and "truncated.pth" in str(err.value)


def test_training_config_loads_lpips_or_says_once_it_is_not_reported(tmp_path):
    lines: list[str] = []
    assert build_lpips(TrainConfig(), torch.device("cpu"), lines.append) is None
    assert len(lines) == 1 and "without LPIPS" in lines[0] and "lpips_lin_path" in lines[0]

    trunk_file, lin_file = write_files(tmp_path, "alex")
    (tmp_path / "train.toml").write_text(f'lpips_backbone_path = "{trunk_file.name}"\nlpips_lin_path = "alex.pth"\n')
    cfg = load_config(tmp_path / "train.toml")  # paths relative to the config file
    assert cfg.lpips_backbone_path == str(trunk_file) and cfg.lpips_lin_path == str(lin_file)
    lines.clear()
    assert isinstance(build_lpips(cfg, torch.device("cpu"), lines.append), LPIPS) and lines == []
    with pytest.raises(UsageError, match="lpips_lin_path must be set together with lpips_backbone_path"):
        load_config(None, {"lpips_lin_path": str(lin_file)})


def test_validation_reports_lpips(tmp_path):
    """SAMMTrainer.validate itself on a stand-in trainer: building the real one (a 150M-parameter e4e, SAMM) and
    running it costs ~20 s on 2 cores, and the networks are irrelevant to the metric bookkeeping checked here.
    The stand-in's "output" for image x[i] is y[i], passed through the encoder-input slot."""
    from types import SimpleNamespace

    from facefix.train import DistInfo, SAMMTrainer

    y, x = images(3, 64)
    records: list[dict] = []
    lines: list[str] = []
    trainer = SimpleNamespace(
        dist=DistInfo(), step=2, config=TrainConfig(batch_size=2), generator=SimpleNamespace(size=64),
        val_set=_Items([(x[i], y[i]) for i in range(3)]), device=torch.device("cpu"), run_dir=tmp_path,
        criterion=SimpleNamespace(identity=None), lpips=load_lpips(*write_files(tmp_path / "w", "alex")),
        log=lines.append, _record=records.append,
        _encode=lambda y_batch: (y_batch, {}), _noise=lambda n, stream, start: None,
        _ema_forward=lambda gen, feats, y_batch, xb, noise, levels: (y_batch, y_batch, torch.zeros_like(xb[:, :1]),
                                                                     {}))
    means = SAMMTrainer.validate(trainer)  # type: ignore[arg-type]
    assert set(means) == {"psnr", "ssim", "lpips"}
    with torch.no_grad():
        expected = trainer.lpips(y, x).mean().item()  # mean of the per-image distances over both batches
    assert means["lpips"] == pytest.approx(expected, rel=1e-5)
    assert records == [{"step": 2, "val": means}]
    assert lines[-1].startswith("val step 2:") and f"lpips {expected:.4f}" in lines[-1]
    assert (tmp_path / "val" / "step2.png").exists()


class _Items:
    """A validation set stand-in: item (i, flip) -> (image [3,S,S], encoder input)."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, bool]) -> tuple:
        return self.items[key[0]]
