"""`denoise`: a blind colour denoiser predicting the noise: a 3-scale residual U-Net, or a DnCNN-style stack."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.nets._blocks import ResBlock, check_stack_config
from models.registry import register_model

ARCHS = ("dncnn", "unet")


@dataclass
class DenoiseConfig:
    """Denoiser settings. dncnn: `depth` 3x3 convs of `features` channels (dilated up to `max_dilation`).

    unet: three scales of `features`, 2x and 4x channels, one residual block of two convs per scale and side.
    """
    channels: int = 3
    features: int = 48
    depth: int = 8
    # 1: plain DnCNN. >1: dilations ramp 1,2,..,max and back down (IRCNN, Zhang et al. 2017), which widens the
    # receptive field (what high noise levels need) at no extra cost. Default 1 so saved configs keep meaning.
    max_dilation: int = 1
    # "dncnn" by default so the configs saved before the U-Net existed keep building the model they trained
    arch: str = "dncnn"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"denoise: arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        check_stack_config("denoise", self.channels, self.depth, 2, self.features)
        if self.max_dilation < 1:
            raise ValueError(f"denoise: max_dilation must be >= 1, got {self.max_dilation}")
        if self.arch == "unet" and self.max_dilation != 1:
            raise ValueError("denoise: max_dilation applies to the dncnn arch only")


class UNet(nn.Module):
    """Noise of (N,C,H,W) at three scales (DRUNet-like, Zhang et al. 2021, without its noise-level map).

    Strided 2x2 convs go down, 1x1 convs + PixelShuffle go up, skips are added; the sides are padded to a
    multiple of 4 inside the graph (edge-replicated) and cropped back, so any HxW works.
    """

    STRIDE = 4

    def __init__(self, channels: int, features: int):
        super().__init__()
        f1, f2, f3 = features, 2 * features, 4 * features
        self.head = nn.Conv2d(channels, f1, 3, padding=1)
        self.enc1, self.enc2 = ResBlock(f1), ResBlock(f2)
        self.down1, self.down2 = nn.Conv2d(f1, f2, 2, stride=2), nn.Conv2d(f2, f3, 2, stride=2)
        self.mid = ResBlock(f3)
        self.up2 = nn.Sequential(nn.Conv2d(f3, 4 * f2, 1), nn.PixelShuffle(2))
        self.up1 = nn.Sequential(nn.Conv2d(f2, 4 * f1, 1), nn.PixelShuffle(2))
        self.dec2, self.dec1 = ResBlock(f2), ResBlock(f1)
        self.tail = nn.Conv2d(f1, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted noise, same shape as x."""
        h, w = x.shape[-2:]
        s = self.STRIDE
        xp = F.pad(x, (0, (s - w % s) % s, 0, (s - h % s) % s), mode="replicate")
        e1 = self.enc1(self.head(xp))
        e2 = self.enc2(self.down1(e1))
        m = self.mid(self.down2(e2))
        d2 = self.dec2(self.up2(m) + e2)
        d1 = self.dec1(self.up1(d2) + e1)
        return self.tail(d1)[..., :h, :w]


@register_model
class Denoiser(nn.Module):
    """Predicts the noise and subtracts it: output = x - body(x) (residual learning, no clamp), any HxW."""

    kind = "denoise"
    Config = DenoiseConfig
    SIZES = {
        "tiny": dict(features=16, depth=4),   # tests and smoke runs
        "small": dict(features=48, depth=8),  # trains on 2 CPU cores in minutes
        "base": dict(features=64, depth=17),  # the DnCNN paper's size; wants a GPU
        # the shipped denoiser: 0.56 M parameters, about the cost per pixel of "small" with dilations
        "unet": dict(arch="unet", features=32),
    }

    def __init__(self, cfg: DenoiseConfig):
        super().__init__()
        self.cfg = cfg
        c, f = cfg.channels, cfg.features
        if cfg.arch == "unet":
            self.unet = UNet(c, f)
            return
        d = self.dilations
        layers: list[nn.Module] = [nn.Conv2d(c, f, 3, padding=d[0], dilation=d[0]), nn.ReLU(inplace=True)]
        for k in d[1:-1]:
            # No BatchNorm: the small CPU batches make its statistics noisy; residual learning trains without it.
            layers += [nn.Conv2d(f, f, 3, padding=k, dilation=k), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(f, c, 3, padding=d[-1], dilation=d[-1]))
        self.net = nn.Sequential(*layers)

    @property
    def dilations(self) -> list[int]:
        """Each conv's dilation (dncnn): 1, 2, .., max_dilation, .., 2, 1 over `depth` layers."""
        n = self.cfg.depth
        return [min(i + 1, n - i, self.cfg.max_dilation) for i in range(n)]

    @property
    def halo(self) -> int:
        """Receptive-field radius in input pixels, for exact tiling.

        dncnn: a 3x3 conv of dilation k adds k. unet: 1 + 2 (head, enc1), +1 + 4 (down1, enc2), +2 + 8 (down2,
        mid), +2 + 4 (up2's 2x2 block, dec2), +1 + 2 + 1 (up1, dec1, tail) = 28, rounded up to a multiple of the
        4-pixel stride so every tile starts on the stride grid of the whole image.
        """
        if self.cfg.arch == "unet":
            return 28
        return sum(self.dilations)

    @property
    def float_convs(self) -> list[str]:
        """Conv modules the int8 graph keeps in float (models.quantize).

        dncnn: the output conv (its error lands on the image unfiltered). unet: every full-resolution conv: uint8
        rounding of the full-resolution residual stream passes straight to the output through the skips (all
        int8 lost 0.22 dB at sigma 15 on the training crops, fine-tuning through fake int8 won back 0.04; with
        these in float it loses 0.07), while the half- and quarter-resolution convs hold most of the work.
        """
        if self.cfg.arch == "unet":
            return ["unet.head", "unet.enc1.body.0", "unet.enc1.body.2", "unet.up1.0", "unet.dec1.body.0",
                    "unet.dec1.body.2", "unet.tail"]
        return [f"net.{len(self.net) - 1}"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised image (N,C,H,W) from a noisy float image in [0,1]."""
        return x - (self.unet(x) if self.cfg.arch == "unet" else self.net(x))
