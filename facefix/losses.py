"""Training losses and validation metrics for SAMM (the official SAMM training and test code).

- :class:`VGG19Features` / :class:`PerceptualLoss`: torchvision's ImageNet VGG19, features *before* ReLU at conv1_2,
  conv2_2, conv3_4, conv4_4, conv5_4 (layer weights 0.1, 0.1, 1, 1, 1); L1 on the features (perceptual) and on
  their Gram matrices ``F F^T / (C H W)`` (style), as BasicSR's ``PerceptualLoss`` computes them.
- :class:`IRSE50` / :class:`IdentityLoss`: the ArcFace IR-SE50 ``Backbone(112, 50, 'ir_se')`` of pSp/e4e
  (``model_ir_se50.pth``), ``1 - cos`` between the embeddings of the face crop of output and target.
- :func:`mask_losses`: the SAMM mask terms (binary and area) over the active levels and the composed mask.
- :func:`psnr`, :func:`ssim` (and its per-pixel :func:`ssim_map`): validation metrics on images in [-1,1].
- :class:`LPIPS`: the learned perceptual distance of Zhang et al. 2018 (``lpips`` package, v0.1 "lin"), a
  validation metric.

The networks need weights that facefix does not download (torchvision's ``vgg19-dcbb9e9d.pth``, pSp's
``model_ir_se50.pth``, torchvision's AlexNet or VGG16 plus the ``lpips`` package's ``weights/v0.1/*.pth``);
:func:`load_vgg19`, :func:`load_ir_se50` and :func:`load_lpips` read them from paths, strictly.

Dimension letters: N batch, C channels, H W size, S image size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facefix.errors import WeightsError
from facefix.models.encoders import ir_se_50_body
from facefix.weights import safe_torch_load

# torchvision ``vgg19().features`` up to conv5_4 (configuration "E"): numbers are conv widths, "M" max-pools.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
VGG_LAYERS = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}
"""Layer name -> index in ``features`` (the conv itself, so the output is taken before its ReLU)."""
VGG_LAYER_WEIGHTS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ConvSpec = tuple[int, int, int, int] | tuple[str, int, int]
"""One torchvision ``features`` entry: (out channels, kernel, stride, padding) for a conv + ReLU, ("M", k, s) for a
max-pool."""


def _vgg_specs(cfg: tuple[int | str, ...]) -> tuple[ConvSpec, ...]:
    """torchvision's VGG config (widths, "M") as :data:`ConvSpec` entries: 3x3 convs with padding 1, 2x2 pools."""
    return tuple(("M", 2, 2) if c == "M" else (int(c), 3, 1, 1) for c in cfg)


def _torchvision_features(specs: tuple[ConvSpec, ...], inplace: bool) -> tuple[list[nn.Module], dict[int, int]]:
    """The layers of a torchvision ``features`` Sequential (so the ImageNet files' ``features.N.*`` keys fit) and,
    per ReLU index, its channels."""
    layers: list[nn.Module] = []
    relu_channels: dict[int, int] = {}
    in_ch = 3
    for spec in specs:
        if spec[0] == "M":
            layers.append(nn.MaxPool2d(int(spec[1]), int(spec[2])))
        else:
            c, k, st, p = (int(v) for v in spec)
            layers += [nn.Conv2d(in_ch, c, k, st, p), nn.ReLU(inplace=inplace)]
            relu_channels[len(layers) - 1] = in_ch = c
    return layers, relu_channels


def _check_keys(module: nn.Module, state: Mapping[str, Tensor], where: str, what: str) -> None:
    """Strict load with a one-line WeightsError naming the first missing/unexpected/mis-shaped keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise WeightsError(f"{where}: not a {what} state dict ({'; '.join(parts)})")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsError(f"{where}: {k} has shape {list(state[k].shape)}, a {what} needs {list(v.shape)}")
    module.load_state_dict(state, strict=True)


class VGG19Features(nn.Module):
    """torchvision VGG19 ``features[:35]`` (key names ``features.N.*`` as in ``vgg19-dcbb9e9d.pth``).

    forward: x [N,3,H,W] in [-1,1] -> {layer name: pre-ReLU feature [N,C,h,w]} for :data:`VGG_LAYERS`.
    Inputs are mapped to [0,1] and ImageNet-normalised first (BasicSR ``range_norm`` + ``use_input_norm``).
    """

    def __init__(self):
        super().__init__()
        # not inplace: the captured conv output must stay the pre-ReLU value
        layers, _ = _torchvision_features(_vgg_specs(_VGG19_CFG), inplace=False)
        self.features = nn.Sequential(*layers[:max(VGG_LAYERS.values()) + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        wanted = {i: name for name, i in VGG_LAYERS.items()}
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


def load_vgg19(path: str | Path) -> VGG19Features:
    """torchvision's ``vgg19-dcbb9e9d.pth`` (or any state dict with its ``features.*`` keys; ``classifier.*`` and
    layers past conv5_4 are ignored) -> :class:`VGG19Features` in eval mode, no grad."""
    state = safe_torch_load(path)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a VGG19 state dict, found {type(state).__name__}")
    last = max(VGG_LAYERS.values())
    kept = {k: v for k, v in state.items()
            if k.startswith("features.") and k.split(".")[1].isdigit() and int(k.split(".")[1]) <= last}
    model = VGG19Features()
    _check_keys(model, kept, str(path), "torchvision VGG19")
    return model.eval().requires_grad_(False)


def gram(feat: Tensor) -> Tensor:
    """[N,C,H,W] -> Gram matrix [N,C,C] / (C H W), in float32 (a float16 sum over H*W overflows at 1024 px)."""
    n, c, h, w = feat.shape
    f = feat.float().reshape(n, c, h * w)
    with torch.autocast(feat.device.type, enabled=False):
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


class PerceptualLoss(nn.Module):
    """BasicSR ``PerceptualLoss`` (L1 criterion): perceptual = sum_l w_l L1(phi_l(y), phi_l(x)) and
    style = sum_l w_l L1(gram(phi_l(y)), gram(phi_l(x))); the target's features are computed without grad.

    forward(y, x): y, x [N,3,H,W] in [-1,1] -> (perceptual, style), unweighted scalars.
    """

    def __init__(self, vgg: VGG19Features, layer_weights: Mapping[str, float] = VGG_LAYER_WEIGHTS):
        super().__init__()
        self.vgg = vgg
        self.layer_weights = dict(layer_weights)

    def forward(self, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        fy = self.vgg(y)
        with torch.no_grad():
            fx = self.vgg(x.detach())
        percep = sum(w * F.l1_loss(fy[k], fx[k]) for k, w in self.layer_weights.items())
        style = sum(w * F.l1_loss(gram(fy[k]), gram(fx[k])) for k, w in self.layer_weights.items())
        return percep, style  # type: ignore[return-value]


class IRSE50(nn.Module):
    """ArcFace IR-SE50 (TreB1eN/pSp ``Backbone(112, 50, 'ir_se')``; keys of ``model_ir_se50.pth``).

    forward: x [N,3,112,112] in [-1,1] -> l2-normalised embedding [N,512].
    """

    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = ir_se_50_body()
        # BN, Dropout(0.4), Flatten, Linear, BN1d: indices match the file's output_layer.{0,3,4}.* keys
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def load_ir_se50(path: str | Path) -> IRSE50:
    """pSp/e4e's ``model_ir_se50.pth`` (a plain ``Backbone`` state dict) -> :class:`IRSE50`, eval mode, no grad."""
    state = safe_torch_load(path)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected an IR-SE50 state dict, found {type(state).__name__}")
    model = IRSE50()
    _check_keys(model, state, str(path), "IR-SE50 (model_ir_se50.pth)")
    return model.eval().requires_grad_(False)


def face_crop(x: Tensor) -> Tensor:
    """The ID loss's face region of an FFHQ-aligned [N,3,S,S] batch, pooled to [N,3,112,112].

    Rows 35ss:-33ss, cols 32ss:-36ss with ss = S/256 (pSp's 35:223, 32:220 at 256; the official SAMM code's
    140:-132, 128:-144 at 1024), then AdaptiveAvgPool2d(112).
    """
    s = x.shape[-1]
    ss = s / 256
    crop = x[:, :, round(35 * ss):s - round(33 * ss), round(32 * ss):s - round(36 * ss)]
    return F.adaptive_avg_pool2d(crop, (112, 112))


class IdentityLoss(nn.Module):
    """mean(1 - cos(phi(y), phi(x))) over the batch, phi = IR-SE50 on :func:`face_crop`; x without grad.

    forward(y, x): y, x [N,3,S,S] in [-1,1] -> scalar. :meth:`similarity` gives cos per image [N] (metric).
    """

    def __init__(self, net: IRSE50):
        super().__init__()
        self.net = net

    def similarity(self, y: Tensor, x: Tensor) -> Tensor:
        ey = self.net(face_crop(y))
        with torch.no_grad():
            ex = self.net(face_crop(x.detach()))
        return (ey * ex).sum(dim=1)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        return (1 - self.similarity(y, x)).mean()


# LPIPS trunks as torchvision builds ``alexnet().features`` / ``vgg16().features``; only the layers up to the
# last tap are built.
_LPIPS_TRUNKS: dict[str, tuple[ConvSpec, ...]] = {
    "alex": ((64, 11, 4, 2), ("M", 3, 2), (192, 5, 1, 2), ("M", 3, 2), (384, 3, 1, 1), (256, 3, 1, 1),
             (256, 3, 1, 1)),
    "vgg": _vgg_specs((64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)),
}
LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
"""Trunk -> indices in ``features`` of the 5 ReLUs LPIPS compares (the ``lpips`` package's slice ends: AlexNet
relu1..relu5, VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)."""
LPIPS_FILES = {"alex": ("AlexNet", "alexnet-owt-7be5be79.pth", "alex.pth"),
               "vgg": ("VGG16", "vgg16-397923af.pth", "vgg.pth")}
"""Trunk -> (name, torchvision ImageNet file, ``lpips`` package file under ``lpips/weights/v0.1/``)."""
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class _LinLayer(nn.Module):
    """The ``lpips`` package's ``NetLinLayer``: a bias-free 1x1 conv C -> 1 (weights >= 0 in the published files).

    Index 0 stands for its training-time Dropout (an identity in eval) so the key reads ``model.1.weight``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _unit_channels(f: Tensor, eps: float = 1e-10) -> Tensor:
    """[N,C,h,w] divided by its L2 norm over C at every position (the package's ``normalize_tensor``, same eps)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018; ``lpips.LPIPS(net=..., version='0.1')`` with ``lpips=True``, not spatial).

    d(y, x) = sum_l mean_hw( w_l . (u(phi_l(y)) - u(phi_l(x)))^2 ), phi_l the 5 ReLU taps of the ImageNet trunk on
    the input shifted/scaled by the package's ScalingLayer, u the per-position unit norm over channels, w_l >= 0
    the 1x1 ``lin{l}`` weights. Two trunks, picked by the lin file:

    - ``"alex"`` (default): torchvision AlexNet. The variant the ``lpips`` authors recommend as a metric and the
      one the official SAMM test script computes (that script also feeds a [-0.5,1.5] range and
      BGR, a quirk not reproduced here). Cheap at 1024 px (stride-4 first conv).
    - ``"vgg"``: torchvision VGG16 (the package's ``net='vgg'``), ~20x the FLOPs.

    forward(y, x): y, x [N,3,H,W] in [-1,1] (RGB; H, W >= 32 for AlexNet, >= 16 for VGG16) -> distances [N],
    float, 0 for identical images and >= 0 with the published (non-negative) lin weights.
    Keys: ``features.N.*`` (the torchvision file's) and ``lins.lin{l}.model.1.weight`` [1,C_l,1,1] (the lpips file's
    ``lin{l}.model.1.weight``).
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in _LPIPS_TRUNKS:
            raise ValueError(f"LPIPS trunk {net!r}: expected one of {', '.join(_LPIPS_TRUNKS)}")
        self.net = net
        self.taps = LPIPS_TAPS[net]
        # in-place is safe: every tap is a ReLU output and the layer after it (conv or pool) makes a new one
        layers, relu_channels = _torchvision_features(_LPIPS_TRUNKS[net], inplace=True)
        self.features = nn.Sequential(*layers[:self.taps[-1] + 1])
        self.lins = nn.ModuleDict({f"lin{k}": _LinLayer(relu_channels[i]) for k, i in enumerate(self.taps)})
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).reshape(1, 3, 1, 1), persistent=False)

    def tap_features(self, x: Tensor) -> list[Tensor]:
        """x [N,3,H,W] in [-1,1] -> the 5 ReLU outputs [N,C_l,h_l,w_l] of the scaled input."""
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        n = y.shape[0]
        feats = self.tap_features(torch.cat([y, x]))  # one trunk pass for both
        dist = y.new_zeros(n)
        for lin, f in zip(self.lins.values(), feats, strict=True):
            diff = (_unit_channels(f[:n]) - _unit_channels(f[n:])).pow(2)
            dist = dist + lin(diff).mean(dim=(1, 2, 3))
        return dist


def load_lpips(backbone_path: str | Path, lin_path: str | Path) -> LPIPS:
    """The ``lpips`` package's v0.1 lin file (``lpips/weights/v0.1/alex.pth`` or ``vgg.pth``: ``lin0..lin4``
    ``.model.1.weight``) and the matching torchvision ImageNet file (``alexnet-owt-7be5be79.pth`` or
    ``vgg16-397923af.pth``; ``classifier.*`` ignored) -> :class:`LPIPS` in eval mode, no grad.

    The trunk is the lin file's (its lin1 has 192 channels for AlexNet, 128 for VGG16); both files are checked
    strictly, a wrong or mismatched file is a one-line WeightsError.
    """
    lins = safe_torch_load(lin_path)
    if not isinstance(lins, Mapping):
        raise WeightsError(f"{lin_path}: expected an LPIPS lin state dict, found {type(lins).__name__}")
    lin1 = lins.get("lin1.model.1.weight")
    net = "vgg" if isinstance(lin1, Tensor) and lin1.ndim == 4 and lin1.shape[1] == 128 else "alex"
    name, torchvision_file, lpips_file = LPIPS_FILES[net]
    model = LPIPS(net)
    _check_keys(model.lins, lins, str(lin_path), f"LPIPS v0.1 lin ({lpips_file})")

    state = safe_torch_load(backbone_path)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{backbone_path}: expected a torchvision state dict, found {type(state).__name__}")
    last = model.taps[-1]
    kept = {k: v for k, v in state.items()
            if k.startswith("features.") and k.split(".")[1].isdigit() and int(k.split(".")[1]) <= last}
    # a ModuleDict sharing model.features gives the file's "features.N.*" names
    _check_keys(nn.ModuleDict({"features": model.features}), kept, str(backbone_path),
                f"torchvision {name} ({torchvision_file}, the trunk of {lpips_file})")
    return model.eval().requires_grad_(False)


def mask_losses(aligns: Mapping[int, Tensor], mask: Tensor, tau: Mapping[int, float]) -> tuple[Tensor, Tensor]:
    """SAMM's mask terms over the active levels and the composed mask (the official loss terms).

    binary = sum_r mean(min(alpha_r, 1 - alpha_r)) (pushes alphas to 0 or 1);
    area = sum_r relu(mean(alpha_r) - tau_r) (caps the out-of-domain fraction), means over the whole batch.

    Args:
        aligns: resolution -> [N,3,r,r] (dx, dy, alpha) of the levels that ran.
        mask: composed mask A [N,1,S,S]; uses ``tau[1024]`` whatever S is (the official code's final mask key).
        tau: resolution (32, 64, 128, 256, 1024) -> area threshold.
    Returns:
        (binary, area), unweighted scalars.
    """
    alphas = [(r, a[:, 2:3]) for r, a in sorted(aligns.items())] + [(1024, mask)]
    binary = sum(torch.minimum(a, 1 - a).mean() for _, a in alphas)
    area = sum(F.relu(a.mean() - tau[r]) for r, a in alphas)
    return binary, area  # type: ignore[return-value]


def to_unit_u8(x: Tensor) -> Tensor:
    """[-1,1] -> [0,1] quantised as the saved PNG is (round((x + 1) * 127.5) / 255), float32."""
    return ((x.detach().float() + 1) * 127.5).round().clamp(0, 255) / 255


def psnr(y: Tensor, x: Tensor) -> Tensor:
    """PSNR in dB per image [N] of y vs x ([N,3,H,W] in [-1,1], compared as the 8-bit images they save to)."""
    mse = (to_unit_u8(y) - to_unit_u8(x)).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    return (g / g.sum()).float()


def ssim(y: Tensor, x: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """SSIM per image [N] of y vs x ([N,3,H,W] in [-1,1], compared as 8-bit images), RGB channels averaged.

    Wang et al. 2004 as skimage (``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``) and BasicSR
    compute it: gaussian window 11, sigma 1.5, 'valid' filtering (no padding), C1 = 0.01^2, C2 = 0.03^2 on [0,1].
    """
    return ssim_map(y, x, window, sigma).mean(dim=(1, 2, 3)).float()


def ssim_map(y: Tensor, x: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """The local SSIM values :func:`ssim` averages: float64 [N,3,H-window+1,W-window+1] ('valid', so pixel (i, j)
    of the map is centred on input pixel (i + window // 2, j + window // 2)); for SSIM over an image region."""
    a, b = to_unit_u8(y).double(), to_unit_u8(x).double()
    c = a.shape[1]
    g = _gaussian_window(window, sigma).double().to(a.device)
    kh, kw = g.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), g.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:  # separable gaussian, per channel, valid
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.pow(2)
    var_b = blur(b * b) - mu_b.pow(2)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))

