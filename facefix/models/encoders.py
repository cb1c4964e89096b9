"""e4e and ReStyle-e4e encoders (IR-SE-50 backbone) whose state dicts are the official ``encoder.*`` keys.

``Encoder4Editing`` matches ``e4e_ffhq_encode.pt`` and ``ReStyleEncoder`` (ProgressiveBackboneEncoder, 6-channel
input) matches ``restyle_e4e_ffhq_encode.pt`` once the ``encoder.`` prefix is removed
(``facefix.checkpoints.e4e_key_filter``). Both run in inference mode: every one of the 17 W+ deltas is applied and
BatchNorm uses its running statistics (call ``.eval()``).

Encoders return W+ *offsets* (``codes``); the caller adds the checkpoint's ``latent_avg`` (e4e) or the previous
iteration's W+ (ReStyle), because that is how the reference code composes them.

Dimension letters: N batch, L W+ rows (18 at 1024), D 512.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facefix.models.stylegan2 import EqualLinear

# IR-SE-50: (in_channel, depth, units) per stage; the first unit of each stage has stride 2.
IR_SE_50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
FEATURE_TAPS = ("input_layer", "body2", "body6", "body20", "body23")
"""SAMM taps (the e4e layers the official SAMM code reads):
[N,64,256,256], [N,64,128,128], [N,128,64,64], [N,256,32,32], [N,512,16,16]."""


class EncoderOutput(NamedTuple):
    """codes: W+ offsets [N,L,D] (no latent_avg); features: the FEATURE_TAPS maps, or None if not requested."""

    codes: Tensor
    features: dict[str, Tensor] | None


class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(avgpool(x))))), 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    """IR-SE residual unit: shortcut (max-pool or 1x1 conv + BN) + (BN, conv3x3, PReLU, conv3x3/stride, BN, SE)."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SEModule(depth, 16))

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut_layer(x) + self.res_layer(x)


def ir_se_50_body() -> nn.Sequential:
    """The 24 IR-SE units: 256 px input -> [N,512,16,16]."""
    units = []
    for in_channel, depth, n in IR_SE_50_STAGES:
        units.append(BottleneckIRSE(in_channel, depth, 2))
        units.extend(BottleneckIRSE(depth, depth, 1) for _ in range(n - 1))
    return nn.Sequential(*units)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 conv3x3 + LeakyReLU(0.01) down to 1x1, then EqualLinear: [N,C,s,s] -> [N,C]."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c
        layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(int(math.log2(spatial)) - 1):
            layers += [nn.Conv2d(out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).view(-1, self.out_c))


def _input_layer(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))


def _backbone(enc: nn.Module, x: Tensor, taps: dict[str, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
    """input_layer + body; returns (c1 = body[6], c2 = body[20], c3 = body[23]) and fills ``taps``."""
    x = enc.input_layer(x)
    if taps is not None:
        taps["input_layer"] = x
    saved = {}
    for i, unit in enumerate(enc.body):
        x = unit(x)
        if i in (2, 6, 20, 23):
            saved[i] = x
            if taps is not None:
                taps[f"body{i}"] = x
    return saved[6], saved[20], saved[23]


class Encoder4Editing(nn.Module):
    """e4e encoder (IR-SE-50 + FPN + 18 GradualStyleBlocks); keys = ``e4e_ffhq_encode.pt`` ``encoder.*``.

    Args:
        n_styles: W+ rows L (18 for a 1024 generator, 2*log2(size)-2 in general).
        fpn_upsample: FPN up-sampling in ``_upsample_add``: ``bilinear`` (encoder4editing) or ``bicubic`` (the
            e4e copy vendored by the official SAMM code; W+ rows 3-17 differ).
    """

    coarse_ind, middle_ind = 3, 7

    def __init__(self, n_styles: int = 18, fpn_upsample: str = "bilinear"):
        super().__init__()
        if fpn_upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"fpn_upsample must be bilinear or bicubic, got {fpn_upsample!r}")
        self.n_styles, self.fpn_upsample = n_styles, fpn_upsample
        self.input_layer = _input_layer(3)
        self.body = ir_se_50_body()
        self.styles = nn.ModuleList(
            GradualStyleBlock(512, 512, 16 if i < self.coarse_ind else 32 if i < self.middle_ind else 64)
            for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def _upsample_add(self, x: Tensor, y: Tensor) -> Tensor:
        return F.interpolate(x, size=y.shape[2:], mode=self.fpn_upsample, align_corners=True) + y

    def encode(self, x: Tensor, return_features: bool = False) -> EncoderOutput:
        """x: [N,3,256,256] in [-1,1] -> codes [N,L,D] (W+ offsets, add ``latent_avg``) and optional taps."""
        taps: dict[str, Tensor] | None = {} if return_features else None
        c1, c2, c3 = _backbone(self, x, taps)
        w0 = self.styles[0](c3)
        codes = w0.unsqueeze(1).repeat(1, self.n_styles, 1)
        features = c3
        p2 = c3
        for i in range(1, self.n_styles):
            if i == self.coarse_ind:
                p2 = self._upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == self.middle_ind:
                features = self._upsample_add(p2, self.latlayer2(c1))
            codes[:, i] += self.styles[i](features)
        return EncoderOutput(codes, taps)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N,3,256,256] in [-1,1] -> codes [N,L,D]."""
        return self.encode(x).codes


class ReStyleEncoder(nn.Module):
    """ReStyle-e4e ``ProgressiveBackboneEncoder``: 6-channel input (image, current reconstruction), IR-SE-50, and
    18 GradualStyleBlocks that all read the 16x16 map. Keys = ``restyle_e4e_ffhq_encode.pt`` ``encoder.*``."""

    def __init__(self, n_styles: int = 18):
        super().__init__()
        self.n_styles = n_styles
        self.input_layer = _input_layer(6)
        self.body = ir_se_50_body()
        self.styles = nn.ModuleList(GradualStyleBlock(512, 512, 16) for _ in range(n_styles))

    def encode(self, x: Tensor, return_features: bool = False) -> EncoderOutput:
        """x: [N,6,256,256] = cat(image, reconstruction), in [-1,1] -> W+ residual codes [N,L,D] and taps."""
        taps: dict[str, Tensor] | None = {} if return_features else None
        _, _, c3 = _backbone(self, x, taps)
        w0 = self.styles[0](c3)
        codes = w0.unsqueeze(1).repeat(1, self.n_styles, 1)
        for i in range(1, self.n_styles):
            codes[:, i] += self.styles[i](c3)
        return EncoderOutput(codes, taps)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x).codes


class SmallEncoder(nn.Module):
    """A cheap W+ encoder with :class:`Encoder4Editing`'s interface, for small generators (the synthetic
    out-of-domain benchmark, training tests). Not a published architecture; its keys are facefix's own.

    x [N,3,256,256] -> 4x average pool to 64 px -> five stages at 64, 32, 16, 8, 4 px of widths w, 2w, 4w, 8w, 8w
    (two 3x3 convs, each followed by BatchNorm and LeakyReLU(0.2); the first one strided from the second stage on)
    -> flatten -> MLP -> codes [N,L,512]. Call ``.eval()`` for inference (BatchNorm running statistics).
    The taps SAMM reads at 64 and 32 px (``body6`` [N,128,64,64], ``body20`` [N,256,32,32], the e4e names and
    channels, so SAMM's ``feats_conv`` is unchanged) are 1x1 projections of the 64 and 32 px stages. There are no
    128/256 px taps, so SAMM runs with it on generators of at most 64 px.

    Args:
        n_styles: W+ rows L (``2 * log2(size) - 2``).
        width: w, the first stage's channels (the loader reads it back from ``stages.0.0.weight``).
    """

    STAGE_RES = (64, 32, 16, 8, 4)
    TAPS = {64: "body6", 32: "body20"}

    def __init__(self, n_styles: int = 10, width: int = 32):
        super().__init__()
        self.n_styles, self.width = n_styles, width
        widths = (width, 2 * width, 4 * width, 8 * width, 8 * width)
        self.stages = nn.ModuleList()
        in_c = 3
        for i, c in enumerate(widths):
            self.stages.append(nn.Sequential(
                nn.Conv2d(in_c, c, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2),
                nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2)))
            in_c = c
        self.taps = nn.ModuleDict({name: nn.Conv2d(widths[self.STAGE_RES.index(r)], c, 1)
                                   for r, name, c in ((64, "body6", 128), (32, "body20", 256))})
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 16, 512), nn.LeakyReLU(0.2),
                                  nn.Linear(512, n_styles * 512))

    def encode(self, x: Tensor, return_features: bool = False) -> EncoderOutput:
        """x: [N,3,256,256] in [-1,1] -> codes [N,L,512] (W+ offsets, add ``latent_avg``) and optional taps
        (``body6``, ``body20``)."""
        h = F.avg_pool2d(x, 4)
        taps: dict[str, Tensor] | None = {} if return_features else None
        for res, stage in zip(self.STAGE_RES, self.stages, strict=True):
            h = stage(h)
            if taps is not None and res in self.TAPS:
                taps[self.TAPS[res]] = self.taps[self.TAPS[res]](h)
        return EncoderOutput(self.head(h).view(-1, self.n_styles, 512), taps)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N,3,256,256] in [-1,1] -> codes [N,L,512]."""
        return self.encode(x).codes


def face_pool(img: Tensor) -> Tensor:
    """[N,3,S,S] -> [N,3,256,256] by exact block means (``AdaptiveAvgPool2d(256)``, ReStyle's ``face_pool``)."""
    return F.adaptive_avg_pool2d(img, (256, 256))


def restyle_invert(encoder: ReStyleEncoder, synthesize: Callable[[Tensor], Tensor], x: Tensor, latent_avg: Tensor,
                   avg_image: Tensor, n_iters: int = 5, return_features: bool = False) -> EncoderOutput:
    """ReStyle's iterative inversion (restyle-encoder ``run_on_batch``).

    Iteration 0 feeds cat(x, avg_image) and adds ``latent_avg``; iteration i > 0 feeds cat(x, face_pool(G(w)))
    and adds the codes to the previous W+.

    Args:
        encoder: a ReStyleEncoder in eval mode.
        synthesize: W+ [N,L,D] -> image [N,3,S,S] (the plain generator, fixed noise).
        x: [N,3,256,256] in [-1,1].
        latent_avg: [L,D].
        avg_image: [1,3,256,256] or [3,256,256], face_pool(G(latent_avg)).
        n_iters: refinement steps (5 by default, as the paper).
    Returns:
        EncoderOutput with the final absolute W+ [N,L,D] as ``codes`` and the taps of the last encoder call.
    """
    n = x.shape[0]
    feedback = avg_image.reshape(1, 3, 256, 256).expand(n, -1, -1, -1)
    w = latent_avg[None].expand(n, -1, -1)
    out = None
    for it in range(n_iters):
        if it > 0:
            feedback = face_pool(synthesize(w))
        out = encoder.encode(torch.cat([x, feedback], dim=1), return_features=return_features)
        w = out.codes + w
    assert out is not None, "n_iters must be >= 1"
    return EncoderOutput(w, out.features)
