"""`upscale`: x2/x4 super-resolution, a PixelShuffle branch added to bicubic upsampling (ESPCN- or RLFN-like)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.nets._blocks import ResBlock, check_stack_config
from models.registry import register_model

ARCHS = ("espcn", "resnet")


@dataclass
class UpscaleConfig:
    """Super-resolution settings. espcn: a 5x5 head, `depth` 3x3 convs (the last one feeds PixelShuffle).

    resnet: a 3x3 head, `depth` residual blocks of two 3x3 convs, a 3x3 conv, a skip from the head, a 3x3
    conv to PixelShuffle (EDSR/RLFN's layout at a CPU budget).
    """
    scale: int = 2
    channels: int = 3
    features: int = 32
    depth: int = 4
    # "espcn" by default so the configs saved before the residual design existed keep building their model
    arch: str = "espcn"

    def __post_init__(self):
        if self.scale not in (2, 4):
            raise ValueError(f"upscale: scale must be 2 or 4, got {self.scale}")
        if self.arch not in ARCHS:
            raise ValueError(f"upscale: arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        check_stack_config("upscale", self.channels, self.depth, 1, self.features)


@register_model
class Upscaler(nn.Module):
    """output = bicubic(x, scale) + PixelShuffle(branch(x)); fully convolutional, any HxW -> (scale*H, scale*W)."""

    kind = "upscale"
    Config = UpscaleConfig
    SIZES = {
        "tiny": dict(features=16, depth=2),   # tests and smoke runs
        "small": dict(features=32, depth=4),  # the default: trains on 2 CPU cores in minutes
        "base": dict(features=64, depth=8),   # wants a GPU
        "resnet": dict(arch="resnet", features=32, depth=4),  # the shipped upscalers
    }

    def __init__(self, cfg: UpscaleConfig):
        super().__init__()
        self.cfg = cfg
        c, f, s = cfg.channels, cfg.features, cfg.scale
        if cfg.arch == "resnet":
            self.branch = ResidualBranch(c, f, cfg.depth, s)
            last = self.branch.tail[0]
        else:
            layers: list[nn.Module] = [nn.Conv2d(c, f, 5, padding=2), nn.ReLU(inplace=True)]
            for _ in range(cfg.depth - 1):
                layers += [nn.Conv2d(f, f, 3, padding=1), nn.ReLU(inplace=True)]
            layers += [nn.Conv2d(f, c * s * s, 3, padding=1), nn.PixelShuffle(s)]
            self.branch = nn.Sequential(*layers)
            last = layers[-2]
        # Start as plain bicubic: the residual branch begins at zero, so early training never does worse.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        # Fixed weights, not a parameter and not saved: rebuilt from the config on load.
        self.register_buffer("bicubic_kernel", bicubic_phase_kernel(s).repeat(c, 1, 1, 1), persistent=False)

    @property
    def halo(self) -> int:
        """Receptive-field radius in input pixels of the s x s output block of an input pixel.

        espcn: 2 for the 5x5 head, 1 per 3x3 conv. resnet: 1 for the head, 2 per block, 1 + 1 for the two
        convs after them. The bicubic taps (2) are within it.
        """
        if self.cfg.arch == "resnet":
            return 3 + 2 * self.cfg.depth
        return 2 + self.cfg.depth


    @property
    def float_convs(self) -> list[str]:
        """Conv modules the int8 graph keeps in float (models.quantize): none; the bicubic base, a fixed filter
        and no module, stays float anyway."""
        return []

    def bicubic(self, x: torch.Tensor) -> torch.Tensor:
        """torch's bicubic upsampling (align_corners=False, edge-clamped) as edge pad + depthwise conv + PixelShuffle.

        Same values as F.interpolate(mode="bicubic") to float rounding; in onnxruntime the conv form runs
        about 15x faster than the Resize op, which was half the upscale graph's time (docs/benchmarks.md).
        """
        s = self.cfg.scale
        y = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), self.bicubic_kernel, groups=x.shape[1])
        return F.pixel_shuffle(y, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """High-resolution image (N,C,sH,sW) from a float image in [0,1] (not clamped)."""
        return self.bicubic(x) + self.branch(x)


class ResidualBranch(nn.Module):
    """head conv, `depth` residual blocks, a conv, + the head's features, then conv + PixelShuffle to scale x."""

    def __init__(self, channels: int, features: int, depth: int, scale: int):
        super().__init__()
        self.head = nn.Conv2d(channels, features, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(features) for _ in range(depth)],
                                  nn.Conv2d(features, features, 3, padding=1))
        self.tail = nn.Sequential(nn.Conv2d(features, channels * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The high-resolution residual over bicubic, (N,C,sH,sW)."""
        h = self.head(x)
        return self.tail(self.body(h) + h)


def _cubic(t: float, a: float = -0.75) -> float:
    """Keys' cubic convolution weight at distance t, with torch's a = -0.75."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def bicubic_phase_kernel(scale: int) -> torch.Tensor:
    """(scale², 1, 5, 5) weights: output phase (py, px) of bicubic upsampling as a 5x5 filter on the input.

    Output pixel s*i + p samples the input at i + (p + 0.5)/s - 0.5 (half-pixel centres); its four cubic
    taps all fall in i-2..i+2.
    """
    import math

    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for p in range(scale):
        src = (p + 0.5) / scale - 0.5  # relative to i
        x0 = math.floor(src)
        for k in range(x0 - 1, x0 + 3):
            taps[p, k + 2] += _cubic(src - k)
    k2 = torch.einsum("ay,bx->abyx", taps, taps).reshape(scale * scale, 1, 5, 5)
    return k2.float()
