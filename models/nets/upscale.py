"""`upscale`: x2/x4 super-resolution, a PixelShuffle branch (ESPCN-like) added to bicubic upsampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_model


@dataclass
class UpscaleConfig:
    """Super-resolution settings: a 5x5 head, `depth` 3x3 convs (the last one feeds PixelShuffle)."""
    scale: int = 2
    channels: int = 3
    features: int = 32
    depth: int = 4

    def __post_init__(self):
        if self.scale not in (2, 4):
            raise ValueError(f"upscale: scale must be 2 or 4, got {self.scale}")
        if self.channels not in (1, 3):
            raise ValueError(f"upscale: channels must be 1 or 3, got {self.channels}")
        if self.depth < 1 or self.features < 1:
            raise ValueError(f"upscale: need depth >= 1 and features >= 1, got {self.depth}, {self.features}")


@register_model
class Upscaler(nn.Module):
    """output = bicubic(x, scale) + PixelShuffle(branch(x)); fully convolutional, any HxW -> (scale*H, scale*W)."""

    kind = "upscale"
    Config = UpscaleConfig
    SIZES = {
        "tiny": dict(features=16, depth=2),   # tests and smoke runs
        "small": dict(features=32, depth=4),  # the default: trains on 2 CPU cores in minutes
        "base": dict(features=64, depth=8),   # wants a GPU
    }

    def __init__(self, cfg: UpscaleConfig):
        super().__init__()
        self.cfg = cfg
        c, f, s = cfg.channels, cfg.features, cfg.scale
        layers: list[nn.Module] = [nn.Conv2d(c, f, 5, padding=2), nn.ReLU(inplace=True)]
        for _ in range(cfg.depth - 1):
            layers += [nn.Conv2d(f, f, 3, padding=1), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(f, c * s * s, 3, padding=1), nn.PixelShuffle(s)]
        self.branch = nn.Sequential(*layers)
        # Start as plain bicubic: the residual branch begins at zero, so early training never does worse.
        nn.init.zeros_(layers[-2].weight)
        nn.init.zeros_(layers[-2].bias)

    @property
    def halo(self) -> int:
        """Receptive-field radius in input pixels of the s x s output block of an input pixel.

        2 for the 5x5 head, 1 per 3x3 conv; the bicubic taps (2) are within it.
        """
        return 2 + self.cfg.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """High-resolution image (N,C,sH,sW) from a float image in [0,1] (not clamped)."""
        base = F.interpolate(x, scale_factor=self.cfg.scale, mode="bicubic", align_corners=False)
        return base + self.branch(x)
